package cuda_test

import (
	"fmt"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cuda"
	"github.com/llmserve/llmserve/ml/mltest"
)

// TestFusedLayersMatchReference: the backend's fused layers (the one-launch
// decode step, the fused GEMVs for steps of up to FusedDecodeMaxT tokens,
// the GEMM path with the q/k/v prologue for larger steps) give the residual
// stream and logits of ml/mltest's base-op composition on the same device,
// within bf16 rounding, for every layer shape FusesLayers takes.
func TestFusedLayersMatchReference(t *testing.T) {
	for _, o := range []cuda.Options{
		{},                   // one-token steps in one launch
		{FusedDecodeMaxT: 4}, // the fused GEMVs up to 4 tokens
		{FusedDecodeMaxT: 4, DisableStepKernel: true},
		{FusedDecodeMaxT: -1}, // GEMMs only
		// GEMMs with rounded activations: the gate/up product and SiLU in bf16
		{FusedDecodeMaxT: -1, RoundActivations: true},
	} {
		name := fmt.Sprintf("maxT=%d/step-kernel=%v/round=%v", o.FusedDecodeMaxT, !o.DisableStepKernel, o.RoundActivations)
		t.Run(name, func(t *testing.T) {
			be := gpu(t, o)
			g0 := cuda.GateUpBF16Steps(be)
			defer func() {
				if n := cuda.GateUpBF16Steps(be) - g0; o.RoundActivations && n == 0 {
					t.Error("no layer took the bf16 gate/up product with rounded activations")
				} else if !o.RoundActivations && n != 0 {
					t.Errorf("%d layers took the bf16 gate/up product with f32 activations", n)
				}
			}()
			stepKernel := !o.DisableStepKernel && o.FusedDecodeMaxT >= 0
			checkSteps := func(t *testing.T, before int) {
				if n := cuda.StepLaunches(be) - before; stepKernel && n == 0 {
					t.Error("no one-token step took the decode-step kernel")
				} else if !stepKernel && n != 0 {
					t.Errorf("%d decode-step launches with the kernel off", n)
				}
			}
			n0 := cuda.StepLaunches(be)
			mltest.CheckFusedLayers(t, be, be, 3e-2, mltest.FusedCases(ml.BF16, ml.BF16))
			checkSteps(t, n0)
			// FP8 weights: the fused GEMVs' and the decode-step kernel's fp8
			// forms against the unfused fp8 ops.
			t.Run("fp8", func(t *testing.T) {
				n0 := cuda.StepLaunches(be)
				mltest.CheckFusedLayers(t, be, be, 3e-2, mltest.FusedCases(ml.F8, ml.BF16))
				checkSteps(t, n0)
			})
		})
	}
}
