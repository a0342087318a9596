package reference_test

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/model/reference"
)

// TestMatchesGolden checks the float64 reference itself against
// transformers on every tiny checkpoint (Qwen2, Llama 3, Qwen3 with its
// per-head q/k norms, Qwen3-MoE), so that it can serve as the oracle for
// batches and windows the goldens do not cover.
func TestMatchesGolden(t *testing.T) {
	td := shareddata.Dir(t)
	for _, name := range []string{"qwen2-tiny", "llama3-tiny-bf16", "qwen3-tiny-bf16", "qwen3-moe-tiny"} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(td, "models", name)
			g := shareddata.ReadModelGolden(t, dir)
			r, err := reference.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			tokens := append([]int32(nil), g.PromptIDs...)
			for _, st := range g.Greedy[:len(g.Greedy)-1] {
				tokens = append(tokens, st.Token)
			}
			got := r.Forward(tokens)
			worst := 0.0
			check := func(pos int, want []float64) {
				for i := range want {
					worst = math.Max(worst, math.Abs(got[pos][i]-want[i]))
				}
			}
			for p, want := range g.PromptLogits {
				check(p, want)
			}
			for i, st := range g.Greedy {
				check(len(g.PromptIDs)-1+i, st.Logits)
			}
			t.Logf("max |reference - golden| %.3g over %d positions", worst, len(tokens))
			if worst > 1e-4 {
				t.Errorf("reference differs from golden by %.3g", worst)
			}
		})
	}
}
