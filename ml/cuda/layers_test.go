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
	} {
		t.Run(fmt.Sprintf("maxT=%d/step-kernel=%v", o.FusedDecodeMaxT, !o.DisableStepKernel), func(t *testing.T) {
			be := gpu(t, o)
			mltest.CheckFusedLayers(t, be, be, 3e-2, mltest.FusedCases(ml.BF16, ml.BF16))
			// FP8 weights: the fused GEMVs' fp8 forms against the unfused fp8 ops.
			t.Run("fp8", func(t *testing.T) {
				mltest.CheckFusedLayers(t, be, be, 3e-2, mltest.FusedCases(ml.F8, ml.BF16))
			})
		})
	}
}
