package cuda

import (
	"slices"
	"testing"
)

// TestFlashLeftPlan checks the host's replay of flash's rule (which rows
// of a step the per-token kernels must serve) on the layouts the engine
// makes, and that a plan is recomputed when the tokens change.
func TestFlashLeftPlan(t *testing.T) {
	layout := func(pad int, lens ...int) []int32 {
		var seqs []int32
		for i, n := range lens {
			for range n {
				seqs = append(seqs, int32(i))
			}
		}
		for range pad {
			seqs = append(seqs, int32(len(lens)-1))
		}
		return seqs
	}
	decodes := slices.Repeat([]int{1}, 64)
	prompts := slices.Repeat([]int{1016}, 8)
	var f flashLeftPlan
	for _, c := range []struct {
		name       string
		seqs       []int32
		tile, want int
	}{
		// 64 decodes, then eight prompts (the c=64 load's mixed step):
		// the decodes' rows only; tiles of 21 and 10 tokens.
		{"decodes-first", layout(0, append(slices.Clone(decodes), prompts...)...), 21, 64},
		{"decodes-first-narrow", layout(0, append(slices.Clone(decodes), prompts...)...), 10, 64},
		// Prompts alone: every row is flash's, straddled tiles too.
		{"prompts", layout(0, prompts...), 21, 0},
		// Padding of the last sequence joins its rows.
		{"padded", layout(13, 1, 1, 1, 300), 21, 3},
		// A three-token chunk after the decodes: its rows too.
		{"short-chunk", layout(0, 1, 1, 3, 40), 21, 5},
		// A decode after a prompt: the plan reaches it.
		{"decode-late", layout(0, 1, 100, 1), 21, 102},
		// One sequence's tile alone is flash's even when short.
		{"one-tile", layout(0, 5), 21, 0},
		// Padding of the first sequence (a decode) in a tile shared with a
		// prompt's last rows would be the per-token kernels' (the decoder
		// pads with the last sequence).
		{"padded-first", append(layout(0, 1, 38), 0, 0, 0), 21, 42},
		{"padded-last", layout(3, 1, 38), 21, 1},
	} {
		if got := f.end(c.seqs, int(slices.Max(c.seqs))+1, c.tile); got != c.want {
			t.Errorf("%s: rows before %d left to the per-token kernels, want %d", c.name, got, c.want)
		}
	}
	// Sequence indices out of range: every row.
	if got := f.end([]int32{0, 0, 5}, 2, 21); got != 3 {
		t.Errorf("out-of-range sequence: %d, want 3", got)
	}
	if got := attnPrefixRows(64); got != 64 {
		t.Errorf("attnPrefixRows(64) = %d", got)
	}
	if got := attnPrefixRows(65); got != 128 {
		t.Errorf("attnPrefixRows(65) = %d", got)
	}
	if got := attnPrefixRows(3); got != 8 {
		t.Errorf("attnPrefixRows(3) = %d", got)
	}
}
