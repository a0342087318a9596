package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/llmserve/llmserve/internal/shareddata"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/llmserve/llmserve/model"
	_ "github.com/llmserve/llmserve/model/models" // registers every architecture
	"github.com/llmserve/llmserve/sample"
)

type tinyGolden struct {
	PromptIDs []int `json:"prompt_ids"`
	Greedy    []struct {
		Token  int     `json:"token"`
		Margin float64 `json:"margin"`
	} `json:"greedy"`
}

// loadTiny loads a tiny checkpoint (CPU backend, closed with the model),
// with an f32 KV cache so that greedy runs can follow transformers' float64
// (the bf16 checkpoint's default bf16 KV cache rounds keys and values).
func loadTiny(t testing.TB, name string) (model.Model, *tinyGolden) {
	t.Helper()
	dir := filepath.Join(shareddata.Dir(t), "models", name)
	m, err := model.Load(dir, model.LoadOptions{KVCacheDType: "float32"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	data, err := os.ReadFile(filepath.Join(dir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g tinyGolden
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	return m, &g
}

// tinyEngine runs an engine on a fresh copy of a tiny checkpoint (each
// engine needs its own model: the KV cache is allocated once per model).
func tinyEngine(t testing.TB, name string, mod func(*Options)) (*Local, func(), *tinyGolden) {
	t.Helper()
	m, g := loadTiny(t, name)
	opts := tinyOpts(m)
	if mod != nil {
		mod(&opts)
	}
	e, stop := startEngine(t, m, opts)
	return e, stop, g
}

func tinyOpts(m model.Model) Options {
	return Options{
		MaxNumSeqs:          32,
		MaxNumBatchedTokens: 64,
		MaxModelLen:         256,
		BlockSize:           16,
		NumBlocks:           256,
		EnablePrefixCaching: true,
		EOSTokenIDs:         m.Config().EOSTokenIDs(),
	}
}

func tinyPrompt(rng *rand.Rand, n, vocab int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = rng.IntN(vocab)
	}
	return p
}

// TestTinyGreedyGolden: the engine's greedy continuation is transformers'
// (up to the first near-tie, where f32 may legitimately differ).
func TestTinyGreedyGolden(t *testing.T) {
	for _, name := range []string{"qwen2-tiny", "llama3-tiny-bf16", "qwen3-tiny-bf16", "qwen3-moe-tiny"} {
		t.Run(name, func(t *testing.T) {
			e, _, g := tinyEngine(t, name, nil)
			p := greedyParams(len(g.Greedy))
			p.IgnoreEOS = true
			r := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: g.PromptIDs, Params: p}), 1)[0]
			for i, step := range g.Greedy {
				if step.Margin < 1e-2 {
					t.Logf("stopping the comparison at step %d (margin %.4f)", i, step.Margin)
					break
				}
				if r.tokens[i] != step.Token {
					t.Fatalf("step %d: token %d, transformers %d\n got %v", i, r.tokens[i], step.Token, r.tokens)
				}
			}
		})
	}
}

// tinyJob is one request of the mixed batches below.
type tinyJob struct {
	pr []int
	p  sample.Params
}

func tinyJobs(g *tinyGolden, vocab int) []tinyJob {
	rng := rand.New(rand.NewPCG(11, 12))
	jobs := []tinyJob{
		{g.PromptIDs, greedyParams(40)},
		{g.PromptIDs, sampledParams(40, 1234)},
	}
	for i := range 14 {
		var p sample.Params
		if i%2 == 0 {
			p = greedyParams(5 + rng.IntN(60))
		} else {
			p = sampledParams(5+rng.IntN(60), int64(i))
			p.PresencePenalty = 0.5
		}
		pr := tinyPrompt(rng, 1+rng.IntN(120), vocab)
		if i%5 == 0 {
			pr = append(slices.Clone(g.PromptIDs), pr[:min(len(pr), 7)]...) // shares a prefix
		}
		jobs = append(jobs, tinyJob{pr, p})
	}
	for i := range jobs {
		jobs[i].p.IgnoreEOS = true
	}
	return jobs
}

// runJobs submits all jobs at once and collects their tokens.
func runJobs(t *testing.T, e *Local, jobs []tinyJob) [][]int {
	t.Helper()
	out := make([][]int, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		ch := submit(t, e, context.Background(), &Request{ID: fmt.Sprint(i), PromptIDs: j.pr, Params: j.p})
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := collect(t, ch, 1)[0]
			out[i] = r.tokens
			if r.finish != FinishLength {
				t.Errorf("job %d finished %q", i, r.finish)
			}
		}()
	}
	wg.Wait()
	return out
}

// tinyBatchModels are the checkpoints the batching tests run on: a dense
// Qwen2, a Qwen3 (per-head q/k norms) and a Qwen3-MoE (tokens of a batch
// routed to different experts).
var tinyBatchModels = []string{"qwen2-tiny", "qwen3-tiny-bf16", "qwen3-moe-tiny"}

// TestTinyBatchInvariance: a greedy request and a seeded sampled one give
// the same tokens alone as inside a batch of 16 mixed requests (chunked
// prefills, shared prefixes, other seeds).
func TestTinyBatchInvariance(t *testing.T) {
	for _, name := range tinyBatchModels {
		t.Run(name, func(t *testing.T) { testTinyBatchInvariance(t, name) })
	}
}

func testTinyBatchInvariance(t *testing.T, name string) {
	e1, stop1, g := tinyEngine(t, name, nil)
	jobs := tinyJobs(g, e1.vocab)
	alone := make([][]int, 2)
	for i := range alone {
		alone[i] = runJobs(t, e1, jobs[i:i+1])[0]
	}
	stop1()
	e, _, _ := tinyEngine(t, name, nil)
	batch := runJobs(t, e, jobs)
	for i, name := range []string{"greedy", "seeded"} {
		if !slices.Equal(alone[i], batch[i]) {
			t.Errorf("%s: alone and in a batch of 16 differ\nalone %v\nbatch %v", name, alone[i], batch[i])
		}
	}
}

// TestTinyPreemption: on a KV cache too small for the batch, requests are
// preempted mid-decode and still produce what they produce alone.
func TestTinyPreemption(t *testing.T) {
	for _, name := range tinyBatchModels {
		t.Run(name, func(t *testing.T) { testTinyPreemption(t, name) })
	}
}

func testTinyPreemption(t *testing.T, name string) {
	ref, stopRef, g := tinyEngine(t, name, nil)
	jobs := tinyJobs(g, ref.vocab)[:8]
	want := make([][]int, len(jobs))
	for i := range jobs {
		want[i] = runJobs(t, ref, jobs[i:i+1])[0]
	}
	stopRef()
	e, _, _ := tinyEngine(t, name, func(o *Options) {
		o.NumBlocks = 16 // 256 tokens for 8 sequences of up to 185
	})
	got := runJobs(t, e, jobs)
	for i := range jobs {
		if !slices.Equal(got[i], want[i]) {
			t.Errorf("job %d: preempted run differs\n got %v\nwant %v", i, got[i], want[i])
		}
	}
	if e.Stats().Preemptions == 0 {
		t.Error("no preemption: the cache was not small enough")
	}
}

// TestTinyStress: 200 concurrent requests with random lengths and random
// cancellations on a KV cache small enough to force preemption. Requests
// that finish must match the same request run alone.
func TestTinyStress(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	ref, _, g := tinyEngine(t, "qwen2-tiny", nil)
	// One request first, so that the reference engine's goroutines are all
	// up before stress counts goroutines.
	collect(t, submit(t, ref, context.Background(), &Request{PromptIDs: g.PromptIDs, Params: greedyParams(1)}), 1)
	m, _ := loadTiny(t, "qwen2-tiny")
	opts := tinyOpts(m)
	opts.MaxModelLen = 128
	opts.NumBlocks = 24 // 384 tokens
	opts.MaxNumBatchedTokens = 128
	stress(t, m, func() {}, opts, m.Config().VocabSize, 200, func(t *testing.T, i int, pr []int, p sample.Params, seed uint64, r seqResult) {
		want := collect(t, submit(t, ref, context.Background(), &Request{PromptIDs: pr, Params: p}), 1)[0]
		if !slices.Equal(r.tokens, want.tokens) || r.finish != want.finish {
			t.Errorf("request %d: %v %q, alone %v %q", i, r.tokens, r.finish, want.tokens, want.finish)
		}
	})
}
