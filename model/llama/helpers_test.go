package llama

import (
	"math"
	"testing"

	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/reference"
)

var tinyModels = []string{"qwen2-tiny", "llama3-tiny-bf16"}

// load loads a model directory on a fresh CPU backend (closed by cleanup).
func load(t testing.TB, path string, o model.LoadOptions) *Model {
	t.Helper()
	be := cpu.New(cpu.Options{})
	o.Backend = be
	m, err := model.Load(path, o)
	if err != nil {
		be.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		be.Close()
	})
	return m.(*Model)
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
	b := &model.Batch{Tokens: tokens, Seqs: []model.SeqChunk{{Start: 0, Len: len(tokens), BlockTable: s.blocks}}}
	for i := range tokens {
		b.Positions = append(b.Positions, int32(s.n+i))
		b.LogitIndices = append(b.LogitIndices, int32(i))
	}
	V := m.cfg.VocabSize
	out := make([]float32, len(tokens)*V)
	if err := m.Forward(t.Context(), b, out); err != nil {
		t.Fatal(err)
	}
	s.n += len(tokens)
	rows := make([][]float32, len(tokens))
	for i := range rows {
		rows[i] = out[i*V : (i+1)*V]
	}
	return rows
}

func argmax(x []float32) int32 {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return int32(best)
}

func maxDiff64(got []float32, want []float64) (float64, int) {
	worst, at := 0.0, 0
	for i := range got {
		if d := math.Abs(float64(got[i]) - want[i]); d > worst || d != d {
			worst, at = d, i
		}
	}
	return worst, at
}

func maxDiff32(a, b []float32) float64 {
	worst := 0.0
	for i := range a {
		if d := math.Abs(float64(a[i]) - float64(b[i])); d > worst || d != d {
			worst = d
		}
	}
	return worst
}

// logprobDiff is reference.LogprobDiff.
func logprobDiff(got []float32, want []float64) float64 { return reference.LogprobDiff(got, want) }
