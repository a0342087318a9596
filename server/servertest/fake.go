// Package servertest provides a fake engine and a fake tokenizer for
// testing and benchmarking the HTTP layer without a model.
//
// The tokenizer is byte-level: token id b < 256 is the byte b, 256 is EOS.
// The engine "generates" by cycling through the prompt: sequence j's token
// i is prompt[(i+j) % len(prompt)], so a test knows the exact text.
package servertest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmserve/llmserve/engine"
)

// EOS is the fake tokenizer's end-of-sequence id.
const EOS = 256

// VocabSize of the fake tokenizer and engine.
const VocabSize = 257

// byteText and byteIDs are shared, read-only per-token values, so the fake
// engine costs no allocation per token (benchmarks measure the server).
var (
	byteText [VocabSize]string
	byteIDs  [VocabSize][]int
)

func init() {
	for i := range 256 {
		byteText[i] = string([]byte{byte(i)})
	}
	byteText[EOS] = "<eos>"
	for i := range byteIDs {
		byteIDs[i] = []int{i}
	}
}

// Tokenizer is a byte-level fake implementing server.Tokenizer.
type Tokenizer struct {
	NoChatTemplate bool
}

// Encode returns the bytes of text (addSpecial is ignored: no BOS).
func (Tokenizer) Encode(text string, addSpecial bool) []int {
	ids := make([]int, len(text))
	for i := 0; i < len(text); i++ {
		ids[i] = int(text[i])
	}
	return ids
}

// Decode joins the bytes; EOS is dropped when skipSpecial.
func (Tokenizer) Decode(ids []int, skipSpecial bool) string {
	var b strings.Builder
	for _, id := range ids {
		if id == EOS && skipSpecial {
			continue
		}
		b.WriteString(byteText[id])
	}
	return b.String()
}

// VocabSize is 257.
func (Tokenizer) VocabSize() int { return VocabSize }

// TokenText is the token's text.
func (Tokenizer) TokenText(id int) string {
	if id < 0 || id >= VocabSize {
		return ""
	}
	return byteText[id]
}

// TokenBytes is the byte of a byte token (structured outputs build their
// vocabulary from it); EOS has none.
func (Tokenizer) TokenBytes(id int) ([]byte, bool) {
	if id < 0 || id >= EOS {
		return nil, id == EOS
	}
	return []byte(byteText[id]), true
}

// IsSpecial reports whether id is EOS.
func (Tokenizer) IsSpecial(id int) bool { return id == EOS }

// EOSTokenIDs is [EOS].
func (Tokenizer) EOSTokenIDs() []int { return []int{EOS} }

// HasChatTemplate reports whether ApplyChatTemplate works.
func (t Tokenizer) HasChatTemplate() bool { return !t.NoChatTemplate }

// ApplyChatTemplate renders "<role>content\n" per message, then
// "<assistant>" when addGenerationPrompt.
func (t Tokenizer) ApplyChatTemplate(messages []map[string]any, addGenerationPrompt bool, extra map[string]any) (string, error) {
	if t.NoChatTemplate {
		return "", fmt.Errorf("no chat template")
	}
	var b strings.Builder
	for _, m := range messages {
		c, _ := m["content"].(string)
		fmt.Fprintf(&b, "<%s>%s\n", m["role"], c)
	}
	if addGenerationPrompt {
		b.WriteString("<assistant>")
	}
	return b.String(), nil
}

// Engine is a fake engine.Engine. Its zero value generates instantly.
type Engine struct {
	// Hold, when non-nil, is received from before every token: a test
	// paces generation by sending on it, or releases it by closing it.
	Hold chan struct{}
	// Slots, when non-nil, bounds running requests: a request waits
	// (counted as waiting) until it can send to Slots.
	Slots chan struct{}
	// ChanCap is the output channel's capacity (default 16).
	ChanCap int
	// KVBlocks is the fake cache size (default 1024); each running sequence holds one block.
	KVBlocks int
	// Panic makes Submit panic (tests panic recovery).
	Panic bool
	// Err, when set, ends every request after ErrAfter tokens of each
	// sequence with final events carrying it (Output.Err), as a failed
	// engine step does.
	Err      error
	ErrAfter int

	unhealthy atomic.Pointer[error]

	submitted, aborted, finished atomic.Int64
	running, waiting, blocks     atomic.Int64
	genTokens, promptTokens      atomic.Uint64

	mu   sync.Mutex
	reqs []*engine.Request
}

var (
	_ engine.Engine        = (*Engine)(nil)
	_ engine.HealthChecker = (*Engine)(nil)
)

// SetUnhealthy makes Health report err (nil: healthy again).
func (e *Engine) SetUnhealthy(err error) { e.unhealthy.Store(&err) }

// Health implements engine.HealthChecker.
func (e *Engine) Health() error {
	if p := e.unhealthy.Load(); p != nil {
		return *p
	}
	return nil
}

// Requests returns the requests submitted so far.
func (e *Engine) Requests() []*engine.Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*engine.Request(nil), e.reqs...)
}

// Submitted, Aborted and Finished count requests.
func (e *Engine) Submitted() int { return int(e.submitted.Load()) }

// Aborted counts requests that ended by cancellation.
func (e *Engine) Aborted() int { return int(e.aborted.Load()) }

// Finished counts requests whose stream was closed.
func (e *Engine) Finished() int { return int(e.finished.Load()) }

// BlocksInUse is the fake KV blocks held by running sequences.
func (e *Engine) BlocksInUse() int { return int(e.blocks.Load()) }

// WaitSubmitted waits until n requests were submitted or ctx ends.
func (e *Engine) WaitSubmitted(ctx context.Context, n int) error {
	for e.Submitted() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("servertest: %d of %d requests submitted: %w", e.Submitted(), n, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

func (e *Engine) totalBlocks() int {
	if e.KVBlocks > 0 {
		return e.KVBlocks
	}
	return 1024
}

// Stats reports the fake counters.
func (e *Engine) Stats() engine.Stats {
	total := e.totalBlocks()
	used := int(e.blocks.Load())
	return engine.Stats{
		Running: int(e.running.Load()), Waiting: int(e.waiting.Load()),
		KVBlocksTotal: total, KVBlocksFree: total - used, KVUsage: float64(used) / float64(total), BlockSize: 16,
		PromptTokens: e.promptTokens.Load(), GenerationTokens: e.genTokens.Load(),
		PrefixQueries: e.promptTokens.Load(),
	}
}

// Submit starts a fake generation.
func (e *Engine) Submit(ctx context.Context, req *engine.Request) (<-chan engine.Output, error) {
	if e.Panic {
		panic("servertest: engine panic")
	}
	if len(req.PromptIDs) == 0 {
		return nil, fmt.Errorf("%w: empty prompt", engine.ErrInvalidRequest)
	}
	for _, id := range req.PromptIDs {
		if id < 0 || id >= VocabSize {
			return nil, fmt.Errorf("%w: token id %d", engine.ErrInvalidRequest, id)
		}
	}
	e.mu.Lock()
	e.reqs = append(e.reqs, req)
	e.mu.Unlock()
	capacity := e.ChanCap
	if capacity <= 0 {
		capacity = 16
	}
	ch := make(chan engine.Output, capacity)
	e.waiting.Add(1)
	e.submitted.Add(1)
	go e.run(ctx, req, ch)
	return ch, nil
}

func (e *Engine) run(ctx context.Context, req *engine.Request, ch chan<- engine.Output) {
	defer e.finished.Add(1)
	defer close(ch)
	arrival := time.Now()
	n := max(req.Params.N, 1)
	prompt := req.PromptIDs
	finish := make([]string, n)
	counts := make([]int, n)
	end := func(err error) {
		for j := range n {
			if finish[j] == "" {
				ch <- engine.Output{RequestID: req.ID, Index: j, FinishReason: engine.FinishAbort, Err: err,
					PromptTokens: len(prompt), CompletionTokens: counts[j], ArrivalTime: arrival, Time: time.Now()}
			}
		}
	}
	abort := func() {
		e.aborted.Add(1)
		end(nil)
	}
	if e.Slots != nil {
		select {
		case e.Slots <- struct{}{}:
			defer func() { <-e.Slots }()
		case <-ctx.Done():
			e.waiting.Add(-1)
			abort()
			return
		}
	}
	e.waiting.Add(-1)
	e.running.Add(1)
	defer e.running.Add(-1)
	e.blocks.Add(int64(n))
	defer e.blocks.Add(-int64(n))
	e.promptTokens.Add(uint64(len(prompt)))
	scheduled := time.Now()
	if req.Scheduled != nil {
		close(req.Scheduled)
	}
	var first time.Time
	for i := 0; ; i++ {
		if e.Hold != nil {
			select {
			case <-e.Hold:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			abort()
			return
		}
		if e.Err != nil && i >= e.ErrAfter {
			end(e.Err)
			return
		}
		live := 0
		for j := range n {
			if finish[j] != "" {
				continue
			}
			id := prompt[(i+j)%len(prompt)]
			counts[j]++
			o := engine.Output{RequestID: req.ID, Index: j, Text: byteText[id], TokenIDs: byteIDs[id],
				PromptTokens: len(prompt), CompletionTokens: counts[j],
				ArrivalTime: arrival, ScheduledTime: scheduled}
			if req.Params.Logprobs >= 0 {
				o.Logprobs = []engine.TokenLogprob{fakeLogprob(id, req.Params.Logprobs)}
			}
			for _, st := range req.Params.StopTokenIDs {
				if st == id {
					finish[j] = engine.FinishStop
					o.StopReason = id
				}
			}
			if finish[j] == "" && counts[j] >= req.Params.MaxTokens {
				finish[j] = engine.FinishLength
			}
			o.FinishReason = finish[j]
			o.Time = time.Now()
			if first.IsZero() {
				first = o.Time
			}
			o.FirstToken = first
			e.genTokens.Add(1)
			select {
			case ch <- o:
			case <-ctx.Done():
				finish[j] = "" // not delivered: reported as aborted
				counts[j]--
				abort()
				return
			}
			if finish[j] == "" {
				live++
			}
		}
		if live == 0 {
			return
		}
	}
}

// fakeLogprob gives id logprob -0.25 and k alternatives below it.
func fakeLogprob(id, k int) engine.TokenLogprob {
	lp := engine.TokenLogprob{TokenID: id, Logprob: -0.25}
	for a := range k {
		alt := (id + a) % 256
		lp.Top = append(lp.Top, engine.TopLogprob{TokenID: alt, Logprob: -0.25 - float32(a)})
	}
	return lp
}
