package toolparse

import "strings"

// hermes reads calls as Qwen2.5, Qwen3 and Hermes models write them:
//
//	<tool_call>
//	{"name": "get_weather", "arguments": {"city": "Paris"}}
//	</tool_call>
//
// Text outside the blocks is content. A block whose object yields no name
// (malformed before the name, or no name at all) is content too, tags and
// all, as vLLM returns unparsable output; an unterminated block at the end
// of the output is still a call (the output was cut short).
type hermes struct{ opts Options }

const (
	hermesOpen  = "<tool_call>"
	hermesClose = "</tool_call>"
)

func (h *hermes) Parse(text string) (string, []ToolCall) {
	var co contentOut
	var out []ToolCall
	pos := 0
	for {
		i := strings.Index(text[pos:], hermesOpen)
		if i < 0 {
			co.add(text[pos:])
			break
		}
		co.add(text[pos : pos+i])
		body := pos + i + len(hermesOpen)
		end, next := len(text), len(text)
		if j := strings.Index(text[body:], hermesClose); j >= 0 {
			end, next = body+j, body+j+len(hermesClose)
		}
		var p objParser
		p.feed(text[body:end])
		if p.HasName {
			co.call()
			out = append(out, ToolCall{ID: h.opts.NewID(), Type: "function", Name: p.Name, Arguments: argsOrEmpty(p.Args)})
		} else {
			co.add(text[pos+i : next])
		}
		pos = next
	}
	co.finish()
	return co.take(), out
}

func argsOrEmpty(b []byte) string {
	if len(b) == 0 {
		return "{}"
	}
	return string(b)
}

func (h *hermes) NewStream() Stream {
	return &hermesStream{cs: calls{newID: h.opts.NewID}}
}

type hermesStream struct {
	buf      string // text not yet processed
	inBlock  bool
	raw      strings.Builder // the block so far, while it has no name
	p        objParser
	named    bool
	sentArgs int
	co       contentOut
	cs       calls
}

func (s *hermesStream) Add(text string) Delta {
	s.buf += text
	s.process(false)
	return s.take()
}

func (s *hermesStream) Finish() Delta {
	s.process(true)
	s.co.finish()
	return s.take()
}

func (s *hermesStream) take() Delta { return Delta{Content: s.co.take(), ToolCalls: s.cs.take()} }

func (s *hermesStream) process(final bool) {
	for {
		if !s.inBlock {
			i := strings.Index(s.buf, hermesOpen)
			if i < 0 {
				k := len(s.buf)
				if !final {
					k -= heldPrefix(s.buf, hermesOpen)
				}
				s.co.add(s.buf[:k])
				s.buf = s.buf[k:]
				return
			}
			s.co.add(s.buf[:i])
			s.buf = s.buf[i+len(hermesOpen):]
			s.inBlock, s.named, s.sentArgs, s.p = true, false, 0, objParser{}
			s.raw.Reset()
			s.raw.WriteString(hermesOpen)
			continue
		}
		j := strings.Index(s.buf, hermesClose)
		if j < 0 {
			k := len(s.buf)
			if !final {
				k -= heldPrefix(s.buf, hermesClose)
			}
			s.body(s.buf[:k])
			s.buf = s.buf[k:]
			if final {
				s.endBlock("")
			}
			return
		}
		s.body(s.buf[:j])
		s.buf = s.buf[j+len(hermesClose):]
		s.endBlock(hermesClose)
	}
}

func (s *hermesStream) body(b string) {
	if !s.named {
		s.raw.WriteString(b)
	}
	s.p.feed(b)
	if s.p.HasName && !s.named {
		s.named = true
		s.cs.start(s.p.Name)
	}
	if s.named && len(s.p.Args) > s.sentArgs {
		s.cs.args(string(s.p.Args[s.sentArgs:]))
		s.sentArgs = len(s.p.Args)
	}
}

func (s *hermesStream) endBlock(closeTag string) {
	s.inBlock = false
	if s.named {
		if s.sentArgs == 0 {
			s.cs.args("{}")
		}
		s.co.call()
		return
	}
	s.raw.WriteString(closeTag)
	s.co.add(s.raw.String())
}
