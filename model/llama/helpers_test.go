package llama

import (
	"testing"

	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/modeltest"
	"github.com/llmserve/llmserve/model/reference"
)

var tinyModels = []string{"qwen2-tiny", "llama3-tiny-bf16"}

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

func argmax(x []float32) int32 { return modeltest.Argmax(x) }

func maxDiff64(got []float32, want []float64) (float64, int) { return modeltest.MaxDiff64(got, want) }

func maxDiff32(a, b []float32) float64 { return modeltest.MaxDiff32(a, b) }

func logprobDiff(got []float32, want []float64) float64 { return reference.LogprobDiff(got, want) }
