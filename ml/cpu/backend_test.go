package cpu

import (
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu/kernels"
	"github.com/llmserve/llmserve/ml/mltest"
)

// TestConformance runs the shared suite; where the CPU has an int8 dot
// product, int8 matmuls quantize their activations by default (checked
// against the reference that quantizes them too), so they are checked once
// more with ExactActivations.
func TestConformance(t *testing.T) {
	for _, threads := range []int{1, 2, 3} {
		t.Run(map[int]string{1: "threads=1", 2: "threads=2", 3: "threads=3"}[threads], func(t *testing.T) {
			o := mltest.DefaultOptions()
			o.Int8Activations = kernels.HasInt8Dot()
			mltest.Run(t, func() ml.Backend { return New(Options{Threads: threads}) }, o)
		})
	}
	if kernels.HasInt8Dot() {
		t.Run("exact-int8", func(t *testing.T) {
			o := mltest.DefaultOptions()
			o.WeightDTypes = []ml.DType{ml.I8}
			mltest.Run(t, func() ml.Backend { return New(Options{Threads: 2, ExactActivations: true}) }, o)
		})
	}
}
