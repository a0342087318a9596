package qwen3_test

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/decoder"
	"github.com/llmserve/llmserve/model/modeltest"
	_ "github.com/llmserve/llmserve/model/qwen3"
	"github.com/llmserve/llmserve/model/reference"
)

var checkpoints = []string{"qwen3-tiny-bf16", "qwen3-moe-tiny"}

var scattered = []int32{9, 2, 14, 5, 0, 11, 7, 3, 12, 1, 15, 4, 10, 6, 13, 8}

// TestGoldenFloat32: with --dtype float32 (and an f32 KV cache) every
// prompt position and greedy step is within 2e-3 of transformers' float64
// logits, and greedy picks the golden token wherever the top two are
// clearly apart.
func TestGoldenFloat32(t *testing.T) {
	td := shareddata.Dir(t)
	for _, name := range checkpoints {
		for _, bs := range []int{4, 16} {
			t.Run(fmt.Sprintf("%s/block=%d", name, bs), func(t *testing.T) {
				dir := filepath.Join(td, "models", name)
				g := shareddata.ReadModelGolden(t, dir)
				m := modeltest.Load(t, dir, model.LoadOptions{DType: "float32", KVCacheDType: "float32"})
				if err := m.AllocateKV(16, bs); err != nil {
					t.Fatal(err)
				}
				modeltest.CheckGolden(t, m, g, modeltest.GoldenOptions{Tol: 2e-3, Margin: 2e-3, Blocks: scattered})
			})
		}
	}
}

// TestGoldenDefaultDType: at the checkpoint's dtype (bf16 weights for
// qwen3-tiny-bf16; f32 activations and KV cache on the CPU) logprobs are
// within 5e-2 of the float64 golden, and clear greedy steps agree.
func TestGoldenDefaultDType(t *testing.T) {
	td := shareddata.Dir(t)
	for _, name := range checkpoints {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(td, "models", name)
			g := shareddata.ReadModelGolden(t, dir)
			m := modeltest.Load(t, dir, model.LoadOptions{})
			if err := m.AllocateKV(16, 8); err != nil {
				t.Fatal(err)
			}
			modeltest.CheckGolden(t, m, g, modeltest.GoldenOptions{Logprobs: true, Tol: 5e-2, Margin: 0.1, Blocks: scattered})
		})
	}
}

// TestSpec: the architectures' specs as the configs state them.
func TestSpec(t *testing.T) {
	td := shareddata.Dir(t)
	for _, c := range []struct {
		name    string
		experts int
		topK    int
	}{{"qwen3-tiny-bf16", 0, 0}, {"qwen3-moe-tiny", 8, 2}} {
		m := modeltest.Load(t, filepath.Join(td, "models", c.name), model.LoadOptions{})
		s := m.(*decoder.Model).Spec()
		if !s.QKNorm || s.QKVBias {
			t.Errorf("%s: QKNorm %v, QKVBias %v; want per-head norms and no bias", c.name, s.QKNorm, s.QKVBias)
		}
		if c.experts == 0 && s.MoE != nil {
			t.Errorf("%s: dense model with a MoE spec", c.name)
		}
		if c.experts > 0 && (s.MoE == nil || s.MoE.Experts != c.experts || s.MoE.TopK != c.topK || !s.MoE.NormTopKProb || !s.MoE.Sparse(0) || !s.MoE.Sparse(1)) {
			t.Errorf("%s: MoE spec %+v, want %d experts, top %d, normalized, every layer sparse", c.name, s.MoE, c.experts, c.topK)
		}
	}
}

// TestBatchedEqualsSingle: mixed batched steps give the logits of each
// sequence run alone (tokens routed to experts in a batch as alone).
func TestBatchedEqualsSingle(t *testing.T) {
	td := shareddata.Dir(t)
	for ci, name := range checkpoints {
		for oi, o := range []model.LoadOptions{{}, {KVCacheDType: "bfloat16"}, {Quantization: "int8"}} {
			t.Run(fmt.Sprintf("%s/q%s-kv%s", name, o.Quantization, o.KVCacheDType), func(t *testing.T) {
				dir := filepath.Join(td, "models", name)
				single := modeltest.Load(t, dir, o)
				batched := modeltest.Load(t, dir, o)
				tol := 3e-5 // f32 noise (see model/llama's TestBatchedEqualsSingle)
				if single.(*decoder.Model).KVDType() != ml.F32 {
					tol = 2e-2 // a one-ulp flip of a 16-bit key (see model/llama's TestBF16KVMatchesReference)
				}
				modeltest.BatchedEqualsSingle(t, rand.New(rand.NewPCG(11, uint64(ci*10+oi))), single, batched, tol)
			})
		}
	}
}

// TestMatchesReferenceLong: a prompt longer than the goldens' (chunked
// over several steps, then decodes) against the float64 reference.
func TestMatchesReferenceLong(t *testing.T) {
	td := shareddata.Dir(t)
	for _, name := range checkpoints {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(td, "models", name)
			ref, err := reference.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			m := modeltest.Load(t, dir, model.LoadOptions{DType: "float32", KVCacheDType: "float32"})
			if err := m.AllocateKV(64, 8); err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(3, 4))
			tokens := make([]int32, 150)
			for i := range tokens {
				tokens[i] = int32(r.IntN(m.Config().VocabSize))
			}
			want := ref.Forward(tokens)
			blocks := make([]int32, 19)
			for i := range blocks {
				blocks[i] = int32((i*7 + 3) % 64)
			}
			seq := &modeltest.SeqRun{M: m, Blocks: blocks}
			var rows [][]float32
			for _, n := range []int{64, 50, 30, 1, 1, 1, 1, 1, 1} {
				rows = append(rows, seq.Step(t, tokens[seq.N:seq.N+n])...)
			}
			for p, row := range rows {
				if d, at := modeltest.MaxDiff64(row, want[p]); d > 2e-3 {
					t.Errorf("position %d: logit %d differs from the reference by %.3g", p, at, d)
				}
			}
		})
	}
}

// TestInt8Accuracy: with --quantization int8, quantizing the activations
// too (where the CPU has an int8 dot product) adds little to what the
// per-row int8 weights already cost against the float64 golden.
func TestInt8Accuracy(t *testing.T) {
	td := shareddata.Dir(t)
	for _, name := range checkpoints {
		t.Run(name, func(t *testing.T) {
			exact, quantized, between := modeltest.Int8Accuracy(t, filepath.Join(td, "models", name), scattered)
			t.Logf("max |logprob - golden|: f32 activations %.4g, int8 activations %.4g; between them %.4g", exact, quantized, between)
		})
	}
}
