package cuda

import (
	"slices"
	"testing"
)

// TestStepKS: the decode-step kernel's split-K choice for Qwen2.5-1.5B's
// and Qwen3-30B-A3B's matrices on an H100's 264 resident blocks, and its
// limits.
func TestStepKS(t *testing.T) {
	for _, c := range []struct {
		name               string
		P, K, grid, phases int
		want               int
	}{
		{"qkv", 1024, 1536, 264, 1, 2},                         // 256 tasks of 4 pairs: one per block
		{"o", 768, 1536, 264, 1, 2},                            // 192 tasks; ks 4 would leave lanes one load per row
		{"gate_up", 8960, 1536, 264, 1, 2},                     // 9 rounds of 4 pairs beat 5 of 8
		{"down", 768, 8960, 264, 1, 8},                         // 3 rounds of one pair beat 1 of 4 (ks 2)
		{"tiny", 48, 96, 264, 1, 1},                            // K too short to split
		{"router", 64, 2048, 264, 1, 4},                        // 32 tasks of 2 pairs beat 8 of 8
		{"experts' gate_up", 768, 2048, 264, 8, 1},             // 768 tasks of 8 pairs: 3 rounds, as ks 2 and 4 (a tie keeps the smallest)
		{"experts' gate_up, one expert", 768, 2048, 264, 1, 2}, // alone, 96 tasks would leave 168 blocks idle
		{"experts' down", 1024, 768, 264, 8, 1},                // K too short to split
	} {
		if got := stepKS(c.P, c.K, c.grid, c.phases); got != c.want {
			t.Errorf("%s: stepKS(%d, %d, %d, %d) = %d, want %d", c.name, c.P, c.K, c.grid, c.phases, got, c.want)
		}
	}
}

// TestStepSplits: one piece per 8 keys of context, at least one, at most
// the warps per head (at least 32) and stepMaxSplits.
func TestStepSplits(t *testing.T) {
	for _, c := range []struct{ ctx, warps, want int }{{1, 176, 1}, {8, 176, 1}, {9, 176, 2}, {100, 176, 13}, {256, 176, 32},
		{4096, 176, 176}, {4096, 40, 40}, {4096, 8, 32}, {8000, 500, 256}, {131072, 176, 176}} {
		if got := stepSplits(c.ctx, c.warps); got != c.want {
			t.Errorf("stepSplits(%d, %d) = %d, want %d", c.ctx, c.warps, got, c.want)
		}
	}
}

// TestStepTCSplits: the tensor-core attention's pieces per set of query
// heads (2,112 warps: an H100's 264 resident blocks): a pass of 8 keys
// each, the count one of 1, 2, 3, 4, 6, 8, ... 256 rounded up (the
// surplus pieces empty), or down where up passes the warps per set or 256.
func TestStepTCSplits(t *testing.T) {
	for _, c := range []struct{ ctx, warps, sets, want int }{
		{1, 2112, 2, 1}, {8, 2112, 2, 1}, {9, 2112, 2, 2}, {17, 2112, 2, 3}, {25, 2112, 2, 4}, {33, 2112, 2, 6},
		{100, 2112, 2, 16}, {2000, 2112, 2, 256}, {8000, 2112, 2, 256}, {131072, 2112, 8, 256},
		{8000, 2112, 16, 128}, // 132 warps a set: 192 would pass it
		{8000, 40, 1, 32}, {8000, 8, 16, 1},
	} {
		if got := stepTCSplits(c.ctx, c.warps, c.sets); got != c.want {
			t.Errorf("stepTCSplits(%d, %d, %d) = %d, want %d", c.ctx, c.warps, c.sets, got, c.want)
		}
	}
}

// TestAttnSplits: the batched path's pieces per token on an H100 (132
// SMs) with two KV heads: a decode batch at a short context fills the GPU
// as before; long contexts get pieces of at most 256 keys, their count a
// power of two (each count is a graph of its own); in a step whose
// prompt rows go to flash only the decode rows count, in powers of two
// (the rows vary from step to step), and the step's blocks stay bounded;
// never pieces under ~32 keys.
func TestAttnSplits(t *testing.T) {
	for _, c := range []struct {
		name               string
		rows, T, ctx, want int
	}{
		{"c=64 decode at 112 keys", 64, 64, 112, 3},
		{"c=64 decode at 4,600 keys", 64, 64, 4600, 32},
		{"c=64 decode at 1,000 keys", 64, 64, 1000, 4},
		{"c=64 decode at 1,100 keys", 64, 64, 1100, 8},
		{"c=256 decode at 8k keys", 256, 256, 8000, 16},
		{"one row at 40 keys", 1, 1, 40, 2},
		{"one row at 32k keys", 1, 1, 32768, 32},
		{"65 decode rows beside a 225-token chunk", 65, 290, 4600, 8},
		{"3 decode rows beside a 225-token chunk", 3, 228, 900, 16},
		{"65 decode rows beside a 2,048-token chunk", 65, 2112, 4600, 2},
		{"decode rows beside the longest step", 65, 65535, 4600, 1},
		{"empty context", 1, 1, 0, 1},
	} {
		if got := attnSplits(132, c.rows, c.T, 2, c.ctx); got != c.want {
			t.Errorf("%s: attnSplits(132, %d, %d, 2, %d) = %d, want %d", c.name, c.rows, c.T, c.ctx, got, c.want)
		}
	}
}

// TestUnusedUnits: a backend fusing one-token steps only skips the fused
// GEMV units of 2 and 4 rows, one fusing up to 2 rows those of 4, one
// fusing up to 3 or 4 none; kernel names give their row count.
func TestUnusedUnits(t *testing.T) {
	for _, c := range []struct {
		fusedMaxT int
		want      []int
	}{{-1, []int{5, 6, 7, 8, 14, 15, 24, 33}}, {1, []int{5, 6, 7, 8, 14, 15, 24, 33}}, {2, []int{7, 8, 15, 24, 33}}, {3, nil}, {4, nil}} {
		var got []int
		for u := range kernelUnits {
			if unusedUnit(u, c.fusedMaxT) {
				got = append(got, u)
			}
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("FusedDecodeMaxT %d: unused units %v, want %v", c.fusedMaxT, got, c.want)
		}
	}
	for name, want := range map[string]int{"dgemv_silu_f8_4_2": 4, "dgemv_store_1_8": 1, "dgemv_addf_2_1": 2, "gemv_bf16_xbf16_2_8": 0, "decode_step_4": 0} {
		if got := dgemvRows(name); got != want {
			t.Errorf("dgemvRows(%q) = %d, want %d", name, got, want)
		}
	}
}

// TestStepKernelsAreLoaded: every head dim DecodeLayers takes (up to 256)
// maps to a decode_step kernel that the backend loads at start-up.
func TestStepKernelsAreLoaded(t *testing.T) {
	loaded := map[string]bool{}
	for _, n := range kernelNames() {
		loaded[n] = true
	}
	for hd := 2; hd <= 256; hd += 2 {
		epl := stepEPL(hd)
		for _, v := range stepVariants {
			if name := stepKernelName(epl, v); !loaded[name] || !isStepUnit(stepUnit(epl, v)) {
				t.Errorf("head dim %d, variant %d: elements per lane %d has kernel %q in unit %d, loaded %v",
					hd, v, epl, name, stepUnit(epl, v), loaded[name])
			}
		}
	}
}
