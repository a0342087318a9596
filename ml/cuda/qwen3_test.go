package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/ml/cuda"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/modeltest"
)

// The Qwen3 and Qwen3-MoE checkpoints on the GPU run on the base ops (per-
// head norms, top-k routing, grouped expert matmuls, scatter-add: see
// TestConformance for each op against the float64 reference); these tests
// hold the whole models to transformers' golden and to the CPU backend.

var qwen3Checkpoints = []string{"qwen3-tiny-bf16", "qwen3-moe-tiny"}

// TestQwen3Golden: prompt positions and a teacher-forced greedy
// continuation (decode steps, graph-replayed) against the float64 golden,
// at TestModelGolden's bar: exact mode within the CPU's 2e-3 on logits,
// the fast path (tensor-core GEMMs) within 0.15 on logprobs with the golden
// token wherever the top-two margin exceeds 0.3. The MoE prompt (31 tokens
// × top-2) takes the grouped expert GEMM, its decode steps the per-row
// expert GEMV.
func TestQwen3Golden(t *testing.T) {
	td := shareddata.Dir(t)
	for _, name := range qwen3Checkpoints {
		for _, exact := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/exact=%v", name, exact), func(t *testing.T) {
				dir := filepath.Join(td, "models", name)
				g := shareddata.ReadModelGolden(t, dir)
				o := cuda.Options{ExactActivations: exact}
				if !exact {
					o.SkinnyMaxT = -1
				}
				be := gpu(t, o)
				m := loadOn(t, be, dir, model.LoadOptions{KVCacheDType: "float32"})
				// loadOn allocated 32 blocks of 4: room for the 55 positions.
				gopts := modeltest.GoldenOptions{Tol: 2e-3, Margin: 4e-3, Blocks: scattered}
				if !exact {
					gopts = modeltest.GoldenOptions{Logprobs: true, Tol: 0.15, Margin: 0.3, Blocks: scattered}
				}
				modeltest.CheckGolden(t, m, g, gopts)
				// Both run on the fused layers, the MoE one with its sparse
				// MLPs through the step's hook.
				if cuda.FusedForwards(be) == 0 {
					t.Error("no step ran on the fused layers")
				}
			})
		}
	}
}

// TestQwen3MatchesCPU: prompt and greedy logits on the GPU against the CPU
// backend, with the checkpoint's dtype and the auto KV cache.
func TestQwen3MatchesCPU(t *testing.T) {
	td := shareddata.Dir(t)
	for _, name := range qwen3Checkpoints {
		for _, exact := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/exact=%v", name, exact), func(t *testing.T) {
				dir := filepath.Join(td, "models", name)
				g := shareddata.ReadModelGolden(t, dir)
				run := func(be ml.Backend) [][]float32 {
					m := loadOn(t, be, dir, model.LoadOptions{KVCacheDType: "float32"})
					s := &seqRun{m: m, blocks: scattered}
					rows := s.step(t, g.PromptIDs)
					for i := 1; i < len(g.Greedy); i++ {
						rows = append(rows, s.step(t, []int32{g.Greedy[i-1].Token})...)
					}
					return rows
				}
				cb := cpu.New(cpu.Options{})
				t.Cleanup(func() { cb.Close() })
				want := run(cb)
				got := run(gpu(t, cuda.Options{ExactActivations: exact}))
				tol := 2e-3 // f32-grade on both paths (split activations in the GEMMs)
				worst := 0.0
				for i := range want {
					for j := range want[i] {
						worst = math.Max(worst, math.Abs(float64(got[i][j]-want[i][j])))
					}
				}
				t.Logf("%d positions: max |GPU-CPU| logit diff %.3g (tol %.0e)", len(want), worst, tol)
				if worst > tol {
					t.Errorf("GPU logits differ from the CPU's by %.3g > %.0e", worst, tol)
				}
			})
		}
	}
}

// TestQwen3BatchedEqualsSingle: mixed batched steps on the GPU (padded
// prefill steps, decode batches, tokens of one step routed to different
// experts) give each sequence's logits run alone on the GPU.
func TestQwen3BatchedEqualsSingle(t *testing.T) {
	td := shareddata.Dir(t)
	for i, name := range qwen3Checkpoints {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(td, "models", name)
			o := model.LoadOptions{KVCacheDType: "float32"}
			load := func() model.Model {
				o.Backend = gpu(t, cuda.Options{ExactActivations: true})
				m, err := model.Load(dir, o)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { m.Close() })
				return m
			}
			// Batched and single steps differ in row counts (and so in GEMM
			// kernels and expert grouping): f32 noise, far below a wrong
			// row, slot or expert.
			modeltest.BatchedEqualsSingle(t, rand.New(rand.NewPCG(21, uint64(i))), load(), load(), 1e-3)
		})
	}
}

// TestStepStampsMoE: the decode-step kernel of a sparse MLP, stamped (as
// BenchmarkModelDecode/moe-step-stamped runs it), records each of a
// layer's eight phases in order: every phase's mean length is positive.
func TestStepStampsMoE(t *testing.T) {
	dir := filepath.Join(shareddata.Dir(t), "models", "qwen3-moe-tiny")
	be := gpu(t, cuda.Options{FusedDecodeMaxT: 1, GraphMinOps: 8})
	cuda.StampSteps(be)
	m := loadOn(t, be, dir, model.LoadOptions{DType: "bfloat16", KVCacheDType: "bfloat16"})
	s := &seqRun{m: m, blocks: scattered}
	s.step(t, []int32{3, 14, 15, 92})
	for i := range 4 {
		s.step(t, []int32{int32(i*31+7) % int32(m.Config().VocabSize)})
	}
	if n := cuda.StepLaunches(be); n == 0 {
		t.Fatal("the decode-step kernel did not run")
	}
	cyc, err := cuda.StepPhaseCycles(be, 8)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"qkv", "barrier", "attention", "o", "router", "top-k", "experts' gate/up", "experts' down"} {
		if !(cyc[i] > 0) {
			t.Errorf("phase %s: %v cycles, want > 0 (all: %v)", name, cyc[i], cyc)
		}
	}
}
