package toolparse

import "strings"

// mistral reads Mistral tool calls: content up to the first [TOOL_CALLS]
// token, then calls in either form Mistral models use:
//
//	[TOOL_CALLS][{"name": "f", "arguments": {...}}, {...}]   (v0.3 tokenizers)
//	[TOOL_CALLS]f[ARGS]{...}[TOOL_CALLS]g[ARGS]{...}           (v11+ tokenizers)
//
// Everything after the first [TOOL_CALLS] belongs to the calls, as in vLLM;
// what is not a call there is dropped, never shown as content. A name
// longer than 256 bytes or holding a brace or line break means the region
// is not what we expect, and the rest is dropped.
//
// Parse is the stream fed the whole text at once.
type mistral struct{ opts Options }

const (
	mistralCalls = "[TOOL_CALLS]"
	mistralArgs  = "[ARGS]"
	maxNameLen   = 256
)

func (m *mistral) Parse(text string) (string, []ToolCall) {
	s := m.NewStream()
	d1 := s.Add(text)
	d2 := s.Finish()
	return Collect([]Delta{d1, d2})
}

func (m *mistral) NewStream() Stream { return &mistralStream{cs: calls{newID: m.opts.NewID}} }

const (
	mContent = iota // before the first [TOOL_CALLS]
	mSep            // between calls: whitespace, [ ] , and [TOOL_CALLS]
	mObj            // a {"name":..., "arguments":...} object
	mName           // a name before [ARGS]
	mArgs           // the value after [ARGS]
	mDrop
)

type mistralStream struct {
	st       int
	buf      string
	name     strings.Builder
	p        objParser
	v        valueScanner
	named    bool
	sentArgs int
	co       contentOut
	cs       calls
}

func (s *mistralStream) Add(text string) Delta {
	s.buf += text
	s.process(false)
	return s.take()
}

func (s *mistralStream) Finish() Delta {
	s.process(true)
	switch s.st {
	case mContent:
		s.co.add(s.buf)
	case mObj, mArgs:
		s.endCall()
	}
	s.buf = ""
	s.co.finish()
	return s.take()
}

func (s *mistralStream) take() Delta { return Delta{Content: s.co.take(), ToolCalls: s.cs.take()} }

func (s *mistralStream) process(final bool) {
	for len(s.buf) > 0 {
		switch s.st {
		case mContent:
			i := strings.Index(s.buf, mistralCalls)
			if i < 0 {
				k := len(s.buf)
				if !final {
					k -= heldPrefix(s.buf, mistralCalls)
				}
				s.co.add(s.buf[:k])
				s.buf = s.buf[k:]
				return
			}
			s.co.add(s.buf[:i])
			s.co.call()
			s.buf = s.buf[i+len(mistralCalls):]
			s.st = mSep
		case mSep:
			c := s.buf[0]
			switch {
			case isSpace(c) || c == ',' || c == ']':
				s.buf = s.buf[1:]
			case strings.HasPrefix(s.buf, mistralCalls):
				s.buf = s.buf[len(mistralCalls):]
			case c == '[' && !final && strings.HasPrefix(mistralCalls, s.buf):
				return // maybe a [TOOL_CALLS] still arriving
			case c == '[':
				s.buf = s.buf[1:]
			case c == '{':
				s.st, s.p, s.named, s.sentArgs = mObj, objParser{}, false, 0
			default:
				s.st = mName
				s.name.Reset()
			}
		case mObj:
			n := s.p.feed(s.buf)
			s.buf = s.buf[n:]
			if s.p.HasName && !s.named {
				s.named = true
				s.cs.start(s.p.Name)
			}
			s.sendArgs(s.p.Args)
			if s.p.Failed() {
				s.endCall()
				s.st = mDrop
			} else if s.p.Done() {
				s.endCall()
				s.st = mSep
			}
		case mName:
			i := strings.Index(s.buf, mistralArgs)
			k := i
			if i < 0 {
				k = len(s.buf)
				if !final {
					k -= heldPrefix(s.buf, mistralArgs)
				}
			}
			s.name.WriteString(s.buf[:k])
			s.buf = s.buf[k:]
			if s.name.Len() > maxNameLen || strings.ContainsAny(s.name.String(), "{}\n") {
				s.st = mDrop
				continue
			}
			if i < 0 {
				if final {
					s.st = mDrop // no [ARGS]: not a call
				}
				return
			}
			s.buf = s.buf[len(mistralArgs):]
			name := trimSpace(s.name.String())
			if name == "" {
				s.st = mDrop
				continue
			}
			s.cs.start(name)
			s.st, s.v, s.named, s.sentArgs = mArgs, valueScanner{}, true, 0
			s.p = objParser{}
		case mArgs:
			i := 0
			for i < len(s.buf) && !s.v.done {
				c := s.buf[i]
				if s.v.step(c) {
					s.p.Args = append(s.p.Args, c)
					i++
				} else if !s.v.done {
					i++ // whitespace before the value
				}
			}
			s.buf = s.buf[i:]
			s.sendArgs(s.p.Args)
			if s.v.done {
				s.endCall()
				s.st = mSep
			}
		case mDrop:
			s.buf = ""
		}
	}
}

func (s *mistralStream) sendArgs(args []byte) {
	if s.named && len(args) > s.sentArgs {
		s.cs.args(string(args[s.sentArgs:]))
		s.sentArgs = len(args)
	}
}

func (s *mistralStream) endCall() {
	if s.named && s.sentArgs == 0 {
		s.cs.args("{}")
	}
	s.named = false
}
