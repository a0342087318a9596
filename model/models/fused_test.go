package models_test

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/ml/mltest"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/modeltest"
)

// loadFused loads a checkpoint on the CPU wrapped as a layer fuser whose
// fused layers are ml/mltest's reference composition: the model's
// fused-layer path (stacked q/k/v weights, ml.FusedLayers' step contract)
// as a GPU runs it, in CI.
func loadFused(t *testing.T, dir string, o model.LoadOptions) (model.Model, *mltest.FusingBackend) {
	t.Helper()
	be := mltest.Fusing(cpu.New(cpu.Options{}))
	return modeltest.LoadOn(t, dir, o, be), be
}

// TestFusedLayersPath: on each checkpoint (the MoE one through the sparse
// MLP hook), the fused-layer path
// matches transformers' float64 golden as the base-op path does (every
// prompt position and greedy step within 2e-3 in float32), and mixed
// batched steps on it give the logits of each sequence run alone on the
// base-op path within 1e-4.
func TestFusedLayersPath(t *testing.T) {
	td := shareddata.Dir(t)
	for i, name := range []string{"qwen2-tiny", "llama3-tiny-bf16", "qwen3-tiny-bf16", "qwen3-moe-tiny"} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(td, "models", name)
			o := model.LoadOptions{DType: "float32", KVCacheDType: "float32"}
			m, be := loadFused(t, dir, o)
			if err := m.AllocateKV(16, 4); err != nil {
				t.Fatal(err)
			}
			g := shareddata.ReadModelGolden(t, dir)
			modeltest.CheckGolden(t, m, g, modeltest.GoldenOptions{Tol: 2e-3, Margin: 2e-3,
				Blocks: []int32{9, 2, 14, 5, 0, 11, 7, 3, 12, 1, 15, 4, 8, 13, 6, 10}})
			if be.Steps() == 0 {
				t.Fatal("no step ran on the fused layers")
			}

			single := modeltest.Load(t, dir, o)
			batched, be := loadFused(t, dir, o)
			modeltest.BatchedEqualsSingle(t, rand.New(rand.NewPCG(5, uint64(i))), single, batched, 1e-4)
			if be.Steps() == 0 {
				t.Fatal("no batched step ran on the fused layers")
			}
		})
	}
}
