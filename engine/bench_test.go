package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/llmserve/llmserve/model"
)

// BenchmarkEngineQwen05B measures the engine alone (no HTTP) on
// Qwen2.5-0.5B's shape with dummy weights on the default CPU backend:
// each iteration submits `concurrency` requests at once (16-token random
// prompts, 64 greedy output tokens, EOS ignored: a decode-heavy chat-like
// load) and waits for all of them. out_tok/s is aggregate output tokens per
// second, prefill included.
//
//	go test -run '^$' -bench EngineQwen05B -benchtime 1x -count 3 ./engine
func BenchmarkEngineQwen05B(b *testing.B) {
	const promptLen, outLen = 16, 64
	m, err := model.Load("Qwen/Qwen2.5-0.5B", model.LoadOptions{LoadFormat: "dummy"})
	if err != nil {
		b.Skipf("model: %v", err)
	}
	defer m.Close()
	e, err := New(m, Options{
		MaxNumSeqs:          16,
		MaxNumBatchedTokens: 2048,
		MaxModelLen:         512,
		BlockSize:           16,
		NumBlocks:           16 * 512 / 16,
		EnablePrefixCaching: true,
		EOSTokenIDs:         m.Config().EOSTokenIDs(),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	vocab := m.Config().VocabSize
	rng := rand.New(rand.NewPCG(1, 2))
	for _, conc := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			var tokens int
			for b.Loop() {
				var wg sync.WaitGroup
				for range conc {
					pr := make([]int, promptLen) // distinct prompts: no prefix-cache hits
					for i := range pr {
						pr[i] = rng.IntN(vocab)
					}
					p := greedyParams(outLen)
					p.IgnoreEOS = true
					ch, err := e.Submit(ctx, &Request{PromptIDs: pr, Params: p})
					if err != nil {
						b.Fatal(err)
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range ch {
						}
					}()
				}
				wg.Wait()
				tokens += conc * outLen
			}
			b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "out_tok/s")
		})
	}
}
