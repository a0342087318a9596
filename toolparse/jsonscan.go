package toolparse

import "encoding/json"

// valueScanner finds where a JSON value ends, one byte at a time, without
// validating it: it tracks strings, escapes and bracket depth.
type valueScanner struct {
	started, done bool
	lit           bool // a number or literal: ends at a delimiter
	depth         int
	inStr, esc    bool
}

// step feeds c and reports whether c belongs to the value; afterwards
// done tells whether the value is complete. Leading whitespace does not
// belong. A literal ends at the first delimiter, which does not belong.
func (v *valueScanner) step(c byte) bool {
	if !v.started {
		if isSpace(c) {
			return false
		}
		v.started = true
		switch c {
		case '{', '[':
			v.depth = 1
		case '"':
			v.inStr = true
		default:
			v.lit = true
		}
		return true
	}
	switch {
	case v.lit:
		if isSpace(c) || c == ',' || c == '}' || c == ']' || c == ';' {
			v.done = true
			return false
		}
	case v.inStr:
		switch {
		case v.esc:
			v.esc = false
		case c == '\\':
			v.esc = true
		case c == '"':
			v.inStr = false
			if v.depth == 0 {
				v.done = true
			}
		}
	case c == '"':
		v.inStr = true
	case c == '{' || c == '[':
		v.depth++
	case c == '}' || c == ']':
		v.depth--
		if v.depth == 0 {
			v.done = true
		}
	}
	return true
}

// objParser reads a call object {"name": "...", "arguments": {...}} one
// byte at a time, in any key order, with "parameters" accepted for
// "arguments" (Llama 3). It records the name once its string is complete
// and the raw text of the arguments value as it arrives; other members
// are skipped.
type objParser struct {
	st     int
	raw    []byte // the key or name string being read, quotes included
	key    string
	val    valueScanner
	target int // what the current value is: tName, tArgs or tSkip

	Name     string
	HasName  bool
	Args     []byte
	HasArgs  bool
	ArgsDone bool
}

const (
	oStart = iota
	oKeyOrEnd
	oKey
	oColon
	oValue
	oAfter
	oDone
	oFail
)

const (
	tSkip = iota
	tName
	tArgs
)

func (p *objParser) Done() bool   { return p.st == oDone }
func (p *objParser) Failed() bool { return p.st == oFail }

// feed consumes bytes of s until the object ends or fails and returns how
// many it consumed.
func (p *objParser) feed(s string) int {
	for i := 0; i < len(s); i++ {
		if p.st == oDone || p.st == oFail {
			return i
		}
		p.step(s[i])
	}
	return len(s)
}

func (p *objParser) step(c byte) {
	switch p.st {
	case oStart:
		if isSpace(c) {
			return
		}
		if c != '{' {
			p.st = oFail
			return
		}
		p.st = oKeyOrEnd
	case oKeyOrEnd, oAfter:
		if isSpace(c) {
			return
		}
		switch {
		case c == '}':
			p.st = oDone
		case c == ',' && p.st == oAfter:
			p.st = oKeyOrEnd
		case c == '"' && p.st == oKeyOrEnd:
			p.st = oKey
			p.raw = append(p.raw[:0], c)
			p.val = valueScanner{}
			p.val.step(c)
		default:
			p.st = oFail
		}
	case oKey:
		p.raw = append(p.raw, c)
		p.val.step(c)
		if p.val.done {
			p.key = ""
			_ = json.Unmarshal(p.raw, &p.key)
			p.st = oColon
		}
	case oColon:
		if isSpace(c) {
			return
		}
		if c != ':' {
			p.st = oFail
			return
		}
		p.st = oValue
		p.val = valueScanner{}
		p.target = tSkip
		switch {
		case p.key == "name" && !p.HasName:
			p.target = tName
			p.raw = p.raw[:0]
		case (p.key == "arguments" || p.key == "parameters") && !p.HasArgs:
			p.target = tArgs
			p.HasArgs = true
		}
	case oValue:
		belongs := p.val.step(c)
		if belongs {
			switch p.target {
			case tName:
				p.raw = append(p.raw, c)
			case tArgs:
				p.Args = append(p.Args, c)
			}
		}
		if !p.val.done {
			return
		}
		p.endValue()
		if !belongs {
			// The delimiter that ended a literal belongs to the object.
			p.step(c)
		}
	}
}

// endValue completes the current value (also at the end of input).
func (p *objParser) endValue() {
	switch p.target {
	case tName:
		var name string
		if json.Unmarshal(p.raw, &name) == nil && name != "" {
			p.Name, p.HasName = name, true
		}
	case tArgs:
		p.ArgsDone = true
	}
	p.target = tSkip
	p.st = oAfter
}
