package cpu

import (
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/mltest"
)

func TestConformance(t *testing.T) {
	for _, threads := range []int{1, 2, 3} {
		t.Run(map[int]string{1: "threads=1", 2: "threads=2", 3: "threads=3"}[threads], func(t *testing.T) {
			mltest.RunBackendTests(t, func() ml.Backend { return New(Options{Threads: threads}) })
		})
	}
}
