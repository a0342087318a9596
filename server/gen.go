package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/metrics"
	"github.com/llmserve/llmserve/openai"
	"github.com/llmserve/llmserve/sample"
)

// genRequest is a validated generation: one engine request per prompt.
type genRequest struct {
	id       string
	prompts  [][]int
	params   sample.Params
	priority int
	// defaultMax: max_tokens was not given; use defaultMax capped by the context left.
	defaultMax int
	// maxParam names the field that set max_tokens, for errors ("max_tokens"
	// or chat's "max_completion_tokens").
	maxParam string
	// post splits chat output into reasoning, content and tool calls; nil: none.
	post *chatPost
}

// engineRequest is the engine request of prompt i.
func (g *genRequest) engineRequest(i int) *engine.Request {
	id := g.id
	if len(g.prompts) > 1 {
		id += "-" + strconv.Itoa(i)
	}
	return &engine.Request{ID: id, PromptIDs: g.prompts[i], Params: g.params, Priority: g.priority}
}

// seats is how many --max-concurrent-requests slots g takes: one per
// sequence, n per prompt. checkPrompts bounds it, so it does not overflow.
func (g *genRequest) seats() int { return len(g.prompts) * g.params.N }

// checkPrompts validates token ids and lengths, settles max_tokens and
// checks that the request can ever be admitted. promptParam names the field
// for errors ("prompt" or "messages"). No sum or product of request numbers
// is formed before it is known not to overflow.
func (s *Server) checkPrompts(g *genRequest, promptParam string) error {
	vocab := s.limits().VocabSize
	maxLen := s.maxModelLen()
	if g.maxParam == "" {
		g.maxParam = "max_tokens"
	}
	for _, ids := range g.prompts {
		if len(ids) == 0 {
			return openai.Invalid(promptParam, "%s must not be empty", promptParam)
		}
		for _, id := range ids {
			if err := openai.CheckTokenID(promptParam, id, vocab); err != nil {
				return err
			}
		}
	}
	longest := 0
	for _, ids := range g.prompts {
		longest = max(longest, len(ids))
	}
	if longest >= maxLen {
		return openai.Invalid(promptParam, "This model's maximum context length is %d tokens. However, your request has %d input tokens. Please reduce the length of the input.", maxLen, longest)
	}
	left := maxLen - longest // >= 1
	if g.params.MaxTokens == 0 {
		g.params.MaxTokens = left
		if g.defaultMax > 0 {
			g.params.MaxTokens = min(g.defaultMax, left)
		}
	}
	if g.params.MaxTokens > left {
		// Both are non-negative ints: their sum fits in a uint64.
		total := uint64(longest) + uint64(g.params.MaxTokens)
		return openai.Invalid(g.maxParam, "This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the prompt, %d in the completion). Please reduce the length of the prompt or completion.",
			maxLen, total, longest, g.params.MaxTokens)
	}
	if err := openai.CheckMinTokens(g.params, g.maxParam); err != nil {
		return err
	}
	if len(g.params.Stop) > 0 && s.tok == nil {
		return openai.Invalid("stop", "stop strings need a tokenizer, and the server runs without one (--skip-tokenizer-init): use stop_token_ids")
	}
	return s.checkSeats(len(g.prompts), g.params.N, promptParam)
}

// checkSeats refuses a request of the given number of prompts and n that
// can never be admitted: it takes n slots per prompt, all at once, and
// needing more than the whole capacity is a 400, not a 429 to retry.
func (s *Server) checkSeats(prompts, n int, promptParam string) error {
	n = max(n, 1)
	limit := openai.MaxChoices
	if c := s.opts.MaxConcurrentRequests; c > 0 && c < limit {
		limit = c
	}
	if prompts <= limit/n {
		return nil
	}
	why := fmt.Sprintf("more than the %d one request may ask for", limit)
	if limit == s.opts.MaxConcurrentRequests {
		why = fmt.Sprintf("more than the server's --max-concurrent-requests of %d: it could never be admitted", limit)
	}
	if n == 1 {
		return openai.Invalid(promptParam, "this request needs %d slots (one per prompt), %s", prompts, why)
	}
	return openai.Invalid("n", "this request needs %d slots (n=%d sequences for each of %d prompts), %s",
		uint64(n)*uint64(prompts), n, prompts, why)
}

// seqState is one choice's progress: text not yet sent (streaming) or all
// of it (non-streaming), reused across events so a token costs no allocation.
type seqState struct {
	text       []byte
	lps        []engine.TokenLogprob
	pending    bool
	finish     string
	stop       any
	completion int
	textOffset int
	last       time.Time
	ids        []int      // token ids not yet sent (or all), when the request wants them
	out        *choiceOut // reasoning and tool calls split off the text (call.post)
}

type promptState struct {
	arrival, scheduled, first, end time.Time
	tokens, cached                 int
	completion                     int
	done                           int
	finish                         string
	observed                       bool
}

// call is one admitted generation in flight.
type call struct {
	s   *Server
	id  string
	ctx context.Context
	// cancel aborts the call's engine requests; its cause says why (nil:
	// the client left or the call is over).
	cancel  context.CancelCauseFunc
	stopEnd func() bool // unregisters the EndInFlight hook
	release func()
	err     error // the first engine error (Output.Err) of any sequence
	n       int
	ch      <-chan engine.Output
	closed  bool
	seqs    []seqState
	prompts []promptState
	start   time.Time // handler start
	firstAt time.Time // first output at the server
	params  sample.Params
	info    *reqInfo // the request log's record; never nil
	// promptIDs are the prompts' token ids (for return_token_ids).
	promptIDs [][]int
	post      *chatPost
}

// begin admits, submits and waits for the first output, so that every
// refusal (429, 503, 400 from the engine) happens before a response byte.
func (s *Server) begin(r *http.Request, start time.Time, g *genRequest) (*call, error) {
	eng := s.engine()
	release, err := s.admit(g.seats())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	stopEnd := context.AfterFunc(s.endCtx, func() { cancel(ErrShutdownDeadline) })
	c := &call{s: s, id: g.id, ctx: ctx, cancel: cancel, stopEnd: stopEnd, release: release, n: g.params.N, start: start,
		seqs: make([]seqState, len(g.prompts)*g.params.N), prompts: make([]promptState, len(g.prompts)),
		params: g.params, info: reqInfoFrom(r.Context()), promptIDs: g.prompts, post: g.post}
	if c.info == nil {
		c.info = &reqInfo{}
	}
	c.info.generation, c.info.params, c.info.numPrompts = true, &c.params, len(g.prompts)
	c.info.promptIDs = g.prompts[0]
	chans := make([]<-chan engine.Output, 0, len(g.prompts))
	var scheduled []chan struct{} // for --max-queue-wait
	submitted := false
	defer func() {
		// On an error or a panic in Submit: abort what was submitted and
		// give the slots back.
		if !submitted {
			cancel(nil)
			stopEnd()
			for _, ch := range chans {
				for range ch {
				}
			}
			release()
		}
	}()
	for i, ids := range g.prompts {
		c.prompts[i] = promptState{arrival: time.Now(), tokens: len(ids)}
		req := g.engineRequest(i)
		if s.opts.MaxQueueWait > 0 {
			req.Scheduled = make(chan struct{})
			scheduled = append(scheduled, req.Scheduled)
		}
		ch, err := eng.Submit(ctx, req)
		if err != nil {
			return nil, err
		}
		chans = append(chans, ch)
	}
	submitted = true
	c.ch = chans[0]
	if len(chans) > 1 {
		c.ch = merge(chans, g.params.N)
	}
	// Wait for the first output. A request still queued (not scheduled by
	// the engine) after MaxQueueWait leaves the queue with a 503; one that
	// is running (a long prefill, say) is waited for.
	var timeout <-chan time.Time
	if s.opts.MaxQueueWait > 0 {
		t := time.NewTimer(s.opts.MaxQueueWait)
		defer t.Stop()
		timeout = t.C
	}
	var o engine.Output
	var ok bool
	select {
	case o, ok = <-c.ch:
	case <-timeout:
		if !allClosed(scheduled) {
			s.metrics.Reject(metrics.RejectQueueTimeout)
			c.abort()
			return nil, ErrQueueTimeout
		}
		o, ok = <-c.ch
	}
	if !ok {
		c.closed = true
	} else {
		c.fold(&o)
	}
	// An engine failure or the shutdown deadline before the first output
	// is still a plain error status.
	if err := c.failure(); err != nil {
		c.abort()
		return nil, err
	}
	c.firstAt = time.Now()
	return c, nil
}

// allClosed says whether every channel is closed (without blocking).
func allClosed(chs []chan struct{}) bool {
	for _, ch := range chs {
		select {
		case <-ch:
		default:
			return false
		}
	}
	return true
}

// merge fans the prompts' streams into one, renumbering choices as
// prompt*n + index (vLLM's numbering).
func merge(chans []<-chan engine.Output, n int) <-chan engine.Output {
	out := make(chan engine.Output, len(chans))
	var wg sync.WaitGroup
	for p, ch := range chans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range ch {
				o.Index += p * n
				out <- o
			}
		}()
	}
	go func() { wg.Wait(); close(out) }()
	return out
}

// abort cancels the engine request, waits for the stream to close (the
// engine has then freed its blocks) and releases the admission slots.
func (c *call) abort() {
	c.cancel(nil)
	c.drain()
	c.done()
}

func (c *call) drain() {
	for !c.closed {
		o, ok := <-c.ch
		if !ok {
			c.closed = true
			break
		}
		c.fold(&o)
	}
}

// done records metrics for every prompt, fills the request log's record
// and releases the admission slots.
func (c *call) done() {
	now := time.Now()
	c.logInfo()
	for i := range c.prompts {
		p := &c.prompts[i]
		if p.observed {
			continue
		}
		if p.end.IsZero() {
			p.end = now
		}
		if p.finish == "" || p.done < c.n {
			p.finish = engine.FinishAbort
		}
		p.observed = true
		maxGen := 0
		for _, sq := range c.seqs[i*c.n : (i+1)*c.n] {
			maxGen = max(maxGen, sq.completion)
		}
		c.s.metrics.ObserveRequest(metrics.Request{
			FinishReason: p.finish, PromptTokens: p.tokens, CompletionTokens: p.completion,
			Arrival: p.arrival, Scheduled: p.scheduled, FirstToken: p.first, End: p.end,
			N: c.n, MaxTokens: c.params.MaxTokens, MaxGenerationTokens: maxGen,
		})
	}
	c.stopEnd()
	c.cancel(nil)
	c.release()
}

// wantIDs says whether the request wants token ids in its choices.
func (c *call) wantIDs() bool { return c.info != nil && c.info.wantTokenIDs }

// logInfo totals the call for its request log line (once; later calls
// refresh it).
func (c *call) logInfo() {
	ri := c.info
	if ri == nil {
		return
	}
	ri.promptTokens, ri.completionTokens, ri.cachedTokens, ri.ttft = 0, 0, 0, 0
	var finishes []string
	for i := range c.prompts {
		p := &c.prompts[i]
		ri.promptTokens += p.tokens
		ri.completionTokens += p.completion
		ri.cachedTokens += p.cached
		if !p.first.IsZero() {
			if d := p.first.Sub(c.start); ri.ttft == 0 || d < ri.ttft {
				ri.ttft = max(d, time.Nanosecond)
			}
		}
		f := p.finish
		if f == "" || p.done < c.n {
			f = engine.FinishAbort
		}
		if !slices.Contains(finishes, f) {
			finishes = append(finishes, f)
		}
	}
	ri.finish = strings.Join(finishes, ",")
}

// fold applies one engine output to the call's state.
func (c *call) fold(o *engine.Output) {
	if o.Index < 0 || o.Index >= len(c.seqs) {
		c.s.log.Error("engine output index out of range", "index", o.Index, "request", o.RequestID)
		return
	}
	sq := &c.seqs[o.Index]
	p := &c.prompts[o.Index/c.n]
	t := o.Time
	if t.IsZero() {
		t = time.Now()
	}
	if !o.ArrivalTime.IsZero() {
		p.arrival = o.ArrivalTime
	}
	if p.scheduled.IsZero() {
		p.scheduled = o.ScheduledTime
	}
	if o.PromptTokens > 0 {
		p.tokens = o.PromptTokens
	}
	p.cached = max(p.cached, o.CachedTokens)
	if n := len(o.TokenIDs); n > 0 {
		if p.first.IsZero() {
			p.first = o.FirstToken
			if p.first.IsZero() {
				p.first = t
			}
		}
		if !sq.last.IsZero() {
			c.s.metrics.ObserveInterToken(t.Sub(sq.last))
		}
		sq.last = t
		p.completion += n
		sq.completion += n
	} else if o.CompletionTokens > sq.completion {
		// Engines without token ids (fakes) may still count tokens.
		p.completion += o.CompletionTokens - sq.completion
		sq.completion = o.CompletionTokens
	}
	if o.Err != nil && c.err == nil {
		c.err = o.Err
		c.cancel(o.Err) // the call's other prompts' engine requests end too
	}
	c.addText(sq, o.Text)
	if c.wantIDs() {
		sq.ids = append(sq.ids, o.TokenIDs...)
	}
	sq.lps = append(sq.lps, o.Logprobs...)
	sq.pending = true
	if o.FinishReason != "" && sq.finish == "" {
		sq.finish = o.FinishReason
		sq.stop = o.StopReason
		p.done++
		p.finish = o.FinishReason
		p.end = t
		c.finishText(sq)
	}
}

// next blocks for one output, then folds in every output already waiting:
// a client that falls behind gets fewer, larger events instead of a backlog.
func (c *call) next() {
	if c.closed {
		return
	}
	o, ok := <-c.ch
	if !ok {
		c.closed = true
		return
	}
	c.fold(&o)
	for {
		select {
		case o, ok := <-c.ch:
			if !ok {
				c.closed = true
				return
			}
			c.fold(&o)
		default:
			return
		}
	}
}

// errClientGone: the client left before the call ended; nothing is written.
var errClientGone = errors.New("server: client gone")

// collect runs a non-streaming call to the end. It returns the failure that
// ended it early (an engine error, the shutdown deadline), errClientGone
// when the client left, else nil.
func (c *call) collect() error {
	c.drain()
	if err := c.failure(); err != nil {
		return err
	}
	if c.ctx.Err() != nil && !c.finished() {
		return errClientGone
	}
	return nil
}

// writeCollectErr answers a non-streaming call that collect ended early
// (nothing when the client left).
func (s *Server) writeCollectErr(w http.ResponseWriter, err error) {
	if !errors.Is(err, errClientGone) {
		s.writeErr(w, err)
	}
}

// finished reports whether every sequence reached its own end (not an abort).
func (c *call) finished() bool {
	for i := range c.seqs {
		if f := c.seqs[i].finish; f == "" || f == engine.FinishAbort {
			return false
		}
	}
	return true
}

// failure is why the server ended the call early, if it did: an engine
// error, or the shutdown deadline (EndInFlight) before every sequence
// finished. Nil when the call ran to its end or the client left.
func (c *call) failure() error {
	if c.err != nil {
		return c.err
	}
	if c.ctx.Err() == nil {
		return nil
	}
	if cause := context.Cause(c.ctx); errors.Is(cause, ErrShutdownDeadline) && !c.finished() {
		return cause
	}
	return nil
}

// shownFinish is the finish reason and stop reason a stream shows for sq:
// none for a sequence the server's failure aborted (the stream ends with
// an error event instead of claiming an abort the client never asked for).
func shownFinish(sq *seqState, failed bool) (string, any) {
	if failed && sq.finish == engine.FinishAbort {
		return "", nil
	}
	return sq.finish, sq.stop
}

// appendEnd appends what ends a stream: an error event when the server cut
// the call short, else usage's events (when not nil); then [DONE].
func (c *call) appendEnd(e *sse, usage func()) {
	if err := c.failure(); err != nil {
		_, typ, msg, code := endError(err)
		b, _ := json.Marshal(openai.ErrorResponse{Error: openai.Error{Message: msg, Type: typ, Code: code}})
		e.event()
		e.buf = append(e.buf, b...)
		e.end()
	} else if usage != nil {
		usage()
	}
	e.buf = append(e.buf, "data: [DONE]\n\n"...)
}

// endError maps the errors that end a call early to an OpenAI error: the
// status, type, message and code; status 0 for any other error.
func endError(err error) (status int, typ, msg, code string) {
	switch {
	case errors.Is(err, ErrShutdownDeadline):
		return http.StatusServiceUnavailable, "service_unavailable_error",
			"the server is shutting down and the request did not finish within its shutdown timeout", "draining"
	case errors.Is(err, engine.ErrUnhealthy):
		return http.StatusServiceUnavailable, "service_unavailable_error",
			"the inference engine failed and must be restarted", "unhealthy"
	case errors.Is(err, engine.ErrStepFailed):
		return http.StatusInternalServerError, "server_error", "the inference engine failed while running this request", "engine_error"
	}
	return 0, "", "", ""
}

// usage totals the call.
func (c *call) usage() openai.Usage {
	var u openai.Usage
	cached := 0
	for _, p := range c.prompts {
		u.PromptTokens += p.tokens
		u.CompletionTokens += p.completion
		cached += p.cached
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	if cached > 0 {
		u.PromptTokensDetails = &openai.PromptTokensDetails{CachedTokens: cached}
	}
	return u
}

// sse writes Server-Sent Events, flushing once per batch of outputs.
type sse struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	buf  []byte
	gone bool
}

func startSSE(w http.ResponseWriter) *sse {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return &sse{w: w, rc: http.NewResponseController(w), buf: make([]byte, 0, 4096)}
}

// event starts a "data: " line in the buffer; end closes it.
func (e *sse) event() { e.buf = append(e.buf, "data: "...) }
func (e *sse) end()   { e.buf = append(e.buf, '\n', '\n') }

// flush sends the buffered events; after a write error the client is gone
// and further events are dropped.
func (e *sse) flush() error {
	if e.gone || len(e.buf) == 0 {
		e.buf = e.buf[:0]
		return nil
	}
	_, err := e.w.Write(e.buf)
	if err == nil {
		err = e.rc.Flush()
	}
	e.buf = e.buf[:0]
	if err != nil {
		e.gone = true
		return fmt.Errorf("server: client write: %w", err)
	}
	return nil
}

// stream runs the call to the end, calling emit after each batch of
// outputs to append events for the pending sequences. On a write failure
// (the client left, or stopped reading for StreamWriteTimeout) the engine
// request is cancelled and the stream drained.
func (c *call) stream(e *sse, emit func()) {
	emit()
	for {
		if err := e.flush(); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.s.log.Warn("client stopped reading: stream cut", "after", c.s.opts.StreamWriteTimeout, "request", c.id)
			}
			c.cancel(nil)
		}
		if c.closed {
			return
		}
		c.next()
		if !e.gone {
			emit()
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
