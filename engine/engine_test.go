package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/sample"
	"github.com/llmserve/llmserve/tokenizer"
)

const fakeVocab = 64

func fakeOpts() Options {
	return Options{
		MaxNumSeqs:          32,
		MaxNumBatchedTokens: 64,
		MaxModelLen:         256,
		BlockSize:           4,
		NumBlocks:           256,
		EnablePrefixCaching: true,
	}
}

// startEngine runs an engine until the test ends, then checks that every
// block is back and the allocator is consistent.
func startEngine(t testing.TB, m model.Model, opts Options) (*Local, func()) {
	t.Helper()
	e, err := New(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			if err := e.kv.Check(); err != nil {
				t.Error(err)
			}
			if e.kv.NumFree() != e.kv.NumBlocks() {
				t.Errorf("%d of %d blocks free after shutdown", e.kv.NumFree(), e.kv.NumBlocks())
			}
		})
	}
	t.Cleanup(stop)
	return e, stop
}

func greedyParams(maxTokens int) sample.Params {
	p := sample.Defaults()
	p.Temperature = 0
	p.MaxTokens = maxTokens
	return p
}

func sampledParams(maxTokens int, seed int64) sample.Params {
	p := sample.Defaults()
	p.Temperature = 0.8
	p.TopP = 0.9
	p.TopK = 20
	p.MaxTokens = maxTokens
	p.Seed = &seed
	return p
}

func prompt(n, salt int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = int(mix64(uint64(salt*1000+i)) % fakeVocab)
	}
	return p
}

func submit(t testing.TB, e *Local, ctx context.Context, r *Request) <-chan Output {
	t.Helper()
	ch, err := e.Submit(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func checkRef(t testing.TB, name string, got seqResult, p sample.Params, seed uint64, pr []int, opts Options) {
	t.Helper()
	want, finish, stop := fakeRef(fakeVocab, pr, p, seed, opts.EOSTokenIDs, opts.MaxModelLen)
	if !slices.Equal(got.tokens, want) {
		t.Errorf("%s: tokens\n got %v\nwant %v", name, got.tokens, want)
	}
	if got.finish != finish || got.stop != stop {
		t.Errorf("%s: finish %q/%v, want %q/%v", name, got.finish, got.stop, finish, stop)
	}
}

func TestGreedyMatchesReference(t *testing.T) {
	e, _ := startEngine(t, newFake(fakeVocab), fakeOpts())
	pr := prompt(13, 1)
	p := greedyParams(20)
	res := collect(t, submit(t, e, context.Background(), &Request{ID: "a", PromptIDs: pr, Params: p}), 1)[0]
	checkRef(t, "greedy", res, p, 0, pr, fakeOpts())
	o := res.last
	if o.RequestID != "a" || o.PromptTokens != 13 || o.CompletionTokens != 20 {
		t.Errorf("last event %+v, %d events", o, res.events)
	}
	if o.ArrivalTime.IsZero() || o.ScheduledTime.Before(o.ArrivalTime) || o.FirstToken.Before(o.ScheduledTime) || o.Time.Before(o.FirstToken) {
		t.Errorf("timestamps out of order: %v %v %v %v", o.ArrivalTime, o.ScheduledTime, o.FirstToken, o.Time)
	}
	// Stats are published after the step that sent the last event.
	waitFor(t, "stats", func() bool { return e.Stats().GenerationTokens == 20 })
	if st := e.Stats(); st.PromptTokens != 13 || st.Running != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestBatchMatchesAlone runs 16 mixed requests at once (greedy and seeded,
// different lengths, small token budget so prefills are chunked) and checks
// each against its one-at-a-time reference.
func TestBatchMatchesAlone(t *testing.T) {
	for _, caching := range []bool{true, false} {
		t.Run(fmt.Sprintf("caching=%v", caching), func(t *testing.T) {
			opts := fakeOpts()
			opts.EnablePrefixCaching = caching
			opts.MaxNumBatchedTokens = 24
			f, release := newHeldFake(fakeVocab)
			e, _ := startEngine(t, f, opts)
			type job struct {
				pr []int
				p  sample.Params
				ch <-chan Output
			}
			var jobs []job
			for i := range 16 {
				pr := prompt(3+i*5, i%5) // shared prefixes across i%5
				p := greedyParams(5 + i*3)
				if i%2 == 1 {
					p = sampledParams(5+i*3, int64(i))
				}
				jobs = append(jobs, job{pr: pr, p: p})
			}
			for i := range jobs {
				jobs[i].ch = submit(t, e, context.Background(), &Request{ID: fmt.Sprint(i), PromptIDs: jobs[i].pr, Params: jobs[i].p})
			}
			release()
			for i, j := range jobs {
				res := collect(t, j.ch, 1)[0]
				var seed uint64
				if j.p.Seed != nil {
					seed = uint64(*j.p.Seed)
				}
				checkRef(t, fmt.Sprint("request ", i), res, j.p, seed, j.pr, opts)
			}
		})
	}
}

// TestChunkedPrefill checks that a long prompt is split to the token
// budget while a running decode gets a token in every step.
func TestChunkedPrefill(t *testing.T) {
	opts := fakeOpts()
	opts.MaxNumBatchedTokens = 8
	f := newFake(fakeVocab)
	f.gate = make(chan struct{})
	f.entered = make(chan int)
	e, _ := startEngine(t, f, opts)
	stepper := startStepper(t, f)
	prA := prompt(5, 1)
	chA := submit(t, e, context.Background(), &Request{ID: "a", PromptIDs: prA, Params: greedyParams(200)})
	stepper.step()
	<-chA // a is decoding
	// b arrives before the steps run freely: a, 200 tokens long, must still
	// be decoding through all of b's prefill however slowly b's submission
	// goes (under -race on a busy machine a once finished first).
	prB := prompt(50, 2)
	pB := greedyParams(3)
	chB := submit(t, e, context.Background(), &Request{ID: "b", PromptIDs: prB, Params: pB})
	stepper.run()
	resB := collect(t, chB, 1)[0]
	checkRef(t, "b", resB, pB, 0, prB, opts)
	collect(t, chA, 1)

	// Sequences are told apart by their first KV block.
	steps := f.stepLog()
	blockOf := func(first int) int {
		for _, st := range steps {
			for _, c := range st.chunks {
				if c.pos == 0 && c.first == first {
					return c.block0
				}
			}
		}
		t.Fatalf("no prefill starting with %d", first)
		return -1
	}
	a0, b0 := blockOf(prA[0]), blockOf(prB[0])
	var prefillSteps, computed int
	for _, st := range steps {
		if st.tokens > 8 {
			t.Fatalf("step of %d tokens over budget 8", st.tokens)
		}
		var hasA, hasB bool
		for _, c := range st.chunks {
			switch c.block0 {
			case a0:
				hasA = true
			case b0:
				if c.pos < len(prB) {
					hasB = true
					computed += c.n
				}
			}
		}
		if hasB {
			prefillSteps++
			if !hasA {
				t.Errorf("a prefill step of b had no decode of a: %+v", st)
			}
		}
	}
	if computed != 50 || prefillSteps != 8 {
		t.Errorf("b's 50-token prompt took %d steps (%d tokens), want 8 chunks of at most 7", prefillSteps, computed)
	}
}

// stepper drives a gated fake: step lets one Forward through, run lets
// all the following ones through.
type stepper struct {
	f    *fakeModel
	free chan struct{}
	once sync.Once
}

func startStepper(t testing.TB, f *fakeModel) *stepper {
	s := &stepper{f: f, free: make(chan struct{})}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		<-s.free
		for {
			select {
			case <-f.entered:
				f.gate <- struct{}{}
			case <-done:
				return
			}
		}
	}()
	return s
}

func (s *stepper) step() {
	<-s.f.entered
	s.f.gate <- struct{}{}
}

func (s *stepper) run() { s.once.Do(func() { close(s.free) }) }

// TestSchedulingOrder: with one running slot, queued requests run by
// priority (lower first), then arrival.
func TestSchedulingOrder(t *testing.T) {
	opts := fakeOpts()
	opts.MaxNumSeqs = 1
	f := newFake(fakeVocab)
	f.gate = make(chan struct{})
	f.entered = make(chan int)
	e, _ := startEngine(t, f, opts)
	first := func(id int) []int { return append([]int{id}, prompt(3, id)...) }
	chA := submit(t, e, context.Background(), &Request{ID: "a", PromptIDs: first(10), Params: greedyParams(2)})
	<-f.entered // a's prefill is in Forward
	type q struct {
		id, prio int
	}
	queued := []q{{11, 5}, {12, 0}, {13, -1}, {14, 0}, {15, 5}}
	var chans []<-chan Output
	for _, x := range queued {
		chans = append(chans, submit(t, e, context.Background(), &Request{ID: fmt.Sprint(x.id), PromptIDs: first(x.id), Params: greedyParams(2), Priority: x.prio}))
	}
	f.mu.Lock()
	f.entered = nil
	f.mu.Unlock()
	close(f.gate)
	collect(t, chA, 1)
	for _, ch := range chans {
		collect(t, ch, 1)
	}
	var order []int
	for _, st := range f.stepLog() {
		for _, c := range st.chunks {
			if c.pos == 0 {
				order = append(order, c.first)
			}
		}
	}
	want := []int{10, 13, 12, 14, 11, 15}
	if !slices.Equal(order, want) {
		t.Errorf("admission order %v, want %v", order, want)
	}
}

// TestPreemptionResume: a KV cache too small for both requests forces
// preemption; outputs are the same as without it.
func TestPreemptionResume(t *testing.T) {
	for _, caching := range []bool{true, false} {
		t.Run(fmt.Sprintf("caching=%v", caching), func(t *testing.T) {
			opts := fakeOpts()
			opts.EnablePrefixCaching = caching
			opts.MaxModelLen = 64
			opts.NumBlocks = 16 // 64 tokens
			f, release := newHeldFake(fakeVocab)
			e, _ := startEngine(t, f, opts)
			prs := [][]int{prompt(8, 1), prompt(10, 2), prompt(6, 3)}
			ps := []sample.Params{greedyParams(40), sampledParams(40, 7), greedyParams(30)}
			var chans []<-chan Output
			for i := range prs {
				chans = append(chans, submit(t, e, context.Background(), &Request{ID: fmt.Sprint(i), PromptIDs: prs[i], Params: ps[i]}))
			}
			release()
			for i, ch := range chans {
				var seed uint64
				if ps[i].Seed != nil {
					seed = uint64(*ps[i].Seed)
				}
				checkRef(t, fmt.Sprint("request ", i), collect(t, ch, 1)[0], ps[i], seed, prs[i], opts)
			}
			if e.Stats().Preemptions == 0 {
				t.Error("no preemption happened; the test does not test it")
			}
		})
	}
}

// TestPreemptsLowestPriorityLatest checks the victim choice: b has the
// lowest priority, and a and c together fit.
func TestPreemptsLowestPriorityLatest(t *testing.T) {
	opts := fakeOpts()
	opts.MaxModelLen = 64
	opts.NumBlocks = 32 // each sequence grows to 14 blocks
	opts.EnablePrefixCaching = false
	f, release := newHeldFake(fakeVocab)
	e, _ := startEngine(t, f, opts)
	prs := [][]int{prompt(4, 1), prompt(4, 2), prompt(4, 3)}
	var chs []<-chan Output
	for i, prio := range []int{0, 1, 0} {
		chs = append(chs, submit(t, e, context.Background(), &Request{ID: fmt.Sprint(i), PromptIDs: prs[i], Params: greedyParams(50), Priority: prio}))
	}
	release()
	for i, ch := range chs {
		checkRef(t, fmt.Sprint(i), collect(t, ch, 1)[0], greedyParams(50), 0, prs[i], opts)
	}
	if e.Stats().Preemptions == 0 {
		t.Fatal("no preemption")
	}
	recomputed := map[int]bool{}
	for _, st := range f.stepLog() {
		for _, c := range st.chunks {
			if c.pos == 0 && c.n > 4 { // a prompt with generated tokens: a resume
				recomputed[c.first] = true
			}
		}
	}
	if !recomputed[prs[1][0]] || recomputed[prs[0][0]] || recomputed[prs[2][0]] {
		t.Errorf("resumed %v; want only b (%d)", recomputed, prs[1][0])
	}
}

func TestPrefixCacheHitAndEviction(t *testing.T) {
	opts := fakeOpts()
	opts.NumBlocks = 64 // 256 tokens
	f := newFake(fakeVocab)
	e, _ := startEngine(t, f, opts)
	shared := prompt(32, 9)
	run := func(pr []int, max int) seqResult {
		p := greedyParams(max)
		r := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: p}), 1)[0]
		checkRef(t, "prefix", r, p, 0, pr, opts)
		return r
	}
	run(shared, 4)
	b := append(slices.Clone(shared), 1, 2, 3)
	r := run(b, 4)
	if r.last.CachedTokens != 32 {
		t.Errorf("cached tokens %d, want 32", r.last.CachedTokens)
	}
	st := e.Stats()
	if st.PrefixHits != 32 || st.PrefixQueries != 32+35 {
		t.Errorf("prefix stats %d/%d, want 32/67", st.PrefixHits, st.PrefixQueries)
	}
	// b's first step computed only its 3 new tokens.
	steps := f.stepLog()
	var sawSuffix bool
	for _, s := range steps {
		for _, c := range s.chunks {
			if c.pos == 32 && c.n == 3 {
				sawSuffix = true
			}
			if c.pos == 0 && c.first == shared[0] && len(steps) > 0 && c.n == 35 {
				t.Error("b recomputed the cached prefix")
			}
		}
	}
	if !sawSuffix {
		t.Error("no 3-token step at position 32")
	}
	// Identical prompt: all but the last block's worth is reused, the
	// last token is recomputed for its logits.
	if r := run(shared, 2); r.last.CachedTokens != 28 {
		t.Errorf("identical prompt cached %d, want 28", r.last.CachedTokens)
	}
	// Fill the cache with other prompts: the shared prefix, least
	// recently used, goes first.
	for i := range 6 {
		run(prompt(60, 100+i), 3)
	}
	if r := run(b, 4); r.last.CachedTokens != 0 {
		t.Errorf("after eviction cached %d, want 0", r.last.CachedTokens)
	}
	_, _, ev := e.kv.PrefixStats()
	if ev == 0 {
		t.Error("no evictions counted")
	}
}

func TestPrefixCachingOff(t *testing.T) {
	opts := fakeOpts()
	opts.EnablePrefixCaching = false
	e, _ := startEngine(t, newFake(fakeVocab), opts)
	pr := prompt(20, 1)
	for range 2 {
		r := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: greedyParams(3)}), 1)[0]
		if r.last.CachedTokens != 0 {
			t.Errorf("cached %d with caching off", r.last.CachedTokens)
		}
	}
	if st := e.Stats(); st.PrefixQueries != 0 {
		t.Errorf("queries %d with caching off", st.PrefixQueries)
	}
}

// TestAbortInEveryState cancels requests while waiting, in chunked prefill
// and in decode; each ends with "abort" and its blocks come back.
func TestAbortInEveryState(t *testing.T) {
	opts := fakeOpts()
	opts.MaxNumSeqs = 2
	opts.MaxNumBatchedTokens = 4
	f := newFake(fakeVocab)
	f.gate = make(chan struct{})
	f.entered = make(chan int)
	e, _ := startEngine(t, f, opts)
	stepper := startStepper(t, f)
	step := stepper.step

	// Decode: a runs; after its first token is out, cancel it.
	ctxA, cancelA := context.WithCancel(context.Background())
	chA := submit(t, e, ctxA, &Request{ID: "a", PromptIDs: prompt(3, 1), Params: greedyParams(100)})
	step()
	if o := <-chA; o.FinishReason != "" || len(o.TokenIDs) != 1 {
		t.Fatalf("a's first event %+v", o)
	}
	// Prefill: b has a 40-token prompt, 4 tokens a step (a takes one).
	ctxB, cancelB := context.WithCancel(context.Background())
	chB := submit(t, e, ctxB, &Request{ID: "b", PromptIDs: prompt(40, 2), Params: greedyParams(5)})
	step()
	step()
	// Waiting: c can't run while a and b hold both seats.
	ctxC, cancelC := context.WithCancel(context.Background())
	chC := submit(t, e, ctxC, &Request{ID: "c", PromptIDs: prompt(5, 3), Params: greedyParams(5)})
	step()
	<-f.entered // the next step is built and waits in Forward
	if st := e.Stats(); st.Running != 2 || st.Waiting != 1 {
		t.Fatalf("stats %+v, want 2 running 1 waiting", st)
	}
	if st := e.Stats(); st.KVBlocksFree == st.KVBlocksTotal {
		t.Fatal("no blocks in use")
	}
	cancelC()
	cancelB()
	cancelA()
	// Once the cancellations are queued, let the loop go on: they apply
	// before its next step.
	waitFor(t, "the cancellations", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.abortHooks == 3
	})
	f.gate <- struct{}{}
	stepper.run()
	for name, ch := range map[string]<-chan Output{"a": chA, "b": chB, "c": chC} {
		r := collect(t, ch, 1)[0]
		if r.finish != FinishAbort {
			t.Errorf("%s finished %q", name, r.finish)
		}
		if name == "b" && len(r.tokens) != 0 {
			t.Errorf("b produced tokens in prefill: %v", r.tokens)
		}
	}
	waitFor(t, "blocks freed", func() bool {
		st := e.Stats()
		return st.KVBlocksFree == st.KVBlocksTotal && st.Running == 0 && st.Waiting == 0
	})
	for _, st := range f.stepLog() {
		for _, c := range st.chunks {
			if c.first == prompt(5, 3)[0] && c.pos == 0 {
				t.Error("c was computed")
			}
		}
	}
	// The engine still works.
	pr := prompt(7, 4)
	checkRef(t, "after aborts", collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: greedyParams(5)}), 1)[0], greedyParams(5), 0, pr, opts)
}

// TestAbortN cancels an n=3 request before it is submitted; its first
// step is held until the cancellation is queued, so every sequence
// (created by the fork in that step or not) ends with "abort".
func TestAbortN(t *testing.T) {
	f := newFake(fakeVocab)
	f.gate = make(chan struct{})
	f.entered = make(chan int)
	e, _ := startEngine(t, f, fakeOpts())
	stepper := startStepper(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := greedyParams(10)
	p.N = 3
	ch := submit(t, e, ctx, &Request{PromptIDs: prompt(5, 1), Params: p})
	waitFor(t, "the cancellation", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.abortHooks == 1
	})
	stepper.run()
	res := collect(t, ch, 3)
	for i, r := range res {
		if r.finish != FinishAbort || len(r.tokens) > 1 {
			t.Errorf("seq %d: %q after %d tokens", i, r.finish, len(r.tokens))
		}
	}
}

// TestN checks n>1: each sequence is the seeded reference with seed+i,
// and the prompt's full blocks are computed once (fork, caching off).
func TestN(t *testing.T) {
	opts := fakeOpts()
	opts.EnablePrefixCaching = false
	f := newFake(fakeVocab)
	e, _ := startEngine(t, f, opts)
	pr := prompt(18, 5) // 4 full blocks + 2
	p := sampledParams(12, 100)
	p.Temperature = 1.5 // make the sequences differ
	p.TopK = 0
	p.TopP = 1
	p.N = 4
	res := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: p}), 4)
	distinct := map[string]bool{}
	for i, r := range res {
		checkRef(t, fmt.Sprint("seq ", i), r, p, 100+uint64(i), pr, opts)
		distinct[fmt.Sprint(r.tokens)] = true
	}
	if len(distinct) < 2 {
		t.Error("all n sequences are identical")
	}
	// Token slots computed at prompt positions < 16: once each.
	computed := map[int]int{}
	for _, st := range f.stepLog() {
		for _, c := range st.chunks {
			for q := c.pos; q < c.pos+c.n && q < 16; q++ {
				computed[q]++
			}
		}
	}
	for q := range 16 {
		if computed[q] != 1 {
			t.Errorf("prompt position %d computed %d times", q, computed[q])
		}
	}
}

func TestStopConditions(t *testing.T) {
	opts := fakeOpts()
	opts.Detokenizer = fakeDetok{}
	pr := prompt(9, 3)
	ref, _, _ := fakeRef(fakeVocab, pr, greedyParams(30), 0, nil, 256)
	refText := ""
	var ends []int // text offset after each token
	for _, tk := range ref {
		refText += tokText(tk)
		ends = append(ends, len(refText))
	}
	// A stop string spanning the boundary between tokens 5 and 6.
	stopStr := refText[ends[4]-1 : ends[5]+1]
	t.Run("stop string", func(t *testing.T) {
		e, _ := startEngine(t, newFake(fakeVocab), opts)
		// A short list, and a long one (its automaton past the complete
		// transition table's budget) with the stop string last.
		long := make([]string, 0, 20001)
		for i := range 20000 {
			long = append(long, fmt.Sprintf("\x00%08x never %d", uint32(i)*2654435761, i))
		}
		if newStopMatcher(append(long, stopStr)).delta != nil {
			t.Fatal("the long list's automaton has a complete transition table")
		}
		for _, stops := range [][]string{{"zzzzzzz", stopStr}, append(long, stopStr)} {
			p := greedyParams(30)
			p.Stop = stops
			ch := submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: p})
			res := seqResult{}
			for o := range ch {
				res.text += o.Text
				res.tokens = append(res.tokens, o.TokenIDs...)
				res.finish, res.stop = o.FinishReason, o.StopReason
			}
			pos := strings.Index(refText, stopStr)
			k := 0
			for ends[k] < pos+len(stopStr) {
				k++
			}
			if res.text != refText[:pos] {
				t.Errorf("%d stops: text %q, want %q", len(stops), res.text, refText[:pos])
			}
			if res.finish != FinishStop || res.stop != stopStr {
				t.Errorf("%d stops: finish %q %v", len(stops), res.finish, res.stop)
			}
			if !slices.Equal(res.tokens, ref[:k+1]) {
				t.Errorf("%d stops: tokens %v want %v", len(stops), res.tokens, ref[:k+1])
			}
		}
	})
	t.Run("stop token", func(t *testing.T) {
		e, _ := startEngine(t, newFake(fakeVocab), opts)
		p := greedyParams(30)
		k := 7
		for slices.Index(ref, ref[k]) != k {
			k++
		}
		p.StopTokenIDs = []int{ref[k]}
		r := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: p}), 1)[0]
		if !slices.Equal(r.tokens, ref[:k+1]) || r.finish != FinishStop || r.stop != ref[k] {
			t.Errorf("tokens %v finish %q %v, want %v", r.tokens, r.finish, r.stop, ref[:k+1])
		}
		if r.text != refText[:ends[k-1]] {
			t.Errorf("text %q includes the stop token's text", r.text)
		}
		// min_tokens beyond k: the stop token is suppressed, so the output changes.
		p.MinTokens = k + 2
		r = collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: p}), 1)[0]
		if len(r.tokens) < k+2 {
			t.Errorf("min_tokens: stopped after %d", len(r.tokens))
		}
		checkRef(t, "min_tokens", r, p, 0, pr, opts)
	})
	t.Run("eos", func(t *testing.T) {
		o := opts
		k := 4
		for slices.Index(ref, ref[k]) != k {
			k++
		}
		o.EOSTokenIDs = []int{ref[k]}
		e, _ := startEngine(t, newFake(fakeVocab), o)
		p := greedyParams(30)
		r := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: p}), 1)[0]
		if len(r.tokens) != k+1 || r.finish != FinishStop || r.stop != nil {
			t.Errorf("eos: %d tokens, finish %q %v", len(r.tokens), r.finish, r.stop)
		}
		p.IgnoreEOS = true
		r = collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: p}), 1)[0]
		if !slices.Equal(r.tokens, ref) || r.finish != FinishLength {
			t.Errorf("ignore_eos: %d tokens, finish %q", len(r.tokens), r.finish)
		}
	})
	t.Run("max model len", func(t *testing.T) {
		o := opts
		o.MaxModelLen = 20
		o.NumBlocks = 5
		e, _ := startEngine(t, newFake(fakeVocab), o)
		r := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: greedyParams(100)}), 1)[0]
		if len(r.tokens) != 20-len(pr) || r.finish != FinishLength {
			t.Errorf("%d tokens finish %q", len(r.tokens), r.finish)
		}
		if _, err := e.Submit(context.Background(), &Request{PromptIDs: prompt(21, 1), Params: greedyParams(1)}); !errors.Is(err, ErrTooLong) {
			t.Errorf("21-token prompt: %v", err)
		}
	})
}

func TestLogprobs(t *testing.T) {
	e, _ := startEngine(t, newFake(fakeVocab), fakeOpts())
	pr := prompt(6, 2)
	p := greedyParams(5)
	p.Logprobs = 3
	r := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: p}), 1)[0]
	if len(r.logprobs) != 5 {
		t.Fatalf("%d logprobs", len(r.logprobs))
	}
	hist := slices.Clone(pr)
	logits := make([]float32, fakeVocab)
	for i, lp := range r.logprobs {
		fakeLogits(hist, logits)
		mx := slices.Max(logits)
		var sum float64
		for _, x := range logits {
			sum += math.Exp(float64(x - mx))
		}
		want := float64(logits[lp.TokenID]-mx) - math.Log(sum)
		if lp.TokenID != r.tokens[i] || math.Abs(float64(lp.Logprob)-want) > 1e-5 {
			t.Errorf("step %d: %+v, want token %d logprob %v", i, lp, r.tokens[i], want)
		}
		if len(lp.Top) != 3 || lp.Top[0].TokenID != lp.TokenID || lp.Top[0].Logprob < lp.Top[1].Logprob {
			t.Errorf("step %d top %+v", i, lp.Top)
		}
		hist = append(hist, r.tokens[i])
	}
}

func TestSubmitErrors(t *testing.T) {
	e, stop := startEngine(t, newFake(fakeVocab), fakeOpts())
	bad := []*Request{
		nil,
		{PromptIDs: nil, Params: greedyParams(1)},
		{PromptIDs: []int{fakeVocab}, Params: greedyParams(1)},
		{PromptIDs: []int{1}, Params: sample.Params{MaxTokens: 0}},
		{PromptIDs: []int{1}, Params: func() sample.Params { p := greedyParams(1); p.Stop = []string{"x"}; return p }()},
		{PromptIDs: []int{1}, Params: func() sample.Params { p := greedyParams(1); p.N = 33; return p }()},
		{PromptIDs: []int{1}, Params: func() sample.Params { p := greedyParams(1); p.Logprobs = 21; return p }()},
	}
	for i, r := range bad {
		if _, err := e.Submit(context.Background(), r); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("case %d: %v", i, err)
		}
	}
	if _, err := e.Submit(context.Background(), &Request{PromptIDs: prompt(257, 1), Params: greedyParams(1)}); !errors.Is(err, ErrTooLong) {
		t.Errorf("too long: %v", err)
	}
	// Zero-valued optional fields are fine.
	r := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: []int{1, 2}, Params: sample.Params{MaxTokens: 2, Logprobs: -1}}), 1)[0]
	if len(r.tokens) != 2 {
		t.Errorf("zero params: %v", r.tokens)
	}
	stop()
	if _, err := e.Submit(context.Background(), &Request{PromptIDs: []int{1}, Params: greedyParams(1)}); !errors.Is(err, ErrClosed) {
		t.Errorf("after Run: %v", err)
	}
}

func TestBlocksForMemory(t *testing.T) {
	if n := BlocksForMemory(1<<30, 12288, 16); n != 5461 {
		t.Errorf("1 GiB at 12 KiB/token in 16-token blocks: %d", n)
	}
	if n := BlocksForMemory(0, 1, 16); n != 0 {
		t.Errorf("no memory: %d", n)
	}
}

func TestNewErrors(t *testing.T) {
	o := fakeOpts()
	o.NumBlocks = 10 // 40 tokens < max model len 256
	if _, err := New(newFake(fakeVocab), o); err == nil {
		t.Error("KV cache smaller than one sequence accepted")
	}
}

// TestShutdownAbortsAll: cancelling Run's context ends every stream.
func TestShutdownAbortsAll(t *testing.T) {
	opts := fakeOpts()
	opts.MaxNumSeqs = 2
	e, stop := startEngine(t, newFake(fakeVocab), opts)
	var chans []<-chan Output
	for i := range 6 {
		chans = append(chans, submit(t, e, context.Background(), &Request{PromptIDs: prompt(5, i), Params: greedyParams(200)}))
	}
	<-chans[0]
	stop()
	for i, ch := range chans {
		r := collect(t, ch, 1)[0]
		if r.finish != FinishAbort && r.finish != FinishLength {
			t.Errorf("request %d: %q", i, r.finish)
		}
	}
}

// TestSlowConsumer: a consumer that reads nothing until the end gets every
// token, coalesced, and the engine did not wait for it.
func TestSlowConsumer(t *testing.T) {
	e, _ := startEngine(t, newFake(fakeVocab), fakeOpts())
	pr := prompt(4, 4)
	p := greedyParams(150)
	ch := submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: p})
	// Another request completes meanwhile: the engine is not blocked.
	pr2 := prompt(4, 5)
	checkRef(t, "other", collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr2, Params: greedyParams(100)}), 1)[0], greedyParams(100), 0, pr2, fakeOpts())
	waitFor(t, "slow request done", func() bool { return e.Stats().GenerationTokens == 250 })
	r := collect(t, ch, 1)[0]
	checkRef(t, "slow", r, p, 0, pr, fakeOpts())
	if r.events >= 150 {
		t.Errorf("%d events: nothing was coalesced", r.events)
	}
}

// TestStepFailureFailsItsRequests: a failed step ends its requests with an
// error (not a plain abort the server would answer 200 to); the engine
// stays healthy and serves the next request.
func TestStepFailureFailsItsRequests(t *testing.T) {
	f := newFake(fakeVocab)
	boom := errors.New("out of memory")
	f.errs = []error{boom}
	e, _ := startEngine(t, f, fakeOpts())
	p := sampledParams(3, 1)
	p.N = 2
	r := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: prompt(4, 1), Params: p}), 2)
	for i, sq := range r {
		if sq.finish != FinishAbort || !errors.Is(sq.last.Err, ErrStepFailed) || !errors.Is(sq.last.Err, boom) {
			t.Errorf("sequence %d: finish %q err %v", i, sq.finish, sq.last.Err)
		}
	}
	if err := e.Health(); err != nil {
		t.Fatalf("one failed step made the engine unhealthy: %v", err)
	}
	pr := prompt(4, 2)
	got := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: greedyParams(5)}), 1)[0]
	checkRef(t, "after the failure", got, greedyParams(5), 0, pr, fakeOpts())
	if got.last.Err != nil {
		t.Fatal(got.last.Err)
	}
}

// TestStickyFailureUnhealthy: an unrecoverable device error fails the step's
// requests and every other one, and the engine refuses work from then on.
func TestStickyFailureUnhealthy(t *testing.T) {
	f, release := newHeldFake(fakeVocab)
	f.err = fmt.Errorf("cuLaunchKernel: illegal address: %w", ml.ErrDeviceLost)
	opts := fakeOpts()
	opts.MaxNumSeqs = 1 // the second request waits
	e, _ := startEngine(t, f, opts)
	a := submit(t, e, context.Background(), &Request{PromptIDs: prompt(4, 1), Params: greedyParams(5)})
	b := submit(t, e, context.Background(), &Request{PromptIDs: prompt(4, 2), Params: greedyParams(5)})
	release()
	ra, rb := collect(t, a, 1)[0], collect(t, b, 1)[0]
	if !errors.Is(ra.last.Err, ErrStepFailed) || !errors.Is(ra.last.Err, ml.ErrDeviceLost) {
		t.Errorf("request in the step: %q %v", ra.finish, ra.last.Err)
	}
	if rb.finish != FinishAbort || !errors.Is(rb.last.Err, ErrUnhealthy) {
		t.Errorf("waiting request: %q %v", rb.finish, rb.last.Err)
	}
	if err := e.Health(); !errors.Is(err, ErrUnhealthy) || !errors.Is(err, ml.ErrDeviceLost) {
		t.Fatalf("health %v", err)
	}
	if _, err := e.Submit(context.Background(), &Request{PromptIDs: prompt(4, 3), Params: greedyParams(5)}); !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("submit after a sticky error: %v", err)
	}
	// Stats is the snapshot the engine publishes after ending the requests,
	// which can trail their final events.
	waitFor(t, "no request or KV block left after the failure", func() bool {
		st := e.Stats()
		return st.Running == 0 && st.Waiting == 0 && st.KVBlocksFree == st.KVBlocksTotal
	})
}

// TestRepeatedStepFailuresUnhealthy: errors the backend does not call
// unrecoverable still turn the engine unhealthy after MaxStepFailures steps
// in a row.
func TestRepeatedStepFailuresUnhealthy(t *testing.T) {
	f := newFake(fakeVocab)
	f.err = errors.New("CUBLAS_STATUS_EXECUTION_FAILED")
	opts := fakeOpts()
	opts.MaxStepFailures = 2
	e, _ := startEngine(t, f, opts)
	for i := range 2 {
		if err := e.Health(); err != nil {
			t.Fatalf("unhealthy after %d failures: %v", i, err)
		}
		r := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: prompt(4, i), Params: greedyParams(3)}), 1)[0]
		if !errors.Is(r.last.Err, ErrStepFailed) {
			t.Fatalf("request %d: %q %v", i, r.finish, r.last.Err)
		}
	}
	if err := e.Health(); !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("health after 2 failures: %v", err)
	}
}

// A cancelled request's final event carries no error: only engine failures do.
func TestCancelHasNoErr(t *testing.T) {
	e, _ := startEngine(t, newFake(fakeVocab), fakeOpts())
	ctx, cancel := context.WithCancel(context.Background())
	ch := submit(t, e, ctx, &Request{PromptIDs: prompt(4, 1), Params: greedyParams(200)})
	<-ch
	cancel()
	r := collect(t, ch, 1)[0]
	if r.last.Err != nil {
		t.Fatalf("cancelled: %q %v", r.finish, r.last.Err)
	}
}

// TestStressFake: 200 concurrent requests of random lengths, some
// cancelled at random moments, on a KV cache small enough to force
// preemption.
func TestStressFake(t *testing.T) {
	opts := fakeOpts()
	opts.MaxModelLen = 128
	opts.NumBlocks = 48 // 192 tokens for up to 32 sequences
	opts.MaxNumBatchedTokens = 32
	f, release := newHeldFake(fakeVocab)
	stress(t, f, release, opts, fakeVocab, 200, func(t *testing.T, i int, pr []int, p sample.Params, seed uint64, r seqResult) {
		checkRef(t, fmt.Sprint("request ", i), r, p, seed, pr, opts)
	})
}

// stress runs n requests at once against m and checks finish reasons,
// that the allocator is full again and that no goroutine is left.
func stress(t *testing.T, m model.Model, release func(), opts Options, vocab, n int, check func(t *testing.T, i int, pr []int, p sample.Params, seed uint64, r seqResult)) {
	before := runtime.NumGoroutine()
	e, stop := startEngine(t, m, opts)
	rng := rand.New(rand.NewPCG(77, 78))
	type job struct {
		pr        []int
		p         sample.Params
		cancelAt  int // cancel after this many events; -1 never
		seed      uint64
		cancelled bool
		res       seqResult
	}
	jobs := make([]*job, n)
	for i := range jobs {
		pr := make([]int, 1+rng.IntN(60))
		for k := range pr {
			pr[k] = rng.IntN(vocab)
		}
		if rng.IntN(4) == 0 && i > 0 { // shared prefixes
			pr = append(slices.Clone(jobs[rng.IntN(i)].pr), pr[:min(rng.IntN(8), len(pr))]...)
			pr = pr[:min(len(pr), 100)]
		}
		p := greedyParams(1 + rng.IntN(40))
		j := &job{pr: pr, p: p, cancelAt: -1}
		if rng.IntN(2) == 0 {
			j.p = sampledParams(p.MaxTokens, int64(i))
			j.seed = uint64(i)
		}
		if rng.IntN(4) == 0 {
			j.cancelAt = rng.IntN(j.p.MaxTokens + 1)
		}
		jobs[i] = j
	}
	var wg, submitted sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		submitted.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ch, err := e.Submit(ctx, &Request{ID: fmt.Sprint(i), PromptIDs: j.pr, Params: j.p})
			submitted.Done()
			if err != nil {
				t.Error(err)
				return
			}
			if j.cancelAt == 0 {
				cancel()
				j.cancelled = true
			}
			for o := range ch {
				j.res.tokens = append(j.res.tokens, o.TokenIDs...)
				j.res.finish, j.res.stop = o.FinishReason, o.StopReason
				j.res.events++
				if j.res.events == j.cancelAt {
					cancel()
					j.cancelled = true
				}
			}
		}()
	}
	submitted.Wait() // all queued: start stepping
	release()
	wg.Wait()
	var aborted int
	for i, j := range jobs {
		switch {
		case j.res.finish == FinishAbort:
			aborted++
			if !j.cancelled {
				t.Errorf("request %d aborted without cancellation", i)
			}
		case j.res.finish == "":
			t.Errorf("request %d: no finish reason", i)
		default:
			check(t, i, j.pr, j.p, j.seed, j.res)
		}
	}
	st := e.Stats()
	t.Logf("%d requests, %d aborted, %d preemptions, prefix hits %d/%d tokens", n, aborted, st.Preemptions, st.PrefixHits, st.PrefixQueries)
	if st.Preemptions == 0 {
		t.Error("no preemption: the KV cache was not small enough to test it")
	}
	if aborted == 0 {
		t.Error("nothing was aborted")
	}
	waitFor(t, "all blocks free", func() bool {
		s := e.Stats()
		return s.KVBlocksFree == s.KVBlocksTotal && s.Running == 0 && s.Waiting == 0
	})
	stop()
	deadline := time.Now().Add(20 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}

// nullModel returns constant logits at no cost: it measures the engine's
// own per-step overhead.
type nullModel struct{ fakeModel }

func (n *nullModel) Forward(ctx context.Context, b *model.Batch, logits []float32) error {
	for r := range len(b.LogitIndices) {
		logits[r*n.vocab+int(b.Tokens[b.LogitIndices[r]])%n.vocab] = 1
	}
	return nil
}

// BenchmarkEngineOverhead: scheduler, sampling (greedy, 32k vocabulary),
// stop checks and streaming per generated token, with a model that costs
// nothing. 16 concurrent requests of 64 tokens per iteration.
func BenchmarkEngineOverhead(b *testing.B) {
	m := &nullModel{fakeModel{vocab: 32000}}
	opts := fakeOpts()
	opts.BlockSize = 16
	opts.NumBlocks = 1024
	e, stop := startEngine(b, m, opts)
	defer stop()
	b.ReportAllocs()
	for b.Loop() {
		var wg sync.WaitGroup
		for i := range 16 {
			ch := submit(b, e, context.Background(), &Request{PromptIDs: prompt(16, i), Params: greedyParams(64)})
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range ch {
				}
			}()
		}
		wg.Wait()
	}
	b.ReportMetric(float64(b.N*16*64)/b.Elapsed().Seconds(), "tok/s")
}

// TestParallelSampling: with a large vocabulary a step's sampling is spread
// over workers; results must be those of sequential sampling.
func TestParallelSampling(t *testing.T) {
	const vocab = 20000
	f, release := newHeldFake(vocab)
	opts := fakeOpts()
	e, stop := startEngine(t, f, opts)
	type job struct {
		pr []int
		p  sample.Params
		ch <-chan Output
	}
	var jobs []job
	for i := range 16 {
		p := greedyParams(12)
		if i%2 == 1 {
			p = sampledParams(12, int64(i))
			p.FrequencyPenalty = 0.3
		}
		p.Logprobs = i % 3
		pr := prompt(5+i, i)
		jobs = append(jobs, job{pr: pr, p: p, ch: submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: p})})
	}
	release()
	for i, j := range jobs {
		r := collect(t, j.ch, 1)[0]
		var seed uint64
		if j.p.Seed != nil {
			seed = uint64(*j.p.Seed)
		}
		want, _, _ := fakeRef(vocab, j.pr, j.p, seed, nil, opts.MaxModelLen)
		if !slices.Equal(r.tokens, want) {
			t.Errorf("request %d: %v, want %v", i, r.tokens, want)
		}
		if len(r.logprobs) != 12 || len(r.logprobs[0].Top) != j.p.Logprobs || r.logprobs[0].TokenID != want[0] {
			t.Errorf("request %d: logprobs %+v", i, r.logprobs[:1])
		}
	}
	stop()
	if runtime.GOMAXPROCS(0) > 1 && e.parallelSteps == 0 {
		t.Error("sampling never ran in parallel")
	}
}

// holdingDetok holds every piece back until Flush, like a stream that ends in
// the middle of a multi-byte character.
type holdingDetok struct{}

type holdingStream struct{ held strings.Builder }

func (holdingDetok) NewTextStream(prompt []int, skip bool) tokenizer.TextStream {
	return &holdingStream{}
}
func (s *holdingStream) Add(id int) string { s.held.WriteString(tokText(id)); return "" }
func (s *holdingStream) Flush() string     { t := s.held.String(); s.held.Reset(); return t }

func TestHeldTextFlushedAtFinish(t *testing.T) {
	pr := prompt(5, 11)
	ref, _, _ := fakeRef(fakeVocab, pr, greedyParams(6), 0, nil, 256)
	want := ""
	for _, tk := range ref {
		want += tokText(tk)
	}
	for _, stop := range [][]string{nil, {"no-such-stop-string"}} {
		opts := fakeOpts()
		opts.Detokenizer = holdingDetok{}
		e, _ := startEngine(t, newFake(fakeVocab), opts)
		p := greedyParams(6)
		p.Stop = stop
		r := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: p}), 1)[0]
		if r.text != want || r.finish != FinishLength {
			t.Errorf("stop %v: text %q finish %q, want %q length", stop, r.text, r.finish, want)
		}
	}
}

// Request.Scheduled is closed when the request first runs, and not while it
// waits for a seat.
func TestScheduledSignal(t *testing.T) {
	opts := fakeOpts()
	opts.MaxNumSeqs = 1
	f := newFake(fakeVocab)
	// Each step takes a token from gate, so request 1 cannot finish (and
	// free its seat) behind the test's back.
	f.gate = make(chan struct{})
	go func() {
		for range 4 {
			f.gate <- struct{}{}
		}
	}()
	e, _ := startEngine(t, f, opts)
	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	r1 := &Request{PromptIDs: prompt(5, 1), Params: greedyParams(200), Scheduled: make(chan struct{})}
	ch1 := submit(t, e, ctx1, r1)
	<-ch1
	select {
	case <-r1.Scheduled:
	default:
		t.Fatal("running request's Scheduled not closed")
	}
	r2 := &Request{PromptIDs: prompt(5, 2), Params: greedyParams(2), Scheduled: make(chan struct{})}
	ch2 := submit(t, e, context.Background(), r2)
	for range 3 {
		<-ch1
	}
	select {
	case <-r2.Scheduled:
		t.Fatal("waiting request's Scheduled closed while the only seat is taken")
	default:
	}
	cancel1()
	close(f.gate) // steps run freely from here
	for range ch1 {
	}
	<-r2.Scheduled
	if r := collect(t, ch2, 1)[0]; r.finish != FinishLength {
		t.Fatalf("second request finished %q", r.finish)
	}
}
