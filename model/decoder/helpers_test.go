package decoder

import (
	"testing"

	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/modeltest"
)

// The runtime's own tests load the tiny Qwen2 checkpoint through this
// registration (the architecture packages import decoder, so its internal
// tests cannot import them); model/llama and model/qwen3 test the specs.
func init() {
	model.Register("Qwen2ForCausalLM", func(cfg *model.Config, w *model.Weights) (model.Model, error) {
		return New(cfg, w, Spec{QKVBias: true})
	})
}

// load loads a model directory on a fresh CPU backend (closed by cleanup).
func load(t testing.TB, path string, o model.LoadOptions) *Model {
	t.Helper()
	return modeltest.Load(t, path, o).(*Model)
}

// seqRun drives one sequence through Forward over its own scattered blocks.
type seqRun struct {
	blocks []int32
	n      int // tokens written so far
}

// step runs tokens as the sequence's next chunk and returns the logits of
// all its positions.
func (s *seqRun) step(t testing.TB, m *Model, tokens []int32) [][]float32 {
	t.Helper()
	r := &modeltest.SeqRun{M: m, Blocks: s.blocks, N: s.n}
	rows := r.Step(t, tokens)
	s.n = r.N
	return rows
}

func maxDiff32(a, b []float32) float64 { return modeltest.MaxDiff32(a, b) }
