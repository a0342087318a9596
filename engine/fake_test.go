package engine

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/sample"
	"github.com/llmserve/llmserve/tokenizer"
)

// fakeModel keeps its "KV cache" as the token id and position stored in
// each slot, and makes the logits at a position a hash of the tokens it
// reads back through the block table. Any block-table, prefix-cache or
// preemption bug that feeds a sequence the wrong KV changes its logits, and
// the outputs stop matching fakeRef.
type fakeModel struct {
	vocab int

	mu      sync.Mutex
	bs      int
	slots   []fakeSlot
	steps   []fakeStep
	hold    chan struct{} // when set, Forward waits until it is closed
	gate    chan struct{} // when set, each Forward takes a token from it first
	entered chan int      // when set, Forward reports its step number before the gate
	calls   int
	err     error   // returned by Forward when set
	errs    []error // returned by the next Forward calls, one each, before err
}

type fakeSlot struct {
	tok, pos int32
	ok       bool
}

// fakeStep records one Forward: each chunk's first token, first position
// and length.
type fakeStep struct {
	chunks []fakeChunk
	tokens int
}

type fakeChunk struct{ first, pos, n, block0 int }

func newFake(vocab int) *fakeModel { return &fakeModel{vocab: vocab} }

// newHeldFake's first steps wait until release is called, so that requests
// submitted one after the other start together.
func newHeldFake(vocab int) (f *fakeModel, release func()) {
	f = &fakeModel{vocab: vocab, hold: make(chan struct{})}
	return f, sync.OnceFunc(func() { close(f.hold) })
}

func (f *fakeModel) Config() *model.Config {
	return &model.Config{VocabSize: f.vocab, MaxPositionEmbeddings: 4096}
}
func (f *fakeModel) WeightBytes() int64     { return 0 }
func (f *fakeModel) KVBytesPerToken() int64 { return 8 }
func (f *fakeModel) Close() error           { return nil }

func (f *fakeModel) AllocateKV(numBlocks, blockSize int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bs = blockSize
	f.slots = make([]fakeSlot, numBlocks*blockSize)
	return nil
}

func (f *fakeModel) Forward(ctx context.Context, b *model.Batch, logits []float32) error {
	f.mu.Lock()
	n := f.calls
	f.calls++
	gate, entered, ferr, hold := f.gate, f.entered, f.err, f.hold
	if len(f.errs) > 0 {
		ferr, f.errs = f.errs[0], f.errs[1:]
	}
	f.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if entered != nil {
		select {
		case entered <- n:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if ferr != nil {
		return ferr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(logits) != len(b.LogitIndices)*f.vocab {
		return fmt.Errorf("fake: logits len %d for %d rows", len(logits), len(b.LogitIndices))
	}
	st := fakeStep{tokens: len(b.Tokens)}
	seqOf := make([]int, len(b.Tokens))
	next := 0
	for si, c := range b.Seqs {
		if c.Start != next || c.Len <= 0 {
			return fmt.Errorf("fake: chunk %d at %d len %d, expected start %d", si, c.Start, c.Len, next)
		}
		next = c.Start + c.Len
		st.chunks = append(st.chunks, fakeChunk{first: int(b.Tokens[c.Start]), pos: int(b.Positions[c.Start]), n: c.Len, block0: int(c.BlockTable[0])})
		for i := c.Start; i < c.Start+c.Len; i++ {
			seqOf[i] = si
			pos := int(b.Positions[i])
			if i > c.Start && pos != int(b.Positions[i-1])+1 {
				return fmt.Errorf("fake: positions not contiguous in chunk %d", si)
			}
			slot, err := f.slot(c.BlockTable, pos)
			if err != nil {
				return err
			}
			f.slots[slot] = fakeSlot{tok: b.Tokens[i], pos: int32(pos), ok: true}
		}
	}
	if next != len(b.Tokens) || len(b.Positions) != len(b.Tokens) {
		return fmt.Errorf("fake: chunks cover %d of %d tokens", next, len(b.Tokens))
	}
	f.steps = append(f.steps, st)
	hist := make([]int, 0, 64)
	for r, li := range b.LogitIndices {
		if r > 0 && li <= b.LogitIndices[r-1] {
			return fmt.Errorf("fake: logit indices not increasing")
		}
		c := b.Seqs[seqOf[li]]
		pos := int(b.Positions[li])
		hist = hist[:0]
		for p := 0; p <= pos; p++ {
			slot, err := f.slot(c.BlockTable, p)
			if err != nil {
				return err
			}
			s := f.slots[slot]
			if !s.ok || int(s.pos) != p {
				return fmt.Errorf("fake: position %d reads slot %d holding %+v", p, slot, s)
			}
			hist = append(hist, int(s.tok))
		}
		fakeLogits(hist, logits[r*f.vocab:(r+1)*f.vocab])
	}
	return nil
}

func (f *fakeModel) slot(table []int32, pos int) (int, error) {
	bi := pos / f.bs
	if bi >= len(table) {
		return 0, fmt.Errorf("fake: position %d beyond block table of %d blocks", pos, len(table))
	}
	b := int(table[bi])
	if b < 0 || (b+1)*f.bs > len(f.slots) {
		return 0, fmt.Errorf("fake: block id %d out of range", b)
	}
	return b*f.bs + pos%f.bs, nil
}

func (f *fakeModel) stepLog() []fakeStep {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeStep(nil), f.steps...)
}

// fakeLogits fills out with values in [-4, 4) hashed from the history.
func fakeLogits(hist []int, out []float32) {
	h := uint64(14695981039346656037)
	for _, t := range hist {
		h = (h ^ uint64(t)) * 1099511628211
	}
	for v := range out {
		x := mix64(h + uint64(v)*0x9e3779b97f4a7c15)
		out[v] = float32(x>>40)/float32(1<<24)*8 - 4
	}
}

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// fakeRef generates what a request should produce, one sequence at a time,
// from the fake's logits and an independent sampler: no batching, no cache.
func fakeRef(vocab int, prompt []int, p sample.Params, seed uint64, eos []int, maxModelLen int) (toks []int, finish string, stopReason any) {
	p.Normalize()
	smp := sample.NewSampler(vocab)
	st := sample.NewState(&p, seed, prompt, eos)
	hist := append([]int(nil), prompt...)
	logits := make([]float32, vocab)
	for {
		fakeLogits(hist, logits)
		tok := smp.Sample(st, logits)
		st.Accept(tok)
		hist = append(hist, tok)
		toks = append(toks, tok)
		n := len(toks)
		switch {
		case n >= p.MaxTokens || len(hist) >= maxModelLen:
			return toks, FinishLength, nil
		case n < p.MinTokens:
		case !p.IgnoreEOS && contains(eos, tok):
			return toks, FinishStop, nil
		case contains(p.StopTokenIDs, tok):
			return toks, FinishStop, tok
		}
	}
}

func contains(s []int, x int) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// fakeDetok spells token t as one or two copies of a letter.
type fakeDetok struct{}

func tokText(t int) string {
	return strings.Repeat(string(rune('a'+t%26)), 1+t/26%2)
}

func (fakeDetok) NewTextStream(prompt []int, skip bool) tokenizer.TextStream { return &fakeStream{} }

type fakeStream struct{}

func (*fakeStream) Add(id int) string { return tokText(id) }

func (*fakeStream) Flush() string { return "" }

// seqResult is one sequence's collected stream.
type seqResult struct {
	tokens   []int
	text     string
	finish   string
	stop     any
	events   int
	last     Output
	logprobs []TokenLogprob
}

// collect reads a stream to its end.
func collect(t testing.TB, ch <-chan Output, n int) []seqResult {
	t.Helper()
	res := make([]seqResult, n)
	timeout := time.After(60 * time.Second)
	for {
		select {
		case o, ok := <-ch:
			if !ok {
				for i := range res {
					if res[i].finish == "" {
						t.Errorf("sequence %d: stream closed without a finish reason", i)
					}
				}
				return res
			}
			r := &res[o.Index]
			if r.finish != "" {
				t.Errorf("sequence %d: event after finish %q", o.Index, r.finish)
			}
			r.tokens = append(r.tokens, o.TokenIDs...)
			r.text += o.Text
			r.finish, r.stop = o.FinishReason, o.StopReason
			r.events++
			r.last = o
			r.logprobs = append(r.logprobs, o.Logprobs...)
		case <-timeout:
			t.Fatal("stream did not end within 60s")
			return nil
		}
	}
}

// waitFor polls cond until it holds, failing after a generous deadline
// (no timing assertion: it only fails if the condition never comes).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
