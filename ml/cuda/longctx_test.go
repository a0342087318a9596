package cuda_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/ml/cuda"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/modeltest"
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
		c := modeltest.NewLongContext(t, td, name, prompt, decode)
		for _, exact := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/exact=%v", name, exact), func(t *testing.T) {
				tol := 0.15
				if exact {
					tol = 2e-3
				}
				m, err := model.Load(c.Dir, model.LoadOptions{Backend: gpu(t, cuda.Options{ExactActivations: exact}),
					KVCacheDType: "float32"})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { m.Close() })
				diffs := c.Run(t, m, chunk)
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
