package cuda

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/mltest"
)

// TestFlashConformance runs the conformance suite with every attention
// step of a bf16 cache on the flash kernel, decodes and interleaved
// sequences included: at the f32 bar with q and p split into bf16 halves,
// and at the half bar with both rounded once (RoundActivations); in the
// 64-row form and in the wide one.
func TestFlashConformance(t *testing.T) {
	gpuOrSkip(t)
	var made []*Backend
	flash := func(o Options, wide bool) func() ml.Backend {
		return func() ml.Backend {
			b := newTestBackend(t, o)
			made = append(made, b)
			SetFlashMin(b, 0)
			if wide && !b.flashWideFor(64, 1<<20, 1, 1) {
				t.Fatalf("the device's %d bytes of shared memory a block leave no wide flash form", b.dev.sharedOptin)
			}
			return b
		}
	}
	defer func(w float64) { flashWideWaves = w }(flashWideWaves)
	for _, wide := range []bool{false, true} {
		suffix := ""
		flashWideWaves = math.Inf(1)
		if wide {
			suffix = "-wide"
			flashWideWaves = 0
		}
		t.Run("split"+suffix, func(t *testing.T) {
			o := mltest.DefaultOptions()
			o.Tol, o.MatMulTol, o.RoPETol = 1e-5, 5e-5, 2e-4
			o.WeightDTypes = []ml.DType{ml.F32}
			o.KVDTypes = []ml.DType{ml.BF16} // the long-context and window cases use the first
			mltest.Run(t, flash(Options{}, wide), o)
		})
		t.Run("round"+suffix, func(t *testing.T) {
			o := mltest.DefaultOptions()
			o.Tol, o.MatMulTol, o.RoPETol = 1e-5, 6e-3, 2e-4
			o.WeightDTypes = []ml.DType{ml.BF16}
			o.KVDTypes = []ml.DType{ml.BF16}
			mltest.Run(t, flash(Options{RoundActivations: true}, wide), o)
		})
	}
	// The cases laid out as the engine lays out a step (decodes first)
	// ran their per-token rows over a prefix of the step beside flash.
	prefix := 0
	for _, b := range made {
		prefix += b.prefixAttn
	}
	if len(made) > 0 && prefix == 0 {
		t.Error("no attention call beside flash took a prefix of the step")
	}
}

// TestFlashShared pins flash_attn's dynamic shared memory (as
// kernels/flash.cu lays it out): the 64-row forms within the 48 KiB any
// kernel may take at head dim 64, the wide forms within two blocks an H100
// SM (228 KiB, less up to 5 KiB a block of static and reserved memory).
func TestFlashShared(t *testing.T) {
	for _, c := range []struct {
		d, passes int
		wide      bool
		want      uint32
	}{
		{64, 1, false, (64 + 2*64) * 72 * 2},
		{64, 2, false, (2*64 + 2*64) * 72 * 2},
		{128, 1, false, (64 + 2*64) * 136 * 2},
		{128, 2, false, (2*64 + 2*64) * 136 * 2},
		{64, 1, true, (128 + 4*64) * 72 * 2},     // two stages
		{64, 2, true, (2*128 + 4*64) * 72 * 2},   // two stages
		{128, 1, true, (128 + 4*64) * 136 * 2},   // two stages
		{128, 2, true, (2*128 + 2*64) * 136 * 2}, // one stage
	} {
		got := flashShared(c.d, c.passes, c.wide)
		if got != c.want {
			t.Errorf("head dim %d, %d passes, wide %v: %d bytes, want %d", c.d, c.passes, c.wide, got, c.want)
		}
		if bound := uint32(228<<10/2 - 5<<10); c.wide && got > bound {
			t.Errorf("head dim %d, %d passes, wide: %d bytes, over %d", c.d, c.passes, got, bound)
		}
		if bound := uint32(defaultDynShared); !c.wide && c.d == 64 && got > bound {
			t.Errorf("head dim 64, %d passes: %d bytes, over %d", c.passes, got, bound)
		}
	}
}

// BenchmarkAttentionPrefill times one layer's attention for a prompt of T
// tokens of one sequence in Qwen2.5-1.5B's heads (12 q, 2 kv, dim 128),
// on the flash kernel (split and rounded; the 64-row form and the wide
// one) and on the per-token kernel.
func BenchmarkAttentionPrefill(bm *testing.B) {
	gpuOrSkip(bm)
	const H, KVH, D, blockSize = 12, 2, 128, 16
	for _, v := range []struct {
		name     string
		o        Options
		flashMin int
		wide     bool
	}{{"flash", Options{}, 0, false}, {"flash-round", Options{RoundActivations: true}, 0, false},
		{"flash-wide", Options{}, 0, true}, {"flash-round-wide", Options{RoundActivations: true}, 0, true},
		{"per-token", Options{}, math.MaxInt32, false}} {
		b := newTestBackend(bm, v.o)
		SetFlashMin(b, v.flashMin)
		// One prompt of each length, and eight 1,024-token prompts in one
		// step (a c=64 load's prompt step).
		for _, c := range []struct {
			name    string
			T, seqs int
		}{
			{"T=1024", 1024, 1}, {"T=2048", 2048, 1}, {"T=4096", 4096, 1}, {"T=8000", 8000, 1}, {"8x1024", 8192, 8}} {
			T, seqs := c.T, c.seqs
			if v.flashMin > 0 && T > 1024 && T < 8000 {
				continue // the per-token kernel is the slow reference, at the ends only
			}
			bm.Run(fmt.Sprintf("%s/%s", v.name, c.name), func(bm *testing.B) {
				defer func(w float64) { flashWideWaves = w }(flashWideWaves)
				flashWideWaves = math.Inf(1)
				if v.wide {
					flashWideWaves = 0
				}
				if v.wide && !b.flashWideFor(D, T, H/KVH, KVH) {
					bm.Skipf("the device's %d bytes of shared memory a block leave no wide flash form", b.dev.sharedOptin)
				}
				r := rand.New(rand.NewPCG(1, 2))
				L := T / seqs // each prompt's tokens
				perSeq := (L + blockSize - 1) / blockSize
				nb := seqs * perSeq
				cache, err := b.NewKVCache(1, nb, blockSize, KVH, D, ml.BF16)
				if err != nil {
					bm.Fatal(err)
				}
				defer b.FreeKVCache(cache)
				seq, pos, slots, tbl := make([]int32, T), make([]int32, T), make([]int32, T), make([]int32, nb)
				for i := range T {
					s, p := i/L, i%L
					seq[i], pos[i], slots[i] = int32(s), int32(p), int32(s*perSeq*blockSize+p)
				}
				for i := range tbl {
					tbl[i] = int32(i)
				}
				tensor := func(dt ml.DType, rows, cols int) ml.Tensor {
					x, err := b.NewTensor(dt, rows, cols)
					if err != nil {
						bm.Fatal(err)
					}
					return x
				}
				q, k, vv, dst := tensor(ml.F32, T, H*D), tensor(ml.F32, T, KVH*D), tensor(ml.F32, T, KVH*D), tensor(ml.F32, T, H*D)
				ts, ps, ss, bt := tensor(ml.I32, 1, T), tensor(ml.I32, 1, T), tensor(ml.I32, 1, T), tensor(ml.I32, 1, nb)
				if err := errors.Join(b.UploadF32(q, mltest.RandF32(r, T*H*D, 1)), b.UploadF32(k, mltest.RandF32(r, T*KVH*D, 1)),
					b.UploadF32(vv, mltest.RandF32(r, T*KVH*D, 1)), b.UploadI32(ts, seq), b.UploadI32(ps, pos),
					b.UploadI32(ss, slots), b.UploadI32(bt, tbl), b.WriteKV(cache, 0, k, vv, ss)); err != nil {
					bm.Fatal(err)
				}
				meta := &ml.AttentionMeta{NumTokens: T, NumSeqs: seqs, TokenSeq: ts, Positions: ps, BlockTables: bt, MaxBlocks: perSeq,
					MaxContext: L, HostTokenSeq: seq, NumHeads: H, NumKVHeads: KVH, HeadDim: D, Scale: float32(1 / math.Sqrt(D))}
				bm.ResetTimer()
				for range bm.N {
					if err := b.Attention(dst, q, cache, 0, meta); err != nil {
						bm.Fatal(err)
					}
				}
				if err := b.Sync(); err != nil {
					bm.Fatal(err)
				}
				bm.StopTimer()
				sec := bm.Elapsed().Seconds() / float64(bm.N)
				// Causal: L²/2 scores per head and prompt, 2 FLOPs each in Q·Kᵀ and in P·V.
				bm.ReportMetric(sec*1e3, "ms/op")
				bm.ReportMetric(4*float64(seqs)*float64(L)*float64(L)/2*H*D/sec/1e12, "TFLOP/s")
				for _, x := range []ml.Tensor{q, k, vv, dst, ts, ps, ss, bt} {
					b.Free(x)
				}
			})
		}
		b.Close()
	}
}

// TestExpertMMAShared pins expert_mma's dynamic shared memory (as
// kernels/moe.cu lays it out), keeps every form but the wide ones within
// the 48 KiB any kernel may take without opting in, and the wide ones
// within 112 KiB (two blocks an H100 SM).
func TestExpertMMAShared(t *testing.T) {
	for name, want := range map[string]uint32{
		"expert_mma_bf16_64_2":      3 * (64*40*2 + 2*64*40*2),
		"expert_mma_f8_64_1":        3 * (64*48 + 64*40*2),
		"expert_mma_bf16_8_2_deep":  4 * (64*72*2 + 2*8*72*2),
		"expert_mma_f8_8_2":         3 * (64*48 + 2*8*40*2),
		"expert_mma_bf16_64_1_wide": 4 * (128*72*2 + 64*72*2),
		"expert_mma_bf16_64_2_wide": 3 * (128*72*2 + 2*64*72*2),
		"expert_mma_f8_64_1_wide":   4 * (128*80 + 64*72*2),
		"expert_mma_f8_64_2_wide":   4 * (128*80 + 2*64*72*2),
		"expert_gemm_bf16":          0,
		"expert_mma_bf16_8_2_extra": 0,
		"expert_mma_bf16_8_2_wide":  0,
	} {
		if got := expertMMAShared(name); got != want {
			t.Errorf("%s: %d bytes, want %d", name, got, want)
		}
	}
	for _, name := range moeKernelNames() {
		bound := uint32(defaultDynShared)
		if strings.HasSuffix(name, "_wide") {
			bound = 112 << 10
		}
		if n := expertMMAShared(name); n > bound {
			t.Errorf("%s: %d bytes of dynamic shared memory, over %d", name, n, bound)
		}
	}
}

// TestExpertMMA checks the tensor-core grouped expert GEMM (bf16 and FP8
// weights) at the f32 bar with x split into bf16 halves, and at the bf16 bar with x
// rounded once, against the float64 reference, in shapes of both tile
// sizes (8-row tiles in the _deep form too, 64-row tiles in the 64-row
// form too): decode batches over many experts and prefills.
func TestExpertMMA(t *testing.T) {
	gpuOrSkip(t)
	cases := []struct{ E, N, K, T, k int }{
		{128, 200, 136, 64, 8}, // few rows per expert: 8-row tiles
		{8, 1536, 512, 40, 2},  // 8-row tiles, many output blocks
		{16, 130, 256, 300, 4}, // 64-row tiles, several per expert
		{4, 64, 2048, 500, 1},  // long K
		{8, 200, 336, 400, 2},  // 64-row tiles, the last weight block and K step short
		{8, 96, 64, 3, 2},      // a decode of few rows
		{128, 16, 16, 8200, 8}, // more than 65535 expert rows (an 8192-token step of top-8)
	}
	for _, wdt := range []ml.DType{ml.BF16, ml.F8} {
		for _, round := range []bool{false, true} {
			b := newTestBackend(t, Options{RoundActivations: round})
			r := rand.New(rand.NewPCG(3, 4))
			for _, c := range cases {
				if wdt == ml.F8 && c.K%16 != 0 {
					continue
				}
				if wdt == ml.BF16 && c.T*c.k <= expertGemvMaxR {
					continue // the GEMV's
				}
				checkExperts(t, b, r, wdt, round, c.E, c.N, c.K, c.T, c.k)
				if wdt == ml.BF16 && c.T*c.k < moeSmallTileRows*c.E {
					// 8-row tiles: the plain form too (the default is _deep).
					expertMMADeep = false
					checkExperts(t, b, r, wdt, round, c.E, c.N, c.K, c.T, c.k)
					expertMMADeep = true
				}
				if c.T*c.k >= moeSmallTileRows*c.E {
					// 64-row tiles: the 64-row form too (the default is _wide).
					expertMMAWide = false
					checkExperts(t, b, r, wdt, round, c.E, c.N, c.K, c.T, c.k)
					expertMMAWide = true
				}
			}
			b.Close()
		}
	}
}

// checkExperts runs one MatMulExperts of random experts stored as wdt and
// compares it with the float64 product of the values the weight holds.
func checkExperts(t *testing.T, b *Backend, r *rand.Rand, wdt ml.DType, round bool, E, N, K, T, k int) {
	t.Helper()
	R := T * k
	w := mltest.RandF32(r, E*N*K, 0.5)
	if wdt == ml.BF16 {
		for i := range w {
			w[i] = mltest.Round(ml.BF16, w[i])
		}
	}
	x := mltest.RandF32(r, T*K, 1)
	ex := make([]int32, R)
	for i := range ex {
		ex[i] = int32(r.IntN(E))
	}
	wt, err := b.LoadWeight(E*N, K, mltest.Encode(ml.F32, w), ml.F32, wdt)
	if err != nil {
		t.Fatal(err)
	}
	if wdt == ml.F8 {
		// The values the weight holds: codes times their row's scale.
		codes := make([]uint8, K)
		for n := range E * N {
			row := w[n*K : (n+1)*K]
			s := ml.QuantizeF8Row(codes, row)
			for i, q := range codes {
				row[i] = ml.F8Value(q) * s
			}
		}
	}
	xt, _ := b.NewTensor(ml.F32, T, K)
	et, _ := b.NewTensor(ml.I32, R, 1)
	dst, _ := b.NewTensor(ml.F32, R, N)
	if err := errors.Join(b.UploadF32(xt, x), b.UploadI32(et, ex), b.MatMulExperts(dst, xt, wt, et)); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, R*N)
	if err := b.Download(got, dst); err != nil {
		t.Fatal(err)
	}
	xin := x
	tol := 2e-5
	if round {
		xin = make([]float32, len(x))
		for i, v := range x {
			xin[i] = mltest.Round(ml.BF16, v)
		}
		tol = 1e-5 // the reference rounds x too; only the sums' order differs
	}
	want := mltest.RefMatMulExperts(xin, w, ex, N, K)
	var worst, scale float64
	for i, v := range want {
		worst = max(worst, math.Abs(float64(got[i])-v))
		scale = max(scale, math.Abs(v))
	}
	if e := worst / max(1, scale); e > tol {
		t.Errorf("%s round=%v E=%d N=%d K=%d T=%d k=%d: error %.3g > %.3g", wdt, round, E, N, K, T, k, e, tol)
	} else {
		t.Logf("%s round=%v E=%d N=%d K=%d T=%d k=%d: error %.3g", wdt, round, E, N, K, T, k, e)
	}
	for _, x := range []ml.Tensor{wt, xt, et, dst} {
		b.Free(x)
	}
}

// TestUseFlash: which attention steps take the flash kernel (no GPU
// needed), and its form's tile of tokens: the wide form's only where its
// grid fills flashWideWaves waves and the device allows its shared memory.
func TestUseFlash(t *testing.T) {
	b := &Backend{dev: &deviceInfo{major: 9, sms: 132}, flashMin: defaultFlashMin}
	bf16, f32 := &kvCache{dt: ml.BF16, kvh: 2}, &kvCache{dt: ml.F32, kvh: 2}
	defer func(w float64) { flashWideWaves = w }(flashWideWaves)
	flashWideWaves = 2 // 528 blocks of an H100's 132 SMs
	for _, c := range []struct {
		T            int
		optin        int32
		round        bool
		D, g, want   int
		wantUseFlash bool
	}{
		{1024, 232448, false, 128, 6, 10, true}, // 98 wide blocks (tiles of 21 tokens, 2 KV heads): narrow
		{5523, 232448, false, 128, 6, 10, true}, // 263 tiles, 526 blocks
		{5524, 232448, false, 128, 6, 21, true}, // 264 tiles, 528 blocks: two waves
		{8000, 232448, true, 128, 6, 21, true},
		{8000, 232448, false, 64, 64, 2, true},
		{8000, 232448, false, 128, 65, 1, true}, // the narrow form takes none
		{200, 232448, false, 128, 65, 0, false}, // 400 wide blocks: narrow, which takes none
		{8000, 232448, false, 128, 129, 0, false},
		{8000, 101376, false, 128, 6, 10, true}, // an sm_86's opt-in: the narrow form
		{8000, 101376, false, 64, 6, 21, true},
		{8000, 101376, true, 128, 65, 0, false},
	} {
		b.dev.sharedOptin, b.opts.RoundActivations = c.optin, c.round
		H := c.g * bf16.kvh
		tb := flashTileTokens(c.g, b.flashWideFor(c.D, c.T, c.g, bf16.kvh))
		got := b.useFlash(bf16, c.T, 1, H, c.D, H*c.D, H*c.D)
		if tb != c.want || got != c.wantUseFlash {
			t.Errorf("%d tokens, opt-in %d, round %v, head dim %d, group %d: %d tokens a tile, useFlash %v; want %d, %v",
				c.T, c.optin, c.round, c.D, c.g, tb, got, c.want, c.wantUseFlash)
		}
	}
	flashWideWaves, b.dev.sharedOptin, b.opts.RoundActivations = math.Inf(1), 0, false
	for _, c := range []struct {
		name                              string
		kc                                *kvCache
		T, seqs, H, D, qStride, outStride int
		major                             int32
		want                              bool
	}{
		{"prefill", bf16, 1024, 1, 12, 128, 2048, 1536, 9, true},
		{"prefill, head dim 64", bf16, 200, 2, 14, 64, 1152, 896, 9, true},
		{"decode batch", bf16, 64, 64, 12, 128, 2048, 1536, 9, false},
		{"decodes and a short chunk", bf16, 100, 64, 12, 128, 2048, 1536, 9, false},
		{"decodes and a long chunk", bf16, 1100, 64, 12, 128, 2048, 1536, 9, true},
		{"f32 cache", f32, 1024, 1, 12, 128, 2048, 1536, 9, false},
		{"head dim 96", bf16, 1024, 1, 12, 96, 2048, 1536, 9, false},
		{"odd stride", bf16, 1024, 1, 12, 128, 2049, 1536, 9, false},
		{"Turing", bf16, 1024, 1, 12, 128, 2048, 1536, 7, false},
		{"GQA group of 64", bf16, 1024, 1, 128, 128, 2048, 1536, 9, true},
		{"GQA group of 65", bf16, 1024, 1, 130, 128, 2048, 1536, 9, false},
	} {
		b.dev.major = c.major
		if got := b.useFlash(c.kc, c.T, c.seqs, c.H, c.D, c.qStride, c.outStride); got != c.want {
			t.Errorf("%s: useFlash = %v, want %v", c.name, got, c.want)
		}
	}
}

// BenchmarkMatMulExperts times Qwen3-30B-A3B's grouped expert products (128
// experts, top-8) for a decode batch of T tokens and a prompt. GB/s counts
// the bytes of the experts the batch routes to, each read once; TFLOP/s
// the product's 2·R·N·K (one pass).
func BenchmarkMatMulExperts(bm *testing.B) {
	gpuOrSkip(bm)
	for _, round := range []bool{false, true} {
		b := newTestBackend(bm, Options{DisableGraphs: true, RoundActivations: round})
		r := rand.New(rand.NewPCG(1, 1))
		const E, topK = 128, 8
		for _, sh := range []struct {
			name string
			N, K int
		}{{"gateup", 1536, 2048}, {"down", 2048, 768}} {
			w, err := b.LoadWeight(E*sh.N, sh.K, randBytes(r, E*sh.N*sh.K, ml.BF16, 0.05), ml.BF16, ml.BF16)
			if err != nil {
				bm.Fatal(err)
			}
			for _, T := range []int{1, 8, 64, 256, 2048} {
				R := T * topK
				ex := make([]int32, R)
				used := map[int32]bool{}
				for t := range T {
					perm := r.Perm(E)
					for j := range topK {
						ex[t*topK+j] = int32(perm[j])
						used[int32(perm[j])] = true
					}
				}
				x, _ := b.NewTensor(ml.F32, T, sh.K)
				et, _ := b.NewTensor(ml.I32, R, 1)
				d, _ := b.NewTensor(ml.F32, R, sh.N)
				if err := b.UploadI32(et, ex); err != nil {
					bm.Fatal(err)
				}
				// 8-row tiles in both forms (base: expertMMADeep off), 64-row
				// tiles too (base: expertMMAWide off).
				for _, v := range []string{"base", "deep", "wide"} {
					if v == "deep" && (R <= expertGemvMaxR || R >= moeSmallTileRows*E) ||
						v == "wide" && R < moeSmallTileRows*E {
						continue
					}
					bm.Run(fmt.Sprintf("round=%v/%s/T=%d/%s", round, sh.name, T, v), func(bm *testing.B) {
						defer func() { expertMMADeep, expertMMAWide = true, true }()
						expertMMADeep, expertMMAWide = v == "deep", v == "wide"
						for i := 0; i < bm.N; i++ {
							if err := b.MatMulExperts(d, x, w, et); err != nil {
								bm.Fatal(err)
							}
						}
						if err := b.Sync(); err != nil {
							bm.Fatal(err)
						}
						sec := bm.Elapsed().Seconds() / float64(bm.N)
						bm.ReportMetric(sec*1e3, "ms/op")
						bm.ReportMetric(float64(len(used)*sh.N*sh.K*2)/sec/1e9, "GB/s")
						bm.ReportMetric(2*float64(R)*float64(sh.N)*float64(sh.K)/sec/1e12, "TFLOP/s")
					})
				}
				for _, t := range []ml.Tensor{x, et, d} {
					b.Free(t)
				}
			}
			b.Free(w)
		}
		b.Close()
	}
}

// TestDynamicSharedOptIn launches a kernel with more dynamic shared memory
// than the 48 KiB any kernel may take (the launch opts the kernel in
// first), and refuses more than the device allows.
func TestDynamicSharedOptIn(t *testing.T) {
	gpuOrSkip(t)
	b := newTestBackend(t, Options{DisableGraphs: true})
	defer b.Close()
	x, _ := b.NewTensor(ml.F32, 4, 64)
	want := mltest.RandF32(rand.New(rand.NewPCG(1, 2)), 4*64, 1)
	if err := b.UploadF32(x, want); err != nil {
		t.Fatal(err)
	}
	sum := func(shmem uint32) error {
		if err := b.lock(); err != nil {
			return err
		}
		defer b.mu.Unlock()
		xx := x.(*tensor)
		st := b.argStart()
		b.aP(xx.ptr)
		b.aP(xx.ptr)
		b.aI(1)
		b.aL(int64(len(want)))
		b.aI(64)
		b.aP(0)
		return b.pushShared("splitk_sum", g1(1), g1(256), shmem, st) // splitk_sum's arguments (pushSplitKSum)
	}
	if err := sum(64 << 10); err != nil {
		t.Fatalf("64 KiB: %v", err)
	}
	if err := sum(uint32(b.dev.sharedOptin) + 1); !errors.Is(err, ml.ErrUnsupported) {
		t.Errorf("%d bytes: %v, want ErrUnsupported", b.dev.sharedOptin+1, err)
	}
	got := make([]float32, len(want))
	if err := b.Download(got, x); err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("element %d: %v after an in-place sum of one plane, want %v", i, got[i], want[i])
		}
	}
	if b.dynShared[b.fns["splitk_sum"]] != 64<<10 {
		t.Errorf("splitk_sum opted in to %d bytes, want %d", b.dynShared[b.fns["splitk_sum"]], 64<<10)
	}
}
