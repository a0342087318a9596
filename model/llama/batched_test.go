package llama

import (
	"fmt"
	"github.com/llmserve/llmserve/internal/shareddata"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/modeltest"
)

// TestBatchedEqualsSingle runs several sequences through mixed steps —
// prefills of different lengths chunked across steps, decodes, sequences
// arriving late, block tables grown from a shuffled free list so they are
// scattered and interleaved — and checks every returned logit row against
// the same sequence run alone in one prefill.
func TestBatchedEqualsSingle(t *testing.T) {
	td := shareddata.Dir(t)
	cases := []struct {
		name string
		opts model.LoadOptions
	}{
		{"qwen2-tiny", model.LoadOptions{}},
		{"llama3-tiny-bf16", model.LoadOptions{}}, // f32 KV (auto on the CPU)
		{"llama3-tiny-bf16", model.LoadOptions{KVCacheDType: "bfloat16"}},
		{"llama3-tiny-bf16", model.LoadOptions{KVCacheDType: "float32", Quantization: "int8"}},
		{"qwen2-tiny", model.LoadOptions{DType: "float16", KVCacheDType: "float16"}},
	}
	for ci, c := range cases {
		t.Run(fmt.Sprintf("%s/%s-%s-kv%s", c.name, c.opts.DType, c.opts.Quantization, c.opts.KVCacheDType), func(t *testing.T) {
			dir := filepath.Join(td, "models", c.name)
			single := load(t, dir, c.opts)
			batched := load(t, dir, c.opts)
			r := rand.New(rand.NewPCG(7, uint64(ci)))
			// Batched and single steps may sum in another order (the
			// weight products' tiles depend on the step's rows): f32 noise
			// of about 1e-5 in a logit. A 16-bit KV cache can turn that
			// noise into a one-ulp rounding flip of a key or value, which
			// moves a logit by up to ~1e-2 (see TestBF16KVMatchesReference).
			// A wrong slot or block is far off.
			tol := 3e-5
			if single.KVDType() != ml.F32 {
				tol = 2e-2
			}
			runMixed(t, r, single, batched, tol)
		})
	}
}

func runMixed(t *testing.T, r *rand.Rand, single, batched *Model, tol float64) {
	t.Helper()
	modeltest.BatchedEqualsSingle(t, r, single, batched, tol)
}
