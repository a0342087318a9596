package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/llmserve/llmserve/grammar"
	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/sample"
	"github.com/llmserve/llmserve/tokenizer"
)

// BenchmarkStructuredOverhead is the engine-side cost of a grammar on the
// CPU with the tiny Qwen2 checkpoint: the same load (concurrent requests,
// 8-token prompts, 64 sampled output tokens, EOS ignored so both generate
// as many) unconstrained and under a JSON Schema, whose mask processor
// runs per token (mask in the background, applied before sampling, and
// the sequence taken off the device-argmax path). The tiny model's steps
// are short, so this is close to the worst case of the overhead relative
// to the model. The vocabulary is the Qwen3 tokenizer's first 500 tokens
// (what the tiny model's test tokenizer holds).
//
//	go test -run '^$' -bench StructuredOverhead -benchtime 20x ./engine
func BenchmarkStructuredOverhead(b *testing.B) {
	const promptLen, outLen = 8, 64
	tok, err := tokenizer.LoadDir(shareddata.Path(b, "tokenizers", "qwen3"))
	if err != nil {
		b.Fatal(err)
	}
	e, _, _ := tinyEngine(b, "qwen2-tiny", nil)
	vocab := 512
	toks := make([][]byte, vocab)
	for id := range 500 {
		toks[id], _ = tok.TokenBytes(id)
	}
	eos := e.opts.EOSTokenIDs
	v, err := grammar.NewVocab(toks, eos)
	if err != nil {
		b.Fatal(err)
	}
	g, err := grammar.Compile(grammar.Spec{JSONSchema: `{"type":"array","items":{"type":"object","properties":{"name":{"type":"string"},"n":{"type":"integer"}}}}`}, v, grammar.Limits{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, conc := range []int{1, 8} {
		for _, constrained := range []bool{false, true} {
			b.Run(fmt.Sprintf("concurrency=%d/constrained=%v", conc, constrained), func(b *testing.B) {
				var tokens int
				for b.Loop() {
					var wg sync.WaitGroup
					for range conc {
						pr := make([]int, promptLen)
						for i := range pr {
							pr[i] = rng.IntN(500)
						}
						p := sample.Defaults()
						p.MaxTokens, p.IgnoreEOS, p.Temperature = outLen, true, 1
						seed := rng.Int64()
						p.Seed = &seed
						if constrained {
							p.Processors = func() []sample.LogitsProcessor {
								return []sample.LogitsProcessor{sample.NewMaskProcessor(g.NewMatcher(), vocab, eos, nil)}
							}
						}
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
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(tokens), "ns/token")
				b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "out_tok/s")
			})
		}
	}
}
