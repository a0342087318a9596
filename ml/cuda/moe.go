package cuda

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/llmserve/llmserve/ml"
)

// The per-head norm and mixture-of-experts ops (kernels/moe.cu).

// moeMaxE bounds the experts of TopKSoftmax and MatMulExperts' grouping
// (MOE_MAXE); moeTM is expert_gemm's row tile (MOE_TM); rows up to
// expertGemvMaxR take the per-row GEMV, which reads only the chosen
// experts' weights once per row (decode), larger ones the tiled GEMM over
// rows grouped by expert (prefill).
const (
	moeMaxE        = 1024
	moeTM          = 32
	moeTN          = 64
	expertGemvMaxR = 16
	// moeSmallTileRows: below this many rows per expert on average, the
	// grouped GEMM takes 8-row tiles.
	moeSmallTileRows = 16
)

// moeKernelNames are moe.cu's entry points.
func moeKernelNames() []string {
	n := []string{"rmsnorm_heads", "topk_softmax", "scatter_add", "moe_align", "splitk_sum", "f8_to_bf16"}
	for _, s := range []string{"f32", "bf16", "f16"} {
		n = append(n, "expert_gemv_"+s, "expert_gemm_"+s, "expert_gemm8_"+s)
	}
	for _, w := range []string{"bf16", "f8"} {
		for _, tok := range []int{8, 64} {
			for _, passes := range []int{1, 2} {
				n = append(n, fmt.Sprintf("expert_mma_%s_%d_%d", w, tok, passes))
			}
		}
	}
	n = append(n, "expert_mma_bf16_8_1_deep", "expert_mma_bf16_8_2_deep")
	for _, w := range []string{"bf16", "f8"} {
		for _, passes := range []int{1, 2} {
			n = append(n, fmt.Sprintf("expert_mma_%s_64_%d_wide", w, passes))
		}
	}
	return n
}

// expertMMADeep makes bf16 experts' 8-row tiles (a decode batch over many
// experts) take expert_mma's _deep form: 64 columns a stage and four stages
// instead of 32 and three, twice the bytes in flight a block. On an H100
// (BenchmarkMatMulExperts, .../base against .../deep) it read Qwen3-30B-A3B's
// routed experts 1.3 to 1.4 times as fast at 8 and 64 tokens. A variable so
// that the benchmark and the tests can run the plain form beside it.
var expertMMADeep = true

// expertMMAWide makes 64-row tiles (prefills, and the dense FP8 products
// of fp8.go) take expert_mma's _wide form: 128 weight rows a block instead
// of 64 and warps of 64 (FP8: 32) weight rows, so that each ldmatrix feeds
// more mma (the 64-row form is bound by shared-memory reads). It takes 76
// to 112 KiB of shared memory a block; a device that allows less keeps the
// 64-row form. A variable so that the benchmarks and the tests can run both.
var expertMMAWide = true

// RMSNormHeads implements ml.Backend.
func (b *Backend) RMSNormHeads(x, w ml.Tensor, headDim int, eps float32) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	xx, err := b.f32(x, "norm-heads x")
	if err != nil {
		return err
	}
	ww, err := b.f32(w, "norm-heads weight")
	if err != nil {
		return err
	}
	if headDim <= 0 || xx.cols%headDim != 0 || ww.n() != headDim {
		return shapeErr("norm-heads x %dx%d, weight %dx%d, head dim %d", xx.rows, xx.cols, ww.rows, ww.cols, headDim)
	}
	n := xx.rows * (xx.cols / headDim)
	if n == 0 {
		return nil
	}
	b.invalidate(xx.ptr, xx.bytes())
	st := b.argStart()
	b.aP(xx.ptr)
	b.aP(ww.ptr)
	b.aI(headDim)
	b.aF(eps)
	return b.push("rmsnorm_heads", g1(n), g1(threadsFor(headDim, 256)), st)
}

// TopKSoftmax implements ml.Backend (k <= 32, E <= 1024).
func (b *Backend) TopKSoftmax(weights, ids, logits ml.Tensor, k int, normalize bool) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	lg, err := b.f32(logits, "topk logits")
	if err != nil {
		return err
	}
	wt, err := b.f32(weights, "topk weights")
	if err != nil {
		return err
	}
	T, E := lg.rows, lg.cols
	if k <= 0 || k > E || wt.n() < T*k {
		return shapeErr("topk %d of logits %dx%d into weights %dx%d", k, T, E, wt.rows, wt.cols)
	}
	if k > 32 || E > moeMaxE {
		return fmt.Errorf("%w: top-%d of %d experts (max top-32 of %d)", ml.ErrUnsupported, k, E, moeMaxE)
	}
	ix, err := b.i32(ids, "topk ids", T*k)
	if err != nil {
		return err
	}
	if T == 0 {
		return nil
	}
	b.invalidate(wt.ptr, int64(T*k)*4)
	b.invalidate(ix.ptr, int64(T*k)*4)
	norm := 0
	if normalize {
		norm = 1
	}
	st := b.argStart()
	b.aP(wt.ptr)
	b.aP(ix.ptr)
	b.aP(lg.ptr)
	b.aI(E)
	b.aI(k)
	b.aI(norm)
	return b.push("topk_softmax", g1(T), g1(32), st)
}

// MatMulExperts implements ml.Backend: a GEMV per row for a few rows
// (reading only the chosen experts), else rows grouped by expert on the
// device (moe_align) and a tiled GEMM per group of rows of one expert: on
// tensor cores for bf16 and FP8 weights (expert_mma; x split into bf16
// halves unless RoundActivations; FP8 takes it for any number of rows),
// else on CUDA cores. All launch shapes depend only on the operands'
// shapes (graph-safe).
func (b *Backend) MatMulExperts(dst, x, w, experts ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	d, err := b.f32(dst, "experts dst")
	if err != nil {
		return err
	}
	xx, err := b.f32(x, "experts x")
	if err != nil {
		return err
	}
	ww, err := b.tens(w, "experts w")
	if err != nil {
		return err
	}
	s, ok := dtSuffix(ww.dt)
	f8 := ww.dt == ml.F8
	if !ok && !f8 {
		return fmt.Errorf("%w: expert weight dtype %v", ml.ErrUnsupported, ww.dt)
	}
	R, N, K := d.rows, d.cols, xx.cols
	if f8 && (K%16 != 0 || b.dev.major < 8) {
		return fmt.Errorf("%w: fp8 experts of %d columns on sm_%d%d (need a multiple of 16 and sm_80 or later)", ml.ErrUnsupported, K, b.dev.major, b.dev.minor)
	}
	if ww.cols != K || N == 0 || ww.rows%N != 0 || xx.rows == 0 || R%xx.rows != 0 {
		return shapeErr("experts dst %dx%d = x %dx%d · experts of %dx%d", d.rows, d.cols, xx.rows, xx.cols, ww.rows, ww.cols)
	}
	E, fan := ww.rows/N, R/xx.rows
	ex, err := b.i32(experts, "experts ids", R)
	if err != nil {
		return err
	}
	if R == 0 {
		return nil
	}
	// The GEMV's grid holds one row a block in y (at most 65535); the
	// grouped path's tiles are bounded below.
	if R > expertGemvMaxR && E > moeMaxE {
		return fmt.Errorf("%w: %d expert rows over %d experts", ml.ErrUnsupported, R, E)
	}
	b.invalidate(d.ptr, d.bytes())
	if R <= expertGemvMaxR && !f8 {
		st := b.argStart()
		b.aP(d.ptr)
		b.aP(xx.ptr)
		b.aP(ww.ptr)
		b.aP(ex.ptr)
		b.aI(N)
		b.aI(K)
		b.aI(E)
		b.aI(fan)
		return b.push("expert_gemv_"+s, g3((N+7)/8, R, 1), g1(256), st)
	}
	// Few rows per expert (a decode batch over many experts): 8-row tiles,
	// which a larger tile would mostly pad.
	few := R < moeSmallTileRows*E
	tm, kernel := moeTM, "expert_gemm_"+s
	if few {
		tm, kernel = 8, "expert_gemm8_"+s
	}
	mma := f8 || (ww.dt == ml.BF16 && K%8 == 0 && b.dev.major >= 8 && !b.opts.ExactActivations)
	var x16 uint64
	if mma {
		tm = 64
		if few {
			tm = 8
		}
		if kernel, x16, err = b.expertMMA(ww, xx, tm); err != nil {
			return err
		}
	}
	maxTiles := (R+tm-1)/tm + E
	if maxTiles > 65535 {
		return fmt.Errorf("%w: %d expert row tiles", ml.ErrUnsupported, maxTiles)
	}
	// One buffer: sorted rows (maxTiles*tm), each tile's expert, the tile count.
	nSorted := int64(maxTiles) * int64(tm)
	if err := b.ensure(&b.moeGroup, (nSorted+int64(maxTiles)+1)*4); err != nil {
		return err
	}
	sorted := b.moeGroup.ptr
	tileExp := sorted + uint64(nSorted*4)
	numTiles := tileExp + uint64(maxTiles*4)
	st := b.argStart()
	b.aP(ex.ptr)
	b.aI(R)
	b.aI(E)
	b.aP(sorted)
	b.aP(tileExp)
	b.aP(numTiles)
	b.aI(maxTiles)
	b.aI(tm)
	if err := b.push("moe_align", g1(1), g1(1024), st); err != nil {
		return err
	}
	if mma {
		return b.pushExpertMMA(kernel, d.ptr, d, xx, ww, x16, sorted, tileExp, numTiles, maxTiles, 1, R, fan)
	}
	st = b.argStart()
	b.aP(d.ptr)
	b.aP(xx.ptr)
	b.aP(ww.ptr)
	b.aP(sorted)
	b.aP(tileExp)
	b.aP(numTiles)
	b.aI(N)
	b.aI(K)
	b.aI(fan)
	return b.push(kernel, g3((N+moeTN-1)/moeTN, maxTiles, 1), g1(256), st)
}

// expertMMA picks the expert_mma kernel of weight w and tm-row tiles and
// records x's bf16 planes (split into halves, or rounded once under
// RoundActivations), returning the kernel and the planes' address.
func (b *Backend) expertMMA(w, x *tensor, tm int) (string, uint64, error) {
	wname := "bf16"
	if w.dt == ml.F8 {
		wname = "f8"
	}
	x16, passes, err := b.bf16Planes(x)
	if err != nil {
		return "", 0, err
	}
	kernel := fmt.Sprintf("expert_mma_%s_%d_%d", wname, tm, passes)
	switch {
	case expertMMADeep && tm == 8 && w.dt == ml.BF16:
		kernel += "_deep"
	case expertMMAWide && tm == 64 && int64(expertMMAShared(kernel+"_wide")) <= int64(b.dev.sharedOptin):
		kernel += "_wide"
	}
	return kernel, x16, nil
}

// expertMMARows is the weight rows (outputs) a block of expert_mma kernel
// name computes: EMW_BM for the _wide forms, else EM_BN (kernels/moe.cu).
func expertMMARows(name string) int {
	if strings.HasSuffix(name, "_wide") {
		return 128
	}
	return 64
}

// pushExpertMMA records expert_mma over tiles rows of d (0 pointers for
// sorted, tileExp and numTiles: a dense product of R rows of x), into dst
// (d's address, or slices planes of R×N partial sums when slices > 1).
func (b *Backend) pushExpertMMA(kernel string, dst uint64, d, x, w *tensor, x16, sorted, tileExp, numTiles uint64, tiles, slices, R, fan int) error {
	N, K := d.cols, x.cols
	st := b.argStart()
	b.aP(dst)
	b.aP(x16)
	b.aL(int64(x.rows) * int64(K)) // the lo plane's offset
	b.aP(w.ptr)
	b.aP(w.scales)
	b.aP(sorted)
	b.aP(tileExp)
	b.aP(numTiles)
	b.aI(R)
	b.aI(N)
	b.aI(K)
	b.aI(fan)
	bm := expertMMARows(kernel)
	return b.pushShared(kernel, g3((N+bm-1)/bm, tiles, slices), g1(128), expertMMAShared(kernel), st)
}

// expertMMAShared is the dynamic shared memory of expert_mma kernel name
// (expert_mma_<w>_<tok>_<passes>[_deep|_wide]), as kernels/moe.cu lays it
// out: per stage expertMMARows weight rows of BK columns (bf16 rows padded
// by 8 elements, FP8 rows by 16 bytes) and each x plane's tok rows of BK+8
// bf16. The _wide forms take four stages where they fit in 112 KiB (two
// blocks an H100 SM), else three.
func expertMMAShared(name string) uint32 {
	base := strings.TrimPrefix(name, "expert_mma_")
	deep, wide := strings.HasSuffix(base, "_deep"), strings.HasSuffix(base, "_wide")
	f := strings.Split(strings.TrimSuffix(strings.TrimSuffix(base, "_deep"), "_wide"), "_")
	if len(f) != 3 {
		return 0
	}
	tok, err1 := strconv.Atoi(f[1])
	passes, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil {
		return 0
	}
	if wide && tok != 64 {
		return 0
	}
	bk, stages, rows := 32, 3, expertMMARows(name)
	if deep || wide {
		bk, stages = 64, 4
	}
	wBytes := rows * (bk + 8) * 2
	if f[0] == "f8" {
		wBytes = rows * (bk + 16)
	}
	stage := wBytes + passes*tok*(bk+8)*2
	if wide && 4*stage > 112<<10 {
		stages = 3
	}
	return uint32(stages * stage)
}

// ScatterAdd implements ml.Backend. A run of equal adjacent indices is
// summed in order and added once; repeats that are not adjacent are added
// in an unspecified order (atomics).
func (b *Backend) ScatterAdd(dst, src, idx, scale ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	d, err := b.f32(dst, "scatter dst")
	if err != nil {
		return err
	}
	sr, err := b.f32(src, "scatter src")
	if err != nil {
		return err
	}
	if d.cols != sr.cols {
		return shapeErr("scatter dst %dx%d src %dx%d", d.rows, d.cols, sr.rows, sr.cols)
	}
	ix, err := b.i32(idx, "scatter idx", sr.rows)
	if err != nil {
		return err
	}
	var sp uint64
	if scale != nil {
		sc, err := b.f32(scale, "scatter scale")
		if err != nil {
			return err
		}
		if sc.n() < sr.rows {
			return shapeErr("scatter scale %dx%d for %d rows", sc.rows, sc.cols, sr.rows)
		}
		sp = sc.ptr
	}
	if sr.rows == 0 {
		return nil
	}
	if sr.rows > 1<<31-1 {
		return fmt.Errorf("%w: scatter of %d rows", ml.ErrUnsupported, sr.rows)
	}
	b.invalidate(d.ptr, d.bytes())
	st := b.argStart()
	b.aP(d.ptr)
	b.aP(sr.ptr)
	b.aP(ix.ptr)
	b.aP(sp)
	b.aI(d.cols)
	b.aI(sr.rows)
	return b.push("scatter_add", g1(sr.rows), g1(threadsFor(d.cols, 256)), st)
}
