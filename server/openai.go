package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/llmserve/llmserve/openai"
	"github.com/llmserve/llmserve/tokenizer/chattemplate"
)

func (s *Server) limits() openai.Limits {
	vocab := s.opts.VocabSize
	if vocab <= 0 && s.tok != nil {
		vocab = s.tok.VocabSize()
	}
	return openai.Limits{VocabSize: vocab, MaxLogprobs: s.opts.MaxLogprobs, MaxNumSeqs: s.opts.MaxNumSeqs}
}

// tokenText names a token for logprobs.
func (s *Server) tokenText(id int) string { return s.tok.TokenText(id) }

// asTokenIDs reads return_tokens_as_token_ids once decoding has filled in
// the server's default.
func asTokenIDs(v *bool) bool { return v != nil && *v }

func (s *Server) newEncoder(kind openai.Kind, id, model string, asIDs bool) *openai.Encoder {
	enc := openai.NewEncoder(kind, id, time.Now().Unix(), model)
	enc.AsTokenIDs = asIDs
	if s.tok != nil {
		enc.TokenText = s.tokenText
	}
	return enc
}

// promptIDs tokenizes a prompt given as text(s) (special tokens added
// unless addSpecial is false), or returns its token ids as given.
func (s *Server) promptIDs(p openai.Prompt, addSpecial *bool) ([][]int, error) {
	if len(p.Texts) == 0 {
		return p.IDs, nil
	}
	if s.tok == nil {
		return nil, ErrNoTokenizer
	}
	ids := make([][]int, len(p.Texts))
	for i, t := range p.Texts {
		ids[i] = s.tok.Encode(t, addSpecial == nil || *addSpecial)
	}
	return ids, nil
}

// parseCompletion decodes and validates a /v1/completions body: the whole
// path from bytes to engine requests that the fuzz test drives.
func (s *Server) parseCompletion(w http.ResponseWriter, r *http.Request) (*openai.CompletionRequest, *genRequest, string, error) {
	var req openai.CompletionRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return nil, nil, "", err
	}
	model, err := s.resolveModel(req.Model)
	if err != nil {
		return nil, nil, "", err
	}
	params, err := req.Params(s.limits())
	if err != nil {
		return nil, nil, "", err
	}
	// Before tokenizing a batch that could never be admitted.
	if err := s.checkSeats(req.Prompt.Len(), params.N, "prompt"); err != nil {
		return nil, nil, "", err
	}
	cons, err := req.Constraint()
	if err != nil {
		return nil, nil, "", err
	}
	g := &genRequest{id: s.newID("cmpl-"), params: params, priority: req.Priority, defaultMax: s.opts.DefaultMaxTokens}
	if g.prompts, err = s.promptIDs(req.Prompt, req.AddSpecialTokens); err != nil {
		return nil, nil, "", err
	}
	if err := s.checkPrompts(g, "prompt"); err != nil {
		return nil, nil, "", err
	}
	if cons != nil {
		if err := s.applyStructured(r.Context(), g, &structured{constraint: cons}, ""); err != nil {
			return nil, nil, "", err
		}
	}
	return &req, g, model, nil
}

func (s *Server) handleCompletions(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	req, g, model, err := s.parseCompletion(w, r)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	c, err := s.begin(r, start, g)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	defer c.done()
	w.Header().Set("X-Request-Id", g.id)
	want := req.Logprobs != nil
	if req.Stream {
		enc := s.newEncoder(openai.KindCompletionChunk, g.id, model, asTokenIDs(req.ReturnTokensAsTokenIDs))
		s.streamOpenAI(w, c, enc, want, req.StreamOptions, false)
		return
	}
	if err := c.collect(); err != nil {
		s.writeCollectErr(w, err)
		return
	}
	enc := s.newEncoder(openai.KindCompletion, g.id, model, asTokenIDs(req.ReturnTokensAsTokenIDs))
	s.writeFull(w, c, enc, want, "")
}

// writeFull writes a non-streaming completion or chat completion.
func (s *Server) writeFull(w http.ResponseWriter, c *call, enc *openai.Encoder, wantLogprobs bool, role string) {
	choices := make([]openai.Choice, len(c.seqs))
	for i := range c.seqs {
		sq := &c.seqs[i]
		choices[i] = openai.Choice{Index: i, Role: role, Text: sq.text, WantLogprobs: wantLogprobs,
			Logprobs: sq.lps, FinishReason: sq.finish, StopReason: sq.stop}
		if c.post != nil {
			c.finishText(sq) // a call whose stream ended without a finish
			choices[i].WantReasoning = c.post.reason != nil
			choices[i].Reasoning = sq.out.reasoning
			choices[i].ToolCalls = fullCalls(sq.out.calls)
			choices[i].FinishReason = sq.finish
		}
		c.tokenIDs(&choices[i], i, true)
	}
	if role != "" && c.wantIDs() {
		enc.PromptTokenIDs = c.promptIDs[0]
	}
	u := c.usage()
	b := enc.Append(make([]byte, 0, 512), choices, &u)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(b, '\n'))
}

// tokenIDs fills a choice's token ids when the request wants them
// (return_token_ids, or no tokenizer): the ids since the last chunk and,
// with withPrompt, its prompt's ids (completions).
func (c *call) tokenIDs(ch *openai.Choice, i int, withPrompt bool) {
	if !c.wantIDs() {
		return
	}
	ch.WantTokenIDs = true
	ch.TokenIDs = c.seqs[i].ids
	if ch.TokenIDs == nil {
		ch.TokenIDs = []int{}
	}
	if withPrompt {
		ch.PromptTokenIDs = c.promptIDs[i/c.n]
	}
}

// streamOpenAI streams chunks: for chat a role chunk per choice first, then
// one chunk per choice per batch, the usage chunk when asked, and [DONE].
func (s *Server) streamOpenAI(w http.ResponseWriter, c *call, enc *openai.Encoder, wantLogprobs bool, so *openai.StreamOptions, chat bool) {
	e := startSSE(w)
	one := make([]openai.Choice, 1)
	if chat {
		if c.wantIDs() {
			enc.PromptTokenIDs = c.promptIDs[0]
		}
		for i := range c.seqs {
			one[0] = openai.Choice{Index: i, Role: "assistant"}
			e.event()
			e.buf = enc.Append(e.buf, one, nil)
			e.end()
			enc.PromptTokenIDs = nil
		}
	}
	sentPrompt := make([]bool, len(c.seqs))
	c.stream(e, func() {
		failed := c.failure() != nil
		for i := range c.seqs {
			sq := &c.seqs[i]
			if !sq.pending {
				continue
			}
			finish, stop := shownFinish(sq, failed)
			if len(sq.text) == 0 && len(sq.lps) == 0 && len(sq.ids) == 0 && finish == "" &&
				(sq.out == nil || len(sq.out.reasoning) == 0 && len(sq.out.calls) == 0) {
				sq.pending = false
				continue
			}
			if c.post != nil {
				c.emitSplit(e, enc, i, wantLogprobs, finish, stop)
				continue
			}
			ch := &one[0]
			*ch = openai.Choice{Index: i, Text: sq.text, WantLogprobs: wantLogprobs, Logprobs: sq.lps,
				TextOffset: sq.textOffset, FinishReason: finish, StopReason: stop}
			c.tokenIDs(ch, i, !chat && !sentPrompt[i])
			sentPrompt[i] = true
			e.event()
			e.buf = enc.Append(e.buf, one, nil)
			e.end()
			sq.textOffset = ch.TextOffset
			sq.text = sq.text[:0]
			sq.lps = sq.lps[:0]
			sq.ids = sq.ids[:0]
			sq.pending = false
		}
		if c.closed {
			var usage func()
			if so != nil && so.IncludeUsage {
				usage = func() {
					u := c.usage()
					e.event()
					e.buf = enc.Append(e.buf, nil, &u)
					e.end()
				}
			}
			c.appendEnd(e, usage)
		}
	})
}

// emitSplit writes choice i's pending output as chat chunks when it is
// split into reasoning, content and tool calls: one chunk each for the
// reasoning and the content, then one per tool-call delta as OpenAI
// streams them; logprobs and token ids go with the first chunk, the
// finish reason with the last.
func (c *call) emitSplit(e *sse, enc *openai.Encoder, i int, wantLogprobs bool, finish string, stop any) {
	sq := &c.seqs[i]
	chunks := c.post.chunks[:0]
	if o := sq.out; o != nil {
		if len(o.reasoning) > 0 {
			chunks = append(chunks, openai.Choice{Index: i, Reasoning: o.reasoning})
		}
		if len(sq.text) > 0 {
			chunks = append(chunks, openai.Choice{Index: i, Text: sq.text})
		}
		calls := streamCalls(c.post.calls[:0], o.calls)
		c.post.calls = calls
		for k := range calls {
			chunks = append(chunks, openai.Choice{Index: i, ToolCalls: calls[k : k+1]})
		}
	} else if len(sq.text) > 0 {
		chunks = append(chunks, openai.Choice{Index: i, Text: sq.text})
	}
	if len(chunks) == 0 {
		chunks = append(chunks, openai.Choice{Index: i})
	}
	first, last := &chunks[0], &chunks[len(chunks)-1]
	first.WantLogprobs, first.Logprobs = wantLogprobs, sq.lps
	c.tokenIDs(first, i, false)
	last.FinishReason, last.StopReason = finish, stop
	for k := range chunks {
		e.event()
		e.buf = enc.Append(e.buf, chunks[k:k+1], nil)
		e.end()
	}
	c.post.chunks = chunks[:0]
	sq.text = sq.text[:0]
	sq.lps = sq.lps[:0]
	sq.ids = sq.ids[:0]
	if o := sq.out; o != nil {
		o.reasoning = o.reasoning[:0]
		o.calls = o.calls[:0]
	}
	sq.pending = false
}

// parseChat decodes and validates a /v1/chat/completions body, renders the
// chat template and tokenizes it.
func (s *Server) parseChat(w http.ResponseWriter, r *http.Request) (*openai.ChatCompletionRequest, *genRequest, string, error) {
	var req openai.ChatCompletionRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return nil, nil, "", err
	}
	model, err := s.resolveModel(req.Model)
	if err != nil {
		return nil, nil, "", err
	}
	params, err := req.Params(s.limits())
	if err != nil {
		return nil, nil, "", err
	}
	if s.tok == nil {
		return nil, nil, "", ErrNoTokenizer
	}
	addGen, err := chatAddGen(req.AddGenerationPrompt, req.ContinueFinalMessage)
	if err != nil {
		return nil, nil, "", err
	}
	ts, err := req.ToolSetup()
	if err != nil {
		return nil, nil, "", err
	}
	st, err := s.planChat(&req, ts)
	if err != nil {
		return nil, nil, "", err
	}
	// tool_choice "none" included: the model still sees the tools.
	extra := templateKwargs(req.ChatTemplateKwargs, ts.Render)
	text, err := s.renderChat("messages", req.Messages, addGen, req.ContinueFinalMessage, extra)
	if err != nil {
		return nil, nil, "", err
	}
	addSpecial := req.AddSpecialTokens != nil && *req.AddSpecialTokens
	g := &genRequest{id: s.newID("chatcmpl-"), params: params, priority: req.Priority,
		prompts: [][]int{s.tok.Encode(text, addSpecial)}, maxParam: req.MaxTokensParam()}
	if err := s.checkPrompts(g, "messages"); err != nil {
		return nil, nil, "", err
	}
	if err := s.applyStructured(r.Context(), g, st, text); err != nil {
		return nil, nil, "", err
	}
	return &req, g, model, nil
}

func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	req, g, model, err := s.parseChat(w, r)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	c, err := s.begin(r, start, g)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	defer c.done()
	w.Header().Set("X-Request-Id", g.id)
	if req.Stream {
		enc := s.newEncoder(openai.KindChatChunk, g.id, model, asTokenIDs(req.ReturnTokensAsTokenIDs))
		s.streamOpenAI(w, c, enc, req.Logprobs, req.StreamOptions, true)
		return
	}
	if err := c.collect(); err != nil {
		s.writeCollectErr(w, err)
		return
	}
	enc := s.newEncoder(openai.KindChat, g.id, model, asTokenIDs(req.ReturnTokensAsTokenIDs))
	s.writeFull(w, c, enc, req.Logprobs, "assistant")
}

// templateKwargs is what the chat template gets besides the messages:
// chat_template_kwargs and the tools as vLLM hands them over, key order
// kept.
func templateKwargs(kwargs map[string]any, tools []json.RawMessage) map[string]any {
	if len(tools) == 0 {
		return kwargs
	}
	list := make([]any, len(tools))
	for i, t := range tools {
		list[i] = t
	}
	extra := cloneMap(kwargs)
	extra["tools"] = list
	return extra
}

func cloneMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// renderChat applies the chat template. continue_final_message renders the
// conversation without a generation prompt and cuts it right after the last
// message's content, so the model continues that message (as HF does).
func (s *Server) renderChat(param string, msgs []map[string]any, addGen, continueFinal bool, extra map[string]any) (string, error) {
	if len(msgs) == 0 {
		return "", openai.Invalid(param, "%s must not be empty", param)
	}
	norm, err := openai.NormalizeMessages(param, msgs)
	if err != nil {
		return "", err
	}
	if !s.tok.HasChatTemplate() {
		return "", openai.Invalid(param, "the model's tokenizer has no chat template; use /v1/completions")
	}
	if continueFinal {
		addGen = false
	}
	text, err := s.tok.ApplyChatTemplate(norm, addGen, extra)
	if err != nil {
		return "", s.templateError(param, norm, addGen, extra, err)
	}
	if continueFinal {
		last, _ := norm[len(norm)-1]["content"].(string)
		last = strings.TrimSpace(last)
		if last != "" {
			if i := strings.LastIndex(text, last); i >= 0 {
				text = text[:i+len(last)]
			}
		}
	}
	return text, nil
}

// templateError turns a chat template failure into a 400 naming the
// message where rendering first breaks, without the renderer's internals
// (they quote the template's source; the log has them). The message is
// found by bisection over prefixes of the conversation: a prefix of k
// messages that renders and one of k+1 that does not name messages[k].
// A template's own raise_exception text is written for users and is kept.
func (s *Server) templateError(param string, msgs []map[string]any, addGen bool, extra map[string]any, err error) error {
	if errors.Is(err, chattemplate.ErrTemplate) {
		s.log.Error("the chat template does not compile", "err", err)
		return openai.Invalid(param, "the model's chat template cannot be used (see the server log); use /v1/completions")
	}
	s.log.Debug("chat template failed", "err", err)
	why := "the model's chat template cannot render it"
	var re *chattemplate.RaiseError
	if errors.As(err, &re) {
		why = "the model's chat template refused it: " + truncate(re.Message, 200)
	}
	// Bisection renders at most ~log2(n) prefixes; past maxBisect messages
	// the error names the conversation only.
	const maxBisect = 4096
	if len(msgs) > maxBisect {
		return openai.Invalid(param, "%s: %s", param, why)
	}
	ok, bad := 0, len(msgs) // prefix ok renders (the empty one is assumed to), prefix bad does not
	for bad-ok > 1 {
		mid := (ok + bad) / 2
		if _, err := s.tok.ApplyChatTemplate(msgs[:mid], addGen, extra); err != nil {
			bad = mid
		} else {
			ok = mid
		}
	}
	return openai.Invalid(param, "%s[%d]: %s", param, bad-1, why)
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// chatAddGen settles add_generation_prompt (default true) against
// continue_final_message, which excludes it.
func chatAddGen(addGen *bool, continueFinal bool) (bool, error) {
	if continueFinal {
		if addGen != nil && *addGen {
			return false, openai.Invalid("continue_final_message", "continue_final_message and add_generation_prompt cannot both be true")
		}
		return false, nil
	}
	return addGen == nil || *addGen, nil
}
