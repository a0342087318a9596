package llama

import (
	"github.com/llmserve/llmserve/internal/shareddata"
	"math"
	"path/filepath"
	"testing"
)

// TestReferenceMatchesGolden checks the float64 reference itself against
// transformers, so it can serve as the oracle for batches the goldens do
// not cover.
func TestReferenceMatchesGolden(t *testing.T) {
	td := shareddata.Dir(t)
	for _, name := range tinyModels {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(td, "models", name)
			g := shareddata.ReadModelGolden(t, dir)
			r := loadRef(t, dir)
			got := r.Forward(g.PromptIDs)
			for p, want := range g.PromptLogits {
				worst := 0.0
				for i := range want {
					worst = math.Max(worst, math.Abs(got[p][i]-want[i]))
				}
				if worst > 1e-4 {
					t.Errorf("position %d: reference differs from golden by %.3g", p, worst)
				}
			}
		})
	}
}
