package llama

import (
	"github.com/llmserve/llmserve/internal/shareddata"
	"path/filepath"
	"testing"

	"github.com/llmserve/llmserve/model"
)

// TestDecodeDoesNotAllocate: a decode step of the same shape as the last
// allocates nothing (scratch and views are reused).
func TestDecodeDoesNotAllocate(t *testing.T) {
	m := load(t, filepath.Join(shareddata.Dir(t), "models", "llama3-tiny-bf16"), model.LoadOptions{})
	if err := m.AllocateKV(16, 4); err != nil {
		t.Fatal(err)
	}
	V := m.cfg.VocabSize
	logits := make([]float32, 2*V)
	b := &model.Batch{Tokens: []int32{1, 2}, Positions: []int32{0, 0},
		Seqs:         []model.SeqChunk{{Start: 0, Len: 1, BlockTable: []int32{3, 4}}, {Start: 1, Len: 1, BlockTable: []int32{7, 1}}},
		LogitIndices: []int32{0, 1}}
	pos := int32(0)
	step := func() {
		b.Positions[0], b.Positions[1] = pos, pos
		pos = (pos + 1) % 8
		if err := m.Forward(t.Context(), b, logits); err != nil {
			t.Fatal(err)
		}
	}
	step()
	if n := testing.AllocsPerRun(20, step); n != 0 {
		t.Errorf("decode step: %v allocations", n)
	}
}
