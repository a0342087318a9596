package cuda_test

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cuda"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/reference"
)

// TestLongContextMatchesReference: the CPU suite's long-context test on the
// GPU. A 4,096-token prompt in 512-token chunks and a few decode steps
// (graphs and the one-launch decode step on) of bf16 Qwen2 and
// llama3-scaled checkpoints against the float64 reference: exact mode
// within 2e-3 on logprobs, the bf16 fast path within 0.15.
func TestLongContextMatchesReference(t *testing.T) {
	gpu(t, cuda.Options{}) // skips before the slow reference when there is no GPU
	td := shareddata.Dir(t)
	const prompt, chunk, decode = 4096, 512, 8
	for _, name := range []string{"qwen2-tiny", "llama3-tiny-bf16"} {
		dir := t.TempDir()
		if err := reference.Rewrite(filepath.Join(td, "models", name), dir, ml.BF16, 8192); err != nil {
			t.Fatal(err)
		}
		ref, err := reference.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(1, 2))
		tokens := make([]int32, prompt+decode)
		for i := range tokens {
			tokens[i] = int32(r.IntN(ref.Config.VocabSize))
		}
		want := ref.Forward(tokens)
		for _, exact := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/exact=%v", name, exact), func(t *testing.T) {
				tol := 0.15
				if exact {
					tol = 2e-3
				}
				m, err := model.Load(dir, model.LoadOptions{Backend: gpu(t, cuda.Options{ExactActivations: exact}),
					KVCacheDType: "float32"})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { m.Close() })
				const bs = 16
				blocks := (prompt+decode+bs-1)/bs + 1
				if err := m.AllocateKV(blocks, bs); err != nil {
					t.Fatal(err)
				}
				s := &seqRun{m: m}
				for i := range blocks {
					s.blocks = append(s.blocks, int32(blocks-1-i))
				}
				var rows [][]float32
				for at := 0; at < prompt; at += chunk {
					rows = append(rows, s.step(t, tokens[at:at+chunk])...)
				}
				for i := prompt; i < prompt+decode; i++ {
					rows = append(rows, s.step(t, tokens[i:i+1])...)
				}
				diffs := make([]float64, len(rows))
				for p := range rows {
					diffs[p] = reference.LogprobDiff(rows[p], want[p])
				}
				tail := slices.Max(diffs[prompt-chunk:])
				worst := slices.Max(diffs)
				t.Logf("max |logprob - reference|: all %.3g, last chunk and decode %.3g (tol %.0e)", worst, tail, tol)
				if worst > tol {
					at := slices.Index(diffs, worst)
					t.Errorf("position %d: logprobs differ from the float64 reference by %.3g > %.0e", at, worst, tol)
				}
			})
		}
	}
}
