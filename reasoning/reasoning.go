// Package reasoning splits a reasoning model's output into reasoning
// (OpenAI's reasoning_content) and content, at <think>...</think>, one-shot
// or streamed; the deltas of any split of a text reassemble into Parse's
// result.
//
//   - qwen3: the output may open with <think> (after optional
//     whitespace); reasoning runs to </think>, content follows. An output
//     that does not open with <think> is all content (Qwen3 with thinking
//     disabled), unless Options.StartInReasoning says the prompt already
//     opened the block, as Qwen3 thinking-2507 templates do.
//   - deepseek_r1: the chat template puts <think> in the prompt, so the
//     output starts inside reasoning (a <think> it repeats at the start is
//     dropped) and runs to </think>.
//
// Reasoning cut off before </think> (max_tokens) is all reasoning, with
// empty content. Whitespace that separates </think> from the answer is
// dropped from the content; reasoning is kept as written.
package reasoning

import (
	"fmt"
	"strings"
)

// Delta is what one streamed text delta produced.
type Delta struct {
	Reasoning, Content string
}

// Parser is one model family's convention; it is safe for concurrent use.
type Parser interface {
	// Parse splits a complete output.
	Parse(text string) (reasoning, content string)
	// NewStream returns a parser for one streamed output.
	NewStream() Stream
}

// Stream parses an output fed as text deltas.
type Stream interface {
	// Add feeds the next delta; text that may be part of a tag is held.
	Add(text string) Delta
	// Finish returns what was held, at the end of the output.
	Finish() Delta
	// InReasoning reports whether the output is (still) inside reasoning;
	// tool-call parsing and grammars apply to the content after it.
	InReasoning() bool
}

// Options configures a parser.
type Options struct {
	// StartInReasoning: the prompt ends inside an open <think> block.
	StartInReasoning bool
}

const (
	openTag  = "<think>"
	closeTag = "</think>"
)

// Names lists the parsers New knows.
func Names() []string { return []string{"qwen3", "deepseek_r1"} }

// New returns the parser registered under vLLM's name for it.
func New(name string, opts Options) (Parser, error) {
	switch name {
	case "qwen3":
		return parser{startIn: opts.StartInReasoning}, nil
	case "deepseek_r1":
		return parser{startIn: true}, nil
	}
	return nil, fmt.Errorf("reasoning: unknown reasoning parser %q (known: %s)", name, strings.Join(Names(), ", "))
}

type parser struct{ startIn bool }

// Parse is written directly on the whole text; the stream is a separate
// state machine, and tests hold the two to the same answers.
func (p parser) Parse(text string) (string, string) {
	rest := strings.TrimLeft(text, " \t\r\n")
	opened := strings.HasPrefix(rest, openTag)
	if !opened && !p.startIn {
		return "", text
	}
	if opened {
		text = rest[len(openTag):]
	}
	reasoning, content, found := strings.Cut(text, closeTag)
	if !found {
		return reasoning, ""
	}
	return reasoning, strings.TrimLeft(content, " \t\r\n")
}

func (p parser) NewStream() Stream {
	return &stream{st: stStart, startIn: p.startIn}
}

const (
	stStart     = iota // before deciding whether a <think> opens the output
	stReasoning        // inside reasoning
	stAfter            // after </think>, dropping whitespace
	stContent          // content to the end
)

type stream struct {
	st      int
	startIn bool
	buf     string // held text
}

func (s *stream) InReasoning() bool {
	return s.st == stReasoning || (s.st == stStart && s.startIn)
}

func (s *stream) Add(text string) Delta {
	s.buf += text
	return s.process(false)
}

func (s *stream) Finish() Delta {
	return s.process(true)
}

func (s *stream) process(final bool) Delta {
	var d Delta
	for {
		switch s.st {
		case stStart:
			rest := strings.TrimLeft(s.buf, " \t\r\n")
			switch {
			case strings.HasPrefix(rest, openTag):
				s.buf = rest[len(openTag):]
				s.st = stReasoning
			case !final && strings.HasPrefix(openTag, rest):
				return d // "", whitespace or part of <think>: undecided
			case s.startIn:
				s.st = stReasoning
			default:
				s.st = stContent
			}
		case stReasoning:
			if i := strings.Index(s.buf, closeTag); i >= 0 {
				d.Reasoning += s.buf[:i]
				s.buf = s.buf[i+len(closeTag):]
				s.st = stAfter
				continue
			}
			k := len(s.buf)
			if !final {
				k -= held(s.buf, closeTag)
			}
			d.Reasoning += s.buf[:k]
			s.buf = s.buf[k:]
			return d
		case stAfter:
			s.buf = strings.TrimLeft(s.buf, " \t\r\n")
			if s.buf == "" {
				return d
			}
			s.st = stContent
		case stContent:
			d.Content += s.buf
			s.buf = ""
			return d
		}
	}
}

// held is the length of the longest suffix of s that is a proper prefix
// of tag.
func held(s, tag string) int {
	for k := min(len(tag)-1, len(s)); k > 0; k-- {
		if strings.HasSuffix(s, tag[:k]) {
			return k
		}
	}
	return 0
}
