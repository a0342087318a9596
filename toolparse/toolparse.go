// Package toolparse extracts tool calls from model output text, in the
// formats vLLM's tool parsers read: hermes (Qwen2.5/Qwen3, Hermes),
// llama3_json (Llama 3.x) and mistral. Each parser has a one-shot Parse
// and a streaming form fed text deltas, which emits content deltas and
// tool-call deltas shaped as OpenAI streams them (index; id, type and name
// on a call's first delta; then argument fragments). The two agree: the
// deltas of any split of a text reassemble into Parse's result, and a call
// is never emitted as content.
//
// Arguments are the raw JSON text the model wrote for the arguments value
// (its key order and spacing kept), so they can be streamed as written;
// a truncated output yields truncated arguments, as OpenAI's can be. A call
// without arguments gets "{}".
package toolparse

import (
	"crypto/rand"
	"fmt"
	"slices"
	"strings"
)

// ToolCall is a complete call.
type ToolCall struct {
	ID        string `json:"id"`
	Type      string `json:"type"` // always "function"
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// ToolCallDelta is one element of a streamed delta's tool_calls: the first
// delta of a call carries ID, Type and Name, later ones argument fragments.
type ToolCallDelta struct {
	Index     int    `json:"index"`
	ID        string `json:"id,omitempty"`
	Type      string `json:"type,omitempty"`
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

// Delta is what one streamed text delta produced.
type Delta struct {
	Content   string
	ToolCalls []ToolCallDelta
}

// Empty reports whether the delta carries nothing.
func (d Delta) Empty() bool { return d.Content == "" && len(d.ToolCalls) == 0 }

// Parser parses one output format. It is stateless and safe for concurrent
// use; streams are not.
type Parser interface {
	// Parse splits a complete output into content and tool calls.
	Parse(text string) (content string, calls []ToolCall)
	// NewStream returns a parser for one streamed output.
	NewStream() Stream
}

// Stream parses an output fed as text deltas.
type Stream interface {
	// Add feeds the next text delta and returns what can be emitted now;
	// text that may still turn out to be part of a call is held back.
	Add(text string) Delta
	// Finish returns what was held back, at the end of the output.
	Finish() Delta
}

// Options configures a parser.
type Options struct {
	// NewID makes tool call ids; nil uses the format's default (OpenAI
	// style "call_" plus 24 characters, or 9 characters for Mistral, whose
	// chat template requires that length).
	NewID func() string
}

// Names lists the parsers New knows.
func Names() []string { return []string{"hermes", "llama3_json", "mistral"} }

// New returns the parser registered under vLLM's name for it.
func New(name string, opts Options) (Parser, error) {
	switch name {
	case "hermes", "qwen3", "qwen2_5":
		return &hermes{opts: withID(opts, openAIID)}, nil
	case "llama3_json", "llama3", "llama4_json":
		return &llama3{opts: withID(opts, openAIID)}, nil
	case "mistral":
		return &mistral{opts: withID(opts, mistralID)}, nil
	}
	return nil, fmt.Errorf("toolparse: unknown tool call parser %q (known: %s)", name, strings.Join(Names(), ", "))
}

func withID(o Options, def func() string) Options {
	if o.NewID == nil {
		o.NewID = def
	}
	return o
}

const alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

func randomAlnum(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alnum[int(b[i])%len(alnum)]
	}
	return string(b)
}

func openAIID() string  { return "call_" + randomAlnum(24) }
func mistralID() string { return randomAlnum(9) }

// ----------------------------------------------------------------- helpers

// heldPrefix is the length of the longest suffix of s that is a proper
// prefix of one of tags: text a later delta may complete into a tag.
func heldPrefix(s string, tags ...string) int {
	best := 0
	for _, tag := range tags {
		for k := min(len(tag)-1, len(s)); k > best; k-- {
			if strings.HasSuffix(s, tag[:k]) {
				best = k
				break
			}
		}
	}
	return best
}

// indexAny returns the first index of any of tags in s, and which tag.
func indexAny(s string, tags ...string) (int, int) {
	at, which := -1, -1
	for k, tag := range tags {
		if i := strings.Index(s, tag); i >= 0 && (at < 0 || i < at) {
			at, which = i, k
		}
	}
	return at, which
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func trimSpace(s string) string { return strings.Trim(s, " \t\r\n") }

// contentOut applies the content whitespace rule of every format: text
// next to a recognised call loses its whitespace on that side (so
// "Sure.\n\n<tool_call>..." gives content "Sure."). Streaming, it holds
// trailing whitespace back until it knows whether a call follows.
type contentOut struct {
	out      strings.Builder
	held     string // trailing whitespace not yet emitted
	skipLead bool   // after a call: drop leading whitespace
}

func (c *contentOut) add(s string) {
	if c.skipLead {
		s = strings.TrimLeft(s, " \t\r\n")
		if s == "" {
			return
		}
		c.skipLead = false
	}
	all := c.held + s
	cut := len(strings.TrimRight(all, " \t\r\n"))
	c.out.WriteString(all[:cut])
	c.held = all[cut:]
}

// call marks a recognised call: whitespace on both sides goes.
func (c *contentOut) call() {
	c.held = ""
	c.skipLead = true
}

func (c *contentOut) finish() {
	c.out.WriteString(c.held)
	c.held = ""
}

func (c *contentOut) take() string {
	s := c.out.String()
	c.out.Reset()
	return s
}

// calls tracks the calls of one output as deltas.
type calls struct {
	newID  func() string
	deltas []ToolCallDelta
	n      int // calls started
}

func (c *calls) start(name string) {
	c.deltas = append(c.deltas, ToolCallDelta{Index: c.n, ID: c.newID(), Type: "function", Name: name})
	c.n++
}

func (c *calls) args(s string) {
	if s == "" {
		return
	}
	c.deltas = append(c.deltas, ToolCallDelta{Index: c.n - 1, Arguments: s})
}

func (c *calls) take() []ToolCallDelta {
	d := c.deltas
	c.deltas = nil
	return d
}

// Collect reassembles a stream's deltas into content and calls, as a
// client does; tests and non-streaming callers of a Stream use it.
func Collect(deltas []Delta) (string, []ToolCall) {
	var sb strings.Builder
	var out []ToolCall
	for _, d := range deltas {
		sb.WriteString(d.Content)
		for _, tc := range d.ToolCalls {
			for len(out) <= tc.Index {
				out = append(out, ToolCall{Type: "function"})
			}
			c := &out[tc.Index]
			if tc.ID != "" {
				c.ID = tc.ID
			}
			c.Name += tc.Name
			c.Arguments += tc.Arguments
		}
	}
	return sb.String(), slices.Clip(out)
}
