package decoder

import (
	"testing"

	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/model"
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

func maxDiff32(a, b []float32) float64 {
	worst := 0.0
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		if d < 0 {
			d = -d
		}
		if d > worst || d != d {
			worst = d
		}
	}
	return worst
}
