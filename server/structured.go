package server

// Structured outputs, tool calls and reasoning: what the API edge does
// with response_format / structured_outputs / guided_*, tools and
// tool_choice, and the reasoning parser.
//
// Before a request reaches the engine (in its handler goroutine, off the
// engine loop) its constraint is compiled into a grammar through the
// server's cache, keyed by spec, over the vocabulary of the tokenizer the
// server uses (built on first use). A grammar that does not compile is a
// 400 naming the field; the request never reaches the engine. Each of the
// request's sequences then gets a logits processor (sample.MaskProcessor)
// that masks what the grammar forbids; with a reasoning parser it
// constrains only what follows the reasoning (see thinkGate).
//
// On the way out, chat choices are split into reasoning_content (the
// reasoning parser), content and tool_calls (the tool parser), streamed as
// deltas or whole.

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/llmserve/llmserve/grammar"
	"github.com/llmserve/llmserve/openai"
	"github.com/llmserve/llmserve/reasoning"
	"github.com/llmserve/llmserve/sample"
	"github.com/llmserve/llmserve/toolparse"
)

// vocabTokenizer is what a grammar vocabulary is built from; the real
// tokenizer (*tokenizer.Tokenizer) has it.
type vocabTokenizer interface {
	TokenBytes(id int) ([]byte, bool)
	IsSpecial(id int) bool
}

// templateSource is a tokenizer that reveals its chat template's source,
// from which the tool-call format is read when --tool-call-parser is not
// given.
type templateSource interface{ ChatTemplate() string }

// grammars is the server's structured-output state, built on first use.
type grammars struct {
	once  sync.Once
	vocab *grammar.Vocab
	cache *grammar.Cache
	err   error
	// compiling bounds the grammars compiled at once (each may take up to
	// Limits.CompileTimeout of a core), so that a burst of new schemas
	// leaves the engine loop its CPU.
	compiling chan struct{}
}

// Defaults of the grammar cache: how many compiled grammars the server
// keeps, and the token masks each keeps (past it, a state's mask is
// recomputed on each use): at most 64 × 16 MiB.
const (
	defaultGrammarCacheSize = 64
	defaultMaskCacheBytes   = 16 << 20
)

// grammarCache returns the grammar cache over the tokenizer's vocabulary.
func (s *Server) grammarCache() (*grammar.Cache, error) {
	g := &s.gram
	g.once.Do(func() {
		vt, ok := s.tok.(vocabTokenizer)
		if !ok {
			g.err = errors.New("the tokenizer does not expose its token bytes")
			return
		}
		start := time.Now()
		n := s.tok.VocabSize()
		toks := make([][]byte, n)
		for id := range toks {
			if vt.IsSpecial(id) {
				continue
			}
			if b, ok := vt.TokenBytes(id); ok {
				toks[id] = b
			}
		}
		var eos []int
		for _, id := range s.eosIDs() {
			if id >= 0 && id < n {
				eos = append(eos, id)
			}
		}
		if g.vocab, g.err = grammar.NewVocab(toks, eos); g.err != nil {
			return
		}
		size := s.opts.GrammarCacheSize
		if size <= 0 {
			size = defaultGrammarCacheSize
		}
		lim := s.opts.GrammarLimits
		if lim.MaxMaskCacheBytes == 0 {
			lim.MaxMaskCacheBytes = defaultMaskCacheBytes
		}
		g.cache = grammar.NewCache(g.vocab, lim, size)
		g.compiling = make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2))
		s.log.Info("structured outputs: grammar vocabulary built", "tokens", n, "seconds", time.Since(start).Seconds())
	})
	return g.cache, g.err
}

// eosIDs are the engine's end-of-sequence ids (the tokenizer's when the
// server was not told them).
func (s *Server) eosIDs() []int {
	if len(s.opts.EOSTokenIDs) > 0 {
		return s.opts.EOSTokenIDs
	}
	if t, ok := s.tok.(interface{ EOSTokenIDs() []int }); ok {
		return t.EOSTokenIDs()
	}
	return nil
}

// compile compiles a grammar for the field param (a cache hit is
// immediate), waiting for a compile slot unless ctx ends first.
func (s *Server) compile(ctx context.Context, spec grammar.Spec, param string) (*grammar.Grammar, error) {
	if s.tok == nil {
		return nil, openai.Invalid(param, "%s needs a tokenizer, and the server runs without one (--skip-tokenizer-init)", param)
	}
	cache, err := s.grammarCache()
	if err != nil {
		return nil, openai.Invalid(param, "%s cannot be honoured: structured outputs are not available with this tokenizer (%v)", param, err)
	}
	select {
	case s.gram.compiling <- struct{}{}:
		defer func() { <-s.gram.compiling }()
	case <-ctx.Done():
		return nil, errClientGone
	}
	g, err := cache.Get(spec)
	if err != nil {
		return nil, openai.Invalid(param, "%s: %v", param, err)
	}
	return g, nil
}

// toolFormat is the tool-call format of forced calls: --tool-call-parser,
// else the one the chat template teaches, else hermes.
func (s *Server) toolFormat() string {
	if s.opts.ToolCallParser != "" {
		return s.opts.ToolCallParser
	}
	if ts, ok := s.tok.(templateSource); ok {
		if f := toolparse.Detect(ts.ChatTemplate()); f != "" {
			return f
		}
	}
	return "hermes"
}

// chatPost says how a chat choice's text is split.
type chatPost struct {
	reason reasoning.Parser // nil: no reasoning parser
	tools  toolparse.Parser // nil: no tool-call parsing
	// maxCalls: calls past it are dropped (parallel_tool_calls false); 0 = any.
	maxCalls int

	chunks []openai.Choice           // emitSplit's scratch
	calls  []toolparse.ToolCallDelta // emitSplit's scratch
}

// choiceOut is one choice's split state: the parsers' streams and what
// they produced that is not yet sent (streaming) or all of it.
type choiceOut struct {
	rs        reasoning.Stream
	ts        toolparse.Stream
	reasoning []byte
	calls     []toolparse.ToolCallDelta
	ncalls    int // calls seen
	done      bool
}

func (p *chatPost) newOut() *choiceOut {
	o := &choiceOut{}
	if p.reason != nil {
		o.rs = p.reason.NewStream()
	}
	if p.tools != nil {
		o.ts = p.tools.NewStream()
	}
	return o
}

// addText folds a text delta of sq into its state.
func (c *call) addText(sq *seqState, text string) {
	if c.post == nil {
		sq.text = append(sq.text, text...)
		return
	}
	if sq.out == nil {
		sq.out = c.post.newOut()
	}
	if text == "" {
		return
	}
	o := sq.out
	content := text
	if o.rs != nil {
		d := o.rs.Add(text)
		o.reasoning = append(o.reasoning, d.Reasoning...)
		content = d.Content
	}
	c.addContent(sq, content)
}

func (c *call) addContent(sq *seqState, content string) {
	o := sq.out
	if o.ts == nil {
		sq.text = append(sq.text, content...)
		return
	}
	if content != "" {
		c.addToolDelta(sq, o.ts.Add(content))
	}
}

func (c *call) addToolDelta(sq *seqState, d toolparse.Delta) {
	o := sq.out
	sq.text = append(sq.text, d.Content...)
	for _, tc := range d.ToolCalls {
		if c.post.maxCalls > 0 && tc.Index >= c.post.maxCalls {
			continue
		}
		o.ncalls = max(o.ncalls, tc.Index+1)
		o.calls = append(o.calls, tc)
	}
}

// finishText flushes what the parsers held back, at the end of sq's
// output; a choice that called tools and stopped finishes with
// "tool_calls".
func (c *call) finishText(sq *seqState) {
	if c.post == nil {
		return
	}
	if sq.out == nil {
		sq.out = c.post.newOut()
	}
	o := sq.out
	if o.done {
		return
	}
	o.done = true
	if o.rs != nil {
		d := o.rs.Finish()
		o.reasoning = append(o.reasoning, d.Reasoning...)
		c.addContent(sq, d.Content)
	}
	if o.ts != nil {
		c.addToolDelta(sq, o.ts.Finish())
	}
	if o.ncalls > 0 && sq.finish == "stop" {
		sq.finish = "tool_calls"
	}
}

// fullCalls assembles a choice's tool-call deltas into complete calls.
func fullCalls(deltas []toolparse.ToolCallDelta) []toolparse.ToolCallDelta {
	var out []toolparse.ToolCallDelta
	for _, d := range deltas {
		if d.ID != "" {
			out = append(out, toolparse.ToolCallDelta{Index: d.Index, ID: d.ID, Type: "function", Name: d.Name, Arguments: d.Arguments})
			continue
		}
		for i := len(out) - 1; i >= 0; i-- {
			if out[i].Index == d.Index {
				out[i].Arguments += d.Arguments
				break
			}
		}
	}
	return out
}

// streamCalls rewrites tool-call deltas as OpenAI streams them: a call's
// first delta with its id, type, name and empty arguments, then argument
// fragments (consecutive ones of a call merged), appended to dst.
func streamCalls(dst, deltas []toolparse.ToolCallDelta) []toolparse.ToolCallDelta {
	for _, d := range deltas {
		if d.ID != "" {
			dst = append(dst, toolparse.ToolCallDelta{Index: d.Index, ID: d.ID, Type: "function", Name: d.Name})
			if d.Arguments == "" {
				continue
			}
			d = toolparse.ToolCallDelta{Index: d.Index, Arguments: d.Arguments}
		}
		if n := len(dst); n > 0 && dst[n-1].ID == "" && dst[n-1].Index == d.Index {
			dst[n-1].Arguments += d.Arguments
			continue
		}
		dst = append(dst, d)
	}
	return dst
}

// ------------------------------------------------------------ requests

// structured is a request's plan for structured output and parsing.
type structured struct {
	constraint *openai.Constraint // response_format & co.; nil: none
	force      *grammar.Spec      // forced tool calls (tool_choice required or named)
	post       *chatPost          // chat output splitting; nil: none
	reasonName string             // the reasoning parser, when one is used
	// keepSpecial: parse tool calls from text with special tokens kept
	// (the client did not set skip_special_tokens).
	keepSpecial bool
}

// planChat settles a chat request's tool choice, constraint and reasoning
// against the server's flags, before its prompt is rendered.
func (s *Server) planChat(req *openai.ChatCompletionRequest, ts openai.ToolSetup) (*structured, error) {
	cons, err := req.Constraint()
	if err != nil {
		return nil, err
	}
	st := &structured{constraint: cons, reasonName: s.opts.ReasoningParser}
	post := &chatPost{}
	switch ts.Choice {
	case openai.ToolChoiceAuto:
		if !s.opts.EnableAutoToolChoice || s.opts.ToolCallParser == "" {
			return nil, openai.Invalid("tool_choice", `"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set (tools without tool_choice mean "auto"; tool_choice "none", "required" or a named function work without them)`)
		}
		if post.tools, err = toolparse.New(s.opts.ToolCallParser, toolparse.Options{}); err != nil {
			return nil, err
		}
		if !ts.Parallel {
			post.maxCalls = 1
		}
	case openai.ToolChoiceRequired, openai.ToolChoiceNamed:
		if cons != nil {
			what := `"required"`
			if ts.Choice == openai.ToolChoiceNamed {
				what = "naming a function"
			}
			return nil, openai.Invalid(cons.Param, "%s cannot be combined with tool_choice %s: the output is then the tool calls", cons.Param, what)
		}
		format := s.toolFormat()
		template := ""
		if src, ok := s.tok.(templateSource); ok {
			template = src.ChatTemplate()
		}
		spec, err := toolparse.ForceSpec(toolparse.ForceFormat(format, template), ts.Tools, ts.Name, ts.Parallel)
		if err != nil {
			return nil, openai.Invalid("tools", "tools: %v", err)
		}
		st.force = &spec
		if post.tools, err = toolparse.New(format, toolparse.Options{}); err != nil {
			return nil, err
		}
	}
	st.keepSpecial = post.tools != nil && req.SkipSpecialTokens == nil
	if post.tools != nil || st.reasonName != "" {
		st.post = post
	}
	return st, nil
}

// applyStructured compiles the request's grammar (a 400 naming the field
// when it does not compile) and sets the sequences' logits processors and
// the chat output's splitting, once the prompt is rendered (it tells
// whether the output starts inside reasoning).
func (s *Server) applyStructured(ctx context.Context, g *genRequest, st *structured, prompt string) error {
	gate := gateSpec{start: -1}
	if st.reasonName != "" {
		open, close := strings.LastIndex(prompt, thinkOpen), strings.LastIndex(prompt, thinkClose)
		p, err := reasoning.New(st.reasonName, reasoning.Options{StartInReasoning: open > close})
		if err != nil {
			return err
		}
		st.post.reason = p
		gate = s.reasoningGate(st.reasonName, prompt)
	}
	g.post = st.post
	if st.keepSpecial {
		g.params.SkipSpecialTokens = false
	}
	spec, param := st.force, "tools"
	if st.constraint != nil {
		spec, param = &st.constraint.Spec, st.constraint.Param
	}
	if spec == nil {
		return nil
	}
	// The grammar decides where the output ends: a sequence made to go on
	// past that could only emit end-of-sequence tokens (or, with a model
	// whose EOS is a text token, text outside the grammar).
	if g.params.IgnoreEOS {
		return openai.Invalid("ignore_eos", "ignore_eos cannot be combined with %s: the output ends where the grammar does", param)
	}
	if g.params.MinTokens > 0 {
		return openai.Invalid("min_tokens", "min_tokens cannot be combined with %s: the output ends where the grammar does", param)
	}
	gr, err := s.compile(ctx, *spec, param)
	if err != nil {
		return err
	}
	// The mask covers the logits: the model's vocabulary (which may hold
	// ids past the tokenizer's: never allowed) or the tokenizer's.
	vocab := max(s.limits().VocabSize, s.gram.vocab.Size())
	eos := s.eosIDs()
	g.params.Processors = func() []sample.LogitsProcessor {
		var p sample.LogitsProcessor = sample.NewMaskProcessor(gr.NewMatcher(), vocab, eos, nil)
		if gate.on {
			p = &thinkGate{inner: p, start: gate.start, end: gate.end, state: gate.state}
		}
		return []sample.LogitsProcessor{p}
	}
	return nil
}

const (
	thinkOpen  = "<think>"
	thinkClose = "</think>"
)

// gateSpec says how a sequence's grammar waits for its reasoning to end.
type gateSpec struct {
	on    bool
	start int   // the token opening reasoning, allowed at the first step (gateMaybe)
	end   []int // the tokens closing it
	state uint8
}

// reasoningGate decides when the grammar starts: after the reasoning when
// the prompt leaves the output inside it (deepseek_r1 always, qwen3 when
// the prompt opened <think>); right away when the prompt closed the block
// (Qwen3 with enable_thinking false); otherwise (qwen3) the first token
// may open a block instead of starting the constrained output.
func (s *Server) reasoningGate(name, prompt string) gateSpec {
	end := s.tokenSeq(thinkClose)
	if len(end) == 0 {
		return gateSpec{start: -1}
	}
	open, close := strings.LastIndex(prompt, thinkOpen), strings.LastIndex(prompt, thinkClose)
	switch {
	case name == "deepseek_r1" || open > close:
		return gateSpec{on: true, start: -1, end: end, state: gateReasoning}
	case close >= 0 && strings.TrimSpace(prompt[close+len(thinkClose):]) == "":
		return gateSpec{start: -1}
	}
	if st := s.tokenSeq(thinkOpen); len(st) == 1 {
		return gateSpec{on: true, start: st[0], end: end, state: gateMaybe}
	}
	return gateSpec{start: -1}
}

// tokenSeq is text's token ids: one when the tokenizer has it as a token.
func (s *Server) tokenSeq(text string) []int {
	if t, ok := s.tok.(interface{ TokenToID(string) (int, bool) }); ok {
		if id, ok := t.TokenToID(text); ok {
			return []int{id}
		}
	}
	return s.tok.Encode(text, false)
}

// thinkGate holds a sequence's grammar back while it reasons: in
// gateReasoning everything passes until the closing tokens; in gateMaybe
// (the first step) the grammar's tokens and the opening token are allowed.
type thinkGate struct {
	inner  sample.LogitsProcessor
	start  int
	end    []int
	state  uint8
	recent []int
}

const (
	gateActive uint8 = iota
	gateMaybe
	gateReasoning
)

func (g *thinkGate) Process(logits []float32) {
	switch g.state {
	case gateReasoning:
	case gateMaybe:
		if g.start < 0 || g.start >= len(logits) {
			g.inner.Process(logits)
			return
		}
		keep := logits[g.start]
		g.inner.Process(logits)
		logits[g.start] = keep
	default:
		g.inner.Process(logits)
	}
}

func (g *thinkGate) Accept(tok int) {
	switch g.state {
	case gateMaybe:
		if tok == g.start {
			g.state = gateReasoning
			return
		}
		g.state = gateActive
	case gateReasoning:
		if len(g.recent) == len(g.end) {
			g.recent = append(g.recent[:0], g.recent[1:]...)
		}
		g.recent = append(g.recent, tok)
		if len(g.recent) == len(g.end) && slices.Equal(g.recent, g.end) {
			g.state = gateActive
		}
		return
	}
	g.inner.Accept(tok)
}
