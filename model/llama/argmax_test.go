package llama

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/modeltest"
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

	// With allowed-token masks: the argmax among the allowed tokens (0 when
	// none is), rows without a mask unchanged.
	W := (V + 31) / 32
	allow := func(toks ...int) []uint32 {
		w := make([]uint32, W)
		for _, t := range toks {
			w[t/32] |= 1 << (t % 32)
		}
		return w
	}
	masks := [][]uint32{allow(5, 77, 300, V-1), nil, allow(1), allow(42), allow(), nil, nil}
	var asked []int
	b.AllowedTokens = func(row int, words []uint32) bool {
		asked = append(asked, row)
		if len(words) != W {
			t.Fatalf("row %d: a mask buffer of %d words, want %d", row, len(words), W)
		}
		if masks[row] == nil {
			return false
		}
		copy(words, masks[row])
		return true
	}
	if err := got.ForwardArgmax(t.Context(), b, greedy, ids, out); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(asked, []int{0, 3, 4, 6}) {
		t.Errorf("masks asked for rows %v, want the greedy rows 0, 3, 4, 6", asked)
	}
	for i, g := range greedy {
		if !g {
			continue
		}
		if best := modeltest.ArgmaxAllowed(want[i*V:(i+1)*V], masks[i]); ids[i] != best {
			t.Errorf("masked row %d: argmax %d, want %d", i, ids[i], best)
		}
	}
	if ids[3] != 42 || ids[4] != 0 {
		t.Errorf("a row allowing only 42 gave %d, a row allowing nothing %d (want 0)", ids[3], ids[4])
	}
}
