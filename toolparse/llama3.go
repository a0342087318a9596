package toolparse

import "strings"

// llama3 reads Llama 3.x JSON tool calls: the output is, after optional
// whitespace and an optional <|python_tag|>, one or more objects
// {"name": ..., "parameters": {...}} ("arguments" also accepted) separated
// by whitespace or ";". An output that does not start that way is all
// content. If the first object turns out not to be a call (no name), the
// whole output is content; a later non-call object and whatever follows a
// call that is not another object are content. After an object that broke
// off malformed, the rest is dropped.
//
// Parse is the stream fed the whole text at once; the stream's state
// machine is the one definition of the format.
type llama3 struct{ opts Options }

const pythonTag = "<|python_tag|>"

func (l *llama3) Parse(text string) (string, []ToolCall) {
	s := l.NewStream()
	d1 := s.Add(text)
	d2 := s.Finish()
	return Collect([]Delta{d1, d2})
}

func (l *llama3) NewStream() Stream { return &llama3Stream{cs: calls{newID: l.opts.NewID}} }

const (
	lStart   = iota // leading whitespace and tag: is this a call at all?
	lObj            // inside an object
	lSep            // between objects
	lContent        // plain content to the end
	lDrop           // discard to the end
)

type llama3Stream struct {
	st       int
	buf      string
	raw      strings.Builder // text since the last call, while the object has no name
	p        objParser
	named    bool
	sentArgs int
	co       contentOut
	cs       calls
}

func (s *llama3Stream) Add(text string) Delta {
	s.buf += text
	s.process(false)
	return s.take()
}

func (s *llama3Stream) Finish() Delta {
	s.process(true)
	switch s.st {
	case lStart:
		s.co.add(s.buf)
	case lObj:
		s.endObject()
	case lSep:
		if s.cs.n == 0 {
			s.co.add(s.raw.String())
		}
	}
	s.buf = ""
	s.co.finish()
	return s.take()
}

func (s *llama3Stream) take() Delta { return Delta{Content: s.co.take(), ToolCalls: s.cs.take()} }

func (s *llama3Stream) process(final bool) {
	for len(s.buf) > 0 {
		switch s.st {
		case lStart:
			rest := strings.TrimLeft(s.buf, " \t\r\n")
			switch {
			case strings.HasPrefix(rest, pythonTag):
				s.raw.WriteString(s.buf[:len(s.buf)-len(rest)+len(pythonTag)])
				s.buf = rest[len(pythonTag):]
				s.st = lSep
			case strings.HasPrefix(rest, "{"):
				s.raw.WriteString(s.buf[:len(s.buf)-len(rest)])
				s.buf = rest
				s.startObject()
			case !final && (rest == "" || strings.HasPrefix(pythonTag, rest)):
				return // undecided
			default:
				s.st = lContent
			}
		case lSep:
			i := 0
			for i < len(s.buf) && (isSpace(s.buf[i]) || s.buf[i] == ';') {
				i++
			}
			if s.cs.n == 0 {
				s.raw.WriteString(s.buf[:i])
			}
			s.buf = s.buf[i:]
			if s.buf == "" {
				return
			}
			if s.buf[0] != '{' {
				if s.cs.n == 0 {
					// A tag with no object after it: all content.
					s.co.add(s.raw.String())
					s.raw.Reset()
				}
				s.st = lContent
				continue
			}
			s.startObject()
		case lObj:
			n := s.p.feed(s.buf)
			if !s.named {
				s.raw.WriteString(s.buf[:n])
			}
			s.buf = s.buf[n:]
			s.progress()
			if s.p.Done() || s.p.Failed() {
				s.endObject()
			}
		case lContent:
			s.co.add(s.buf)
			s.buf = ""
		case lDrop:
			s.buf = ""
		}
	}
}

func (s *llama3Stream) startObject() {
	s.st = lObj
	s.p = objParser{}
	s.named, s.sentArgs = false, 0
}

func (s *llama3Stream) progress() {
	if s.p.HasName && !s.named {
		s.named = true
		s.raw.Reset()
		s.cs.start(s.p.Name)
	}
	if s.named && len(s.p.Args) > s.sentArgs {
		s.cs.args(string(s.p.Args[s.sentArgs:]))
		s.sentArgs = len(s.p.Args)
	}
}

func (s *llama3Stream) endObject() {
	if !s.named {
		// Not a call: it and everything held since the last call are content.
		s.co.add(s.raw.String())
		s.raw.Reset()
		s.st = lContent
		return
	}
	if s.sentArgs == 0 {
		s.cs.args("{}")
	}
	s.co.call()
	s.st = lSep
	if s.p.Failed() {
		s.st = lDrop
	}
}
