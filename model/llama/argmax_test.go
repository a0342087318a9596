package llama

import (
	"errors"
	"github.com/llmserve/llmserve/internal/shareddata"
	"path/filepath"
	"slices"
	"testing"

	"github.com/llmserve/llmserve/model"
)

// TestForwardArgmax: on the CPU (host fallback) ForwardArgmax gives each
// greedy row Forward's argmax and every other row Forward's logits.
func TestForwardArgmax(t *testing.T) {
	dir := filepath.Join(shareddata.Dir(t), "models", "qwen2-tiny")
	ref := load(t, dir, model.LoadOptions{})
	got := load(t, dir, model.LoadOptions{})
	for _, m := range []*Model{ref, got} {
		if err := m.AllocateKV(16, 4); err != nil {
			t.Fatal(err)
		}
	}
	if got.ArgmaxOnDevice() {
		t.Error("the CPU backend claims a device argmax")
	}
	V := ref.cfg.VocabSize
	toks := []int32{3, 17, 42, 5, 99, 7, 1}
	b := &model.Batch{Tokens: toks, Seqs: []model.SeqChunk{{Start: 0, Len: 4, BlockTable: []int32{0, 1}}, {Start: 4, Len: 3, BlockTable: []int32{5}}}}
	for i := range toks {
		p := i
		if i >= 4 {
			p = i - 4
		}
		b.Positions = append(b.Positions, int32(p))
		b.LogitIndices = append(b.LogitIndices, int32(i))
	}
	want := make([]float32, len(toks)*V)
	if err := ref.Forward(t.Context(), b, want); err != nil {
		t.Fatal(err)
	}
	greedy := []bool{true, false, false, true, true, false, true}
	ids := make([]int32, len(toks))
	out := make([]float32, len(toks)*V)
	if err := got.ForwardArgmax(t.Context(), b, greedy, ids, out); err != nil {
		t.Fatal(err)
	}
	for i, g := range greedy {
		row, wrow := out[i*V:(i+1)*V], want[i*V:(i+1)*V]
		if g {
			if w := argmax(wrow); ids[i] != w {
				t.Errorf("row %d: argmax %d, want %d", i, ids[i], w)
			}
		} else if !slices.Equal(row, wrow) {
			t.Errorf("row %d: logits differ from Forward's", i)
		}
	}
	if err := got.ForwardArgmax(t.Context(), b, greedy[:2], ids, out); !errors.Is(err, model.ErrBadBatch) {
		t.Errorf("short greedy flags: %v, want ErrBadBatch", err)
	}
}
