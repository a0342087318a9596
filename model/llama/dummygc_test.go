package llama

import (
	"math"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/model"
)

// TestDummyWeightsSurviveGC: dummy weights used in place are garbage-
// collected memory, so every tensor must keep all of its parts reachable. A
// gate/up weight once spanned two adjacent generated tensors with one
// slice, and after a collection the second was reused: logits became NaN.
func TestDummyWeightsSurviveGC(t *testing.T) {
	dir := filepath.Join(shareddata.Dir(t), "models", "qwen2-tiny")
	m := load(t, dir, model.LoadOptions{LoadFormat: "dummy"})
	if err := m.AllocateKV(8, 16); err != nil {
		t.Fatal(err)
	}
	tokens := []int32{5, 77, 300, 12, 9, 401}
	first := (&seqRun{blocks: []int32{0}}).step(t, m, tokens)
	for range 3 {
		runtime.GC()
	}
	// Churn the heap so freed memory is written over.
	var junk [][]byte
	for range 64 {
		b := make([]byte, 64<<10)
		for i := range b {
			b[i] = 0xff
		}
		junk = append(junk, b)
	}
	runtime.KeepAlive(junk)
	second := (&seqRun{blocks: []int32{1}}).step(t, m, tokens)
	for p := range first {
		for i, v := range second[p] {
			if math.IsNaN(float64(v)) || v != first[p][i] {
				t.Fatalf("position %d: logit %d is %v after a collection, %v before", p, i, v, first[p][i])
			}
		}
	}
}
