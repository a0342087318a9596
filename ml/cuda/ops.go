package cuda

import (
	"fmt"
	"math"
	"slices"

	"github.com/llmserve/llmserve/ml"
)

func dtSuffix(dt ml.DType) (string, bool) {
	switch dt {
	case ml.F32:
		return "f32", true
	case ml.BF16:
		return "bf16", true
	case ml.F16:
		return "f16", true
	}
	return "", false
}

// kvSuffix names a KV cache dtype's kernels (f32, bf16, or f8: E4M3 with
// scale 1).
func kvSuffix(dt ml.DType) string {
	if dt == ml.F8 {
		return "f8"
	}
	s, _ := dtSuffix(dt)
	return s
}

func g1(x int) [3]uint32       { return [3]uint32{uint32(x), 1, 1} }
func g3(x, y, z int) [3]uint32 { return [3]uint32{uint32(x), uint32(y), uint32(z)} }

// threadsFor picks a block size (multiple of 32, ≤ max) for n elements per row.
func threadsFor(n, maxT int) int {
	t := (n + 31) / 32 * 32
	return min(max(t, 32), maxT)
}

// gridFor sizes a grid-stride launch over n elements.
func gridFor(n int64, threads int) int {
	g := (n + int64(threads) - 1) / int64(threads)
	return int(min(max(g, 1), 65535*8))
}

func shapeErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrShape}, a...)...)
}

func (b *Backend) f32(t ml.Tensor, what string) (*tensor, error) {
	x, err := b.tens(t, what)
	if err != nil {
		return nil, err
	}
	if x.dt != ml.F32 {
		return nil, fmt.Errorf("%w: %s must be float32, is %v", ErrShape, what, x.dt)
	}
	return x, nil
}

func (b *Backend) i32(t ml.Tensor, what string, need int) (*tensor, error) {
	x, err := b.tens(t, what)
	if err != nil {
		return nil, err
	}
	if x.dt != ml.I32 {
		return nil, fmt.Errorf("%w: %s must be int32, is %v", ErrShape, what, x.dt)
	}
	if x.n() < need {
		return nil, shapeErr("%s has %d elements, need %d", what, x.n(), need)
	}
	return x, nil
}

// setShadow returns the bf16 copy buffer a norm/SiLU writing dst should fill
// (0 when shadows are off) and records dst as its source.
func (b *Backend) setShadow(dst *tensor) (uint64, error) {
	b.shadow.valid = false
	if !b.useShadow {
		return 0, nil
	}
	if err := b.ensure(&b.sh16, int64(dst.n())*2); err != nil {
		return 0, err
	}
	b.shadow.ptr, b.shadow.rows, b.shadow.cols, b.shadow.valid = dst.ptr, dst.rows, dst.cols, true
	return b.sh16.ptr, nil
}

// shadowed reports whether the bf16 copy buffer holds all of f32 x: the
// norm or SiLU that wrote x wrote it there too, and nothing wrote x since.
func (b *Backend) shadowed(x *tensor) bool {
	return b.shadow.valid && b.shadow.ptr == x.ptr && b.shadow.rows == x.rows && b.shadow.cols == x.cols
}

// Embedding implements ml.Backend.
func (b *Backend) Embedding(dst, table, ids ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	d, err := b.f32(dst, "embedding dst")
	if err != nil {
		return err
	}
	tb, err := b.tens(table, "embedding table")
	if err != nil {
		return err
	}
	s, ok := dtSuffix(tb.dt)
	if tb.dt == ml.F8 {
		s, ok = "f8", true
	}
	if !ok {
		return fmt.Errorf("%w: embedding table dtype %v", ml.ErrUnsupported, tb.dt)
	}
	id, err := b.i32(ids, "embedding ids", d.rows)
	if err != nil {
		return err
	}
	if d.cols != tb.cols {
		return shapeErr("embedding dst %dx%d, table %dx%d", d.rows, d.cols, tb.rows, tb.cols)
	}
	if d.rows == 0 {
		return nil
	}
	b.invalidate(d.ptr, d.bytes())
	st := b.argStart()
	b.aP(d.ptr)
	b.aP(tb.ptr)
	if tb.dt == ml.F8 {
		b.aP(tb.scales)
	}
	b.aP(id.ptr)
	b.aI(d.cols)
	b.aI(tb.rows)
	return b.push("embedding_"+s, g1(d.rows), g1(threadsFor(d.cols, 256)), st)
}

func (b *Backend) normArgs(dst, x, w ml.Tensor) (*tensor, *tensor, *tensor, string, error) {
	d, err := b.f32(dst, "norm dst")
	if err != nil {
		return nil, nil, nil, "", err
	}
	xx, err := b.f32(x, "norm input")
	if err != nil {
		return nil, nil, nil, "", err
	}
	ww, err := b.tens(w, "norm weight")
	if err != nil {
		return nil, nil, nil, "", err
	}
	s, ok := dtSuffix(ww.dt)
	if !ok {
		return nil, nil, nil, "", fmt.Errorf("%w: norm weight dtype %v", ml.ErrUnsupported, ww.dt)
	}
	if d.rows != xx.rows || d.cols != xx.cols || ww.n() != xx.cols {
		return nil, nil, nil, "", shapeErr("norm dst %dx%d, x %dx%d, w %dx%d", d.rows, d.cols, xx.rows, xx.cols, ww.rows, ww.cols)
	}
	return d, xx, ww, s, nil
}

// RMSNorm implements ml.Backend.
func (b *Backend) RMSNorm(dst, x, w ml.Tensor, eps float32) error {
	return b.rmsNorm(dst, x, w, eps, nil)
}

// rmsNorm is RMSNorm; with next (the weight of the product that alone
// reads dst) where normBF16Only allows, dst's rows are written in bf16
// only (its shadow), and its f32 rows are left as they were.
func (b *Backend) rmsNorm(dst, x, w ml.Tensor, eps float32, next ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	d, xx, ww, s, err := b.normArgs(dst, x, w)
	if err != nil || d.rows == 0 {
		return err
	}
	b.invalidate(d.ptr, d.bytes())
	sh, err := b.setShadow(d)
	if err != nil {
		return err
	}
	st := b.argStart()
	b.aP(b.normF32Dst(d, sh, next))
	b.aP(sh)
	b.aP(xx.ptr)
	b.aP(ww.ptr)
	b.aI(d.cols)
	b.aF(eps)
	return b.push("rmsnorm_"+s, g1(d.rows), g1(threadsFor((d.cols+3)/4, 1024)), st)
}

// AddRMSNorm implements ml.Backend.
func (b *Backend) AddRMSNorm(residual, dst, x, w ml.Tensor, eps float32) error {
	return b.addRMSNorm(residual, dst, x, w, eps, nil)
}

// normF32Dst is the f32 output pointer of a norm into d whose bf16 copy
// goes to sh: 0 (none) where normBF16Only allows it for next.
func (b *Backend) normF32Dst(d *tensor, sh uint64, next ml.Tensor) uint64 {
	if sh != 0 && next != nil && b.normBF16Only(d.rows, next) {
		return 0
	}
	return d.ptr
}

// normBF16Only reports whether a norm's T rows may be written in bf16
// alone when only the product with weight w reads them: MatMul takes the
// norm's bf16 copy (cuBLAS on bf16 operands) for bf16 weights past the
// GEMV sizes under rounded activations, so the f32 rows would go unread.
func (b *Backend) normBF16Only(T int, w ml.Tensor) bool {
	ww, ok := w.(*tensor)
	return ok && ww != nil && ww.dt == ml.BF16 && b.useShadow && b.opts.RoundActivations && !b.opts.ExactActivations &&
		T > max(b.opts.SkinnyMaxT, b.opts.GemvMaxT)
}

// addRMSNorm is AddRMSNorm; next as in rmsNorm.
func (b *Backend) addRMSNorm(residual, dst, x, w ml.Tensor, eps float32, next ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	d, xx, ww, s, err := b.normArgs(dst, x, w)
	if err != nil {
		return err
	}
	r, err := b.f32(residual, "residual")
	if err != nil {
		return err
	}
	if r.rows != xx.rows || r.cols != xx.cols {
		return shapeErr("residual %dx%d, x %dx%d", r.rows, r.cols, xx.rows, xx.cols)
	}
	if d.rows == 0 {
		return nil
	}
	b.invalidate(r.ptr, r.bytes())
	b.invalidate(d.ptr, d.bytes())
	sh, err := b.setShadow(d)
	if err != nil {
		return err
	}
	st := b.argStart()
	b.aP(r.ptr)
	b.aP(b.normF32Dst(d, sh, next))
	b.aP(sh)
	b.aP(xx.ptr)
	b.aP(ww.ptr)
	b.aI(d.cols)
	b.aF(eps)
	return b.push("add_rmsnorm_"+s, g1(d.rows), g1(threadsFor((d.cols+3)/4, 1024)), st)
}

// MatMul implements ml.Backend: dst[T,N] = x[T,K]·w[N,K]ᵀ (+bias), with f32
// accumulation. bf16 weights meet f32 x unrounded in the GEMV kernels and as
// a pair of bf16 halves in cuBLAS (splitGemm) unless RoundActivations is set;
// f16 weights multiply x rounded to f16.
func (b *Backend) MatMul(dst, x, w, bias ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	d, err := b.f32(dst, "matmul dst")
	if err != nil {
		return err
	}
	xx, err := b.tens(x, "matmul x")
	if err != nil {
		return err
	}
	ww, err := b.tens(w, "matmul w")
	if err != nil {
		return err
	}
	T, K, N := xx.rows, xx.cols, ww.rows
	if ww.cols != K || d.rows != T || d.cols != N {
		return shapeErr("matmul dst %dx%d = x %dx%d · w %dx%dᵀ", d.rows, d.cols, xx.rows, xx.cols, ww.rows, ww.cols)
	}
	var bb *tensor
	var bs string
	if bias != nil {
		if bb, err = b.tens(bias, "matmul bias"); err != nil {
			return err
		}
		var ok bool
		if bs, ok = dtSuffix(bb.dt); !ok || bb.n() != N {
			return shapeErr("matmul bias %dx%d %v for N=%d", bb.rows, bb.cols, bb.dt, N)
		}
	}
	if T == 0 || N == 0 {
		return nil
	}
	if ww.dt == ml.F8 {
		return b.matMulF8(d, xx, ww, bb, bs)
	}
	return b.matMul(d, xx, ww, bb, bs)
}

// matMul is MatMul of checked operands, T and N not zero, w not FP8.
func (b *Backend) matMul(d, xx, ww, bb *tensor, bs string) error {
	T, K, N := xx.rows, xx.cols, ww.rows
	var err error
	if _, ok := dtSuffix(ww.dt); ok && xx.dt == ml.F32 &&
		(T <= b.opts.SkinnyMaxT || (b.opts.ExactActivations && ww.dt != ml.F32)) {
		sg, unfused := b.matVecSeg(d, ww, bb)
		if err := b.pushMatVec(xx, xx.ptr, ml.F32, xx.cols, T, K, ww.dt, sg, false); err != nil {
			return err
		}
		return b.biasAdd(d, unfused, bs, T, N)
	}
	if ww.dt == ml.BF16 && T <= b.opts.GemvMaxT && K%8 == 0 {
		// Decode-sized bf16 MatMul: the GEMV streams the weight near HBM
		// speed, where cuBLAS reaches about half of it at one row.
		xp, xdt, ldx := xx.ptr, xx.dt, xx.cols
		switch {
		case xx.dt != ml.F32 || !b.opts.RoundActivations:
		case b.shadowed(xx):
			xp, xdt, ldx = b.sh16.ptr, ml.BF16, K // the producing norm/SiLU already wrote x in bf16
		default:
			if xp, err = b.castAct16(xx, "cast_f32_bf16"); err != nil {
				return err
			}
			xdt, ldx = ml.BF16, K
		}
		if (xdt == ml.BF16 && ldx%8 == 0) || (xdt == ml.F32 && ldx%4 == 0) {
			sg, unfused := b.matVecSeg(d, ww, bb)
			if err := b.pushMatVec(xx, xp, xdt, ldx, T, K, ww.dt, sg, true); err != nil {
				return err
			}
			return b.biasAdd(d, unfused, bs, T, N)
		}
	}
	var ctype int32
	var bptr uint64
	switch ww.dt {
	case ml.F32:
		ctype = cudaR32F
		if xx.dt != ml.F32 {
			return shapeErr("matmul x %v with f32 weights", xx.dt)
		}
		bptr = xx.ptr
	case ml.BF16, ml.F16:
		ctype = cudaR16BF
		cast := "cast_f32_bf16"
		if ww.dt == ml.F16 {
			ctype, cast = cudaR16F, "cast_f32_f16"
		}
		switch {
		case xx.dt == ww.dt:
			bptr = xx.ptr
		case xx.dt != ml.F32:
			return shapeErr("matmul x %v with %v weights", xx.dt, ww.dt)
		case ww.dt == ml.BF16 && !b.opts.RoundActivations:
			b.invalidate(d.ptr, d.bytes())
			if err := b.splitGemm(d, xx, ww); err != nil {
				return err
			}
			return b.biasAdd(d, bb, bs, T, N)
		case ww.dt == ml.BF16 && b.shadowed(xx):
			bptr = b.sh16.ptr // the producing norm/SiLU already wrote x in bf16
		default:
			if bptr, err = b.castAct16(xx, cast); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%w: matmul weight dtype %v", ml.ErrUnsupported, ww.dt)
	}
	b.invalidate(d.ptr, d.bytes())
	// Row-major dst[T,N] is column-major dstᵀ[N,T] = wᵀ... : C(N×T) = A(K×N)ᵀ·B(K×T).
	b.pushGemm(gemmArgs{transa: cublasOpT, transb: cublasOpN, m: int32(N), n: int32(T), k: int32(K),
		a: ww.ptr, atype: ctype, lda: int32(K), b: bptr, btype: ctype, ldb: int32(K),
		c: d.ptr, ctype: cudaR32F, ldc: int32(N)})
	return b.biasAdd(d, bb, bs, T, N)
}

// splitGemmScratch bounds splitGemm's f32 product scratch; larger products
// are computed in chunks of rows (a variable for tests of the chunking).
var splitGemmScratch = 64 << 20

// splitGemm records d[T,N] = x[T,K]·w[N,K]ᵀ for bf16 w and f32 x on the
// tensor cores without rounding x to bf16: each row is split into
// hi = bf16(x) and lo = bf16(x - hi), one GEMM multiplies the 2T rows
// [hi; lo] (the weights are read once), and a kernel adds the halves. hi+lo
// carries 16 of x's 24 mantissa bits, so the product is within f32
// rounding of the exact one where a single bf16 rounding of x moves it by
// ~2^-9 relative, enough to move the logprobs of sensitive checkpoints by
// tenths of a nat.
func (b *Backend) splitGemm(d, x, w *tensor) error {
	T, K, N := x.rows, x.cols, w.rows
	chunk := max(1, min(T, splitGemmScratch/(2*4*N)))
	if err := b.ensure(&b.act16, int64(2*chunk*K)*2); err != nil {
		return err
	}
	if err := b.ensure(&b.split32, int64(2*chunk*N)*4); err != nil {
		return err
	}
	for t0 := 0; t0 < T; t0 += chunk {
		rows := min(chunk, T-t0)
		n := int64(rows) * int64(K)
		if err := b.pushSplit(x.ptr+uint64(t0*K*4), n); err != nil {
			return err
		}
		// Column-major C(N×2r) = W(K×N)ᵀ·[hi;lo](K×2r): row-major [2r, N].
		b.pushGemm(gemmArgs{transa: cublasOpT, transb: cublasOpN, m: int32(N), n: int32(2 * rows), k: int32(K),
			a: w.ptr, atype: cudaR16BF, lda: int32(K), b: b.act16.ptr, btype: cudaR16BF, ldb: int32(K),
			c: b.split32.ptr, ctype: cudaR32F, ldc: int32(N)})
		n = int64(rows) * int64(N)
		st := b.argStart()
		b.aP(d.ptr + uint64(t0*d.cols*4))
		b.aP(b.split32.ptr)
		b.aL(n)
		if err := b.push("add_halves", g1(gridFor(n, 256)), g1(256), st); err != nil {
			return err
		}
	}
	return nil
}

// pushSplit records split_f32_bf16 of the n floats at x into the act16
// scratch (hi in its first n bf16, lo in the next n).
func (b *Backend) pushSplit(x uint64, n int64) error {
	st := b.argStart()
	b.aP(b.act16.ptr)
	b.aP(x)
	b.aL(n)
	return b.push("split_f32_bf16", g1(gridFor(n, 256)), g1(256), st)
}

// splitAct16 splits all of f32 x into bf16 halves in the act16 scratch
// (see pushSplit) and returns the scratch's address.
func (b *Backend) splitAct16(x *tensor) (uint64, error) {
	n := int64(x.rows) * int64(x.cols)
	if err := b.ensure(&b.act16, 2*n*2); err != nil {
		return 0, err
	}
	return b.act16.ptr, b.pushSplit(x.ptr, n)
}

// castAct16 records the cast kernel (cast_f32_bf16 or cast_f32_f16) of
// f32 x into the act16 scratch and returns the scratch's address.
func (b *Backend) castAct16(x *tensor, kernel string) (uint64, error) {
	n := int64(x.rows) * int64(x.cols)
	if err := b.ensure(&b.act16, n*2); err != nil {
		return 0, err
	}
	st := b.argStart()
	b.aP(b.act16.ptr)
	b.aP(x.ptr)
	b.aL(n)
	if err := b.push(kernel, g1(gridFor(n, 256)), g1(256), st); err != nil {
		return 0, err
	}
	return b.act16.ptr, nil
}

// ropeOperands checks RoPE's per-token positions and KV slots (rows of
// them) and its frequencies (headDim/2 of them).
func (b *Backend) ropeOperands(positions, invFreq, slots ml.Tensor, rows, headDim int) (pos, inv, sl *tensor, err error) {
	if pos, err = b.i32(positions, "rope positions", rows); err != nil {
		return
	}
	if inv, err = b.f32(invFreq, "rope invFreq"); err != nil {
		return
	}
	if inv.n() < headDim/2 {
		return nil, nil, nil, shapeErr("rope invFreq %d for head dim %d", inv.n(), headDim)
	}
	sl, err = b.i32(slots, "slots", rows)
	return
}

func (b *Backend) biasAdd(d, bb *tensor, bs string, T, N int) error {
	if bb == nil {
		return nil
	}
	n := int64(T) * int64(N)
	st := b.argStart()
	b.aP(d.ptr)
	b.aP(bb.ptr)
	b.aI(N)
	b.aL(n)
	return b.push("bias_add_"+bs, g1(gridFor(n, 256)), g1(256), st)
}

// RoPE implements ml.Backend. x may have more columns than numHeads*headDim
// (only the first numHeads heads are rotated).
func (b *Backend) RoPE(x, positions, invFreq ml.Tensor, numHeads, headDim int) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	xx, err := b.f32(x, "rope x")
	if err != nil {
		return err
	}
	pos, err := b.i32(positions, "rope positions", xx.rows)
	if err != nil {
		return err
	}
	inv, err := b.f32(invFreq, "rope invFreq")
	if err != nil {
		return err
	}
	if headDim <= 0 || headDim%2 != 0 || numHeads <= 0 || numHeads*headDim > xx.cols || inv.n() < headDim/2 {
		return shapeErr("rope x %dx%d, %d heads of %d, invFreq %d", xx.rows, xx.cols, numHeads, headDim, inv.n())
	}
	if xx.rows == 0 {
		return nil
	}
	b.invalidate(xx.ptr, xx.bytes())
	end := xx.ptr + uint64(xx.bytes())
	r := &b.ropeRec
	if r.valid && !b.opts.DisableFusion && r.opIdx == len(b.ops)-1 && !r.merged && r.pos == pos.ptr && r.inv == inv.ptr &&
		r.headDim == headDim && r.T == xx.rows && (end <= r.x0 || xx.ptr >= r.x0End) {
		// RoPE of k right after RoPE of q: one launch rotates both.
		b.popOp()
		r.merged, r.x1, r.nh1, r.stride1 = true, xx.ptr, numHeads, xx.cols
		return b.pushRope(r.x0, r.nh0, r.stride0, xx.ptr, numHeads, xx.cols, r.pos, r.inv, headDim, r.T)
	}
	*r = ropeRec{pos: pos.ptr, inv: inv.ptr, headDim: headDim, T: xx.rows, x0: xx.ptr, x0End: end, nh0: numHeads, stride0: xx.cols}
	if err := b.pushRope(xx.ptr, numHeads, xx.cols, 0, 0, 0, pos.ptr, inv.ptr, headDim, xx.rows); err != nil {
		return err
	}
	r.valid, r.opIdx = true, len(b.ops)-1
	return nil
}

type ropeRec struct {
	valid, merged           bool
	opIdx                   int
	pos, inv, x0, x0End, x1 uint64
	headDim, T, nh0, nh1    int
	stride0, stride1        int
}

func (b *Backend) pushRope(x0 uint64, nh0, s0 int, x1 uint64, nh1, s1 int, pos, inv uint64, headDim, T int) error {
	return b.pushRopeKV(x0, nh0, s0, x1, nh1, s1, pos, inv, headDim, T, nil, 0, 0, 0, 0, 0)
}

// pushRopeKV records rope_kv; with c non-nil the launch also writes x1 and v
// into layer's cache at slots. bias (0: none) is added to x0, x1 and v first:
// nh0 heads for x0, then nh1 for x1, then nh1 for v.
func (b *Backend) pushRopeKV(x0 uint64, nh0, s0 int, x1 uint64, nh1, s1 int, pos, inv uint64, headDim, T int,
	c *kvCache, layer int, v uint64, vStride int, slots, bias uint64) error {
	name := "rope_kv_f32"
	var kc, vc uint64
	var numSlots int64
	if c != nil {
		s := kvSuffix(c.dt)
		name, kc, vc, numSlots = "rope_kv_"+s, c.k(layer), c.v(layer), int64(c.numBlocks)*int64(c.blockSize)
	}
	st := b.argStart()
	b.aP(x0)
	b.aI(nh0)
	b.aI(s0)
	b.aP(x1)
	b.aI(nh1)
	b.aI(s1)
	b.aP(pos)
	b.aP(inv)
	b.aI(headDim)
	b.aP(kc)
	b.aP(vc)
	b.aP(v)
	b.aI(vStride)
	b.aP(slots)
	b.aL(numSlots)
	b.aP(bias)
	return b.push(name, g1(T), g1(threadsFor((nh0+nh1)*headDim/2, 256)), st)
}

// seg is one MatMul of a skinny launch.
// matVecSeg is the one-segment GEMV of d = x·wᵀ (+ bias): an f32 bias is
// fused into the GEMV unless fusion is off, else it is returned for a
// separate add. Without fusion, the GEMV must not merge with the previous
// one (skinnyRec).
func (b *Backend) matVecSeg(d, w, bias *tensor) (seg, *tensor) {
	b.invalidate(d.ptr, d.bytes())
	sg := seg{d: d.ptr, w: w.ptr, n: w.rows, ldd: d.cols, dEnd: d.ptr + uint64(d.bytes())}
	if bias != nil && bias.dt == ml.F32 && !b.opts.DisableFusion {
		sg.b, bias = bias.ptr, nil
	}
	if b.opts.DisableFusion {
		b.skinnyRec.valid = false
	}
	return sg, bias
}

type seg struct {
	d, w, b uint64
	n, ldd  int
	dEnd    uint64
}

type skinnyRec struct {
	valid     bool
	gemv      bool
	opIdx     int
	x, xEnd   uint64
	xArg      uint64
	T, K, ldx int
	wdt       ml.DType
	segs      [3]seg
	nseg      int
}

// defaultGemvMaxT is Options.GemvMaxT's default: off. On an H100 the GEMV
// matched cuBLAS only on lm_head (2.75 vs 2.81 TB/s at one row) and lost on
// gate_up (2.03 vs 2.39) and down (1.66 vs 1.98), so the real decode step
// (fused q/k/v) got slower: engine c=1 TPOT 2.76 vs 2.57 ms.
const defaultGemvMaxT = -1

// pushMatVec records a GEMV-style MatMul (the f32-activation skinny kernel,
// or with gemv the bf16 GEMV reading x at xArg of dtype xdt), merged into
// the previous launch when that was one of the same x and kind (q, k, v
// projections).
func (b *Backend) pushMatVec(x *tensor, xArg uint64, xdt ml.DType, ldx, T, K int, wdt ml.DType, sg seg, gemv bool) error {
	r := &b.skinnyRec
	xEnd := x.ptr + uint64(x.bytes())
	overlapX := sg.d < xEnd && x.ptr < sg.dEnd
	merge := r.valid && r.opIdx == len(b.ops)-1 && r.gemv == gemv && r.x == x.ptr && r.xArg == xArg && r.T == T &&
		r.K == K && r.ldx == ldx && r.wdt == wdt && r.nseg < 3 && !overlapX
	for i := 0; merge && i < r.nseg; i++ {
		if sg.d < r.segs[i].dEnd && r.segs[i].d < sg.dEnd {
			merge = false
		}
	}
	if merge {
		b.popOp()
		r.segs[r.nseg] = sg
		r.nseg++
	} else {
		*r = skinnyRec{gemv: gemv, x: x.ptr, xEnd: xEnd, xArg: xArg, T: T, K: K, ldx: ldx, wdt: wdt, nseg: 1}
		r.segs[0] = sg
	}
	tt := 8
	for _, c := range []int{1, 2, 4} {
		if T <= c {
			tt = c
			break
		}
	}
	st := b.argStart()
	b.aP(xArg)
	b.aI(T)
	b.aI(K)
	b.aI(ldx)
	var segs [3]seg
	copy(segs[:], r.segs[:r.nseg])
	total := 0
	for _, s := range segs {
		b.aP(s.d)
		total += s.n
	}
	for _, s := range segs {
		b.aP(s.w)
	}
	for _, s := range segs {
		b.aP(s.b)
	}
	for _, s := range segs {
		b.aI(s.n)
	}
	for _, s := range segs {
		b.aI(s.ldd)
	}
	var name string
	var grid [3]uint32
	if gemv {
		xs, _ := dtSuffix(xdt)
		switch ks := b.opts.GemvKS; ks {
		case 1, 2, 4, 8:
			rows := 8 / ks // 256 threads: 8 warps, ks per row
			name, grid = fmt.Sprintf("gemv_bf16_x%s_%d_%d", xs, tt, ks), g3((total+rows-1)/rows, (T+tt-1)/tt, 1)
		default:
			// Persistent: at most 4 blocks of 8 warps per SM (its launch bounds).
			blocks := min((total+7)/8, 4*int(b.dev.sms))
			name, grid = fmt.Sprintf("gemv_bf16_x%s_%d_p", xs, tt), g3(blocks, (T+tt-1)/tt, 1)
		}
	} else {
		ws, _ := dtSuffix(wdt)
		name, grid = fmt.Sprintf("skinny_%s_%d", ws, tt), g3((total+7)/8, (T+tt-1)/tt, 1)
	}
	if err := b.push(name, grid, g1(256), st); err != nil {
		r.valid = false
		return err
	}
	// A MatMul that overwrites its own input must not absorb later ones.
	r.valid, r.opIdx = !overlapX, len(b.ops)-1
	return nil
}

func (b *Backend) cache(c ml.KVCache, layer int) (*kvCache, error) {
	kc, ok := c.(*kvCache)
	if !ok || kc == nil || kc.owner != b || kc.ptr == 0 {
		return nil, fmt.Errorf("%w: not a live cuda kv cache (%T)", ErrShape, c)
	}
	if layer < 0 || layer >= kc.layers {
		return nil, shapeErr("layer %d of %d", layer, kc.layers)
	}
	return kc, nil
}

func (c *kvCache) k(layer int) uint64 { return c.ptr + uint64(int64(layer)*2*c.layerBytes) }
func (c *kvCache) v(layer int) uint64 { return c.k(layer) + uint64(c.layerBytes) }

// WriteKV implements ml.Backend; slots < 0 are skipped (padding).
func (b *Backend) WriteKV(c ml.KVCache, layer int, k, v, slots ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	kc, err := b.cache(c, layer)
	if err != nil {
		return err
	}
	kk, err := b.f32(k, "k")
	if err != nil {
		return err
	}
	vv, err := b.f32(v, "v")
	if err != nil {
		return err
	}
	kvdim := kc.kvh * kc.hd
	if kk.rows != vv.rows || kk.cols < kvdim || vv.cols < kvdim {
		return shapeErr("write kv k %dx%d v %dx%d, kv dim %d", kk.rows, kk.cols, vv.rows, vv.cols, kvdim)
	}
	sl, err := b.i32(slots, "slots", kk.rows)
	if err != nil {
		return err
	}
	if kk.rows == 0 {
		return nil
	}
	r := &b.ropeRec
	if r.valid && r.merged && r.opIdx == len(b.ops)-1 && r.x1 == kk.ptr && r.stride1 == kk.cols &&
		r.nh1*r.headDim == kvdim && r.headDim == kc.hd && r.T == kk.rows {
		// WriteKV right after RoPE(q), RoPE(k): the rotation launch stores k and v.
		b.popOp()
		r.valid = false
		return b.pushRopeKV(r.x0, r.nh0, r.stride0, r.x1, r.nh1, r.stride1, r.pos, r.inv, r.headDim, r.T,
			kc, layer, vv.ptr, vv.cols, sl.ptr, 0)
	}
	s := kvSuffix(kc.dt)
	st := b.argStart()
	b.aP(kc.k(layer))
	b.aP(kc.v(layer))
	b.aP(kk.ptr)
	b.aP(vv.ptr)
	b.aP(sl.ptr)
	b.aI(kvdim)
	b.aI(kk.cols)
	b.aI(vv.cols)
	b.aL(int64(kc.numBlocks) * int64(kc.blockSize))
	return b.push("write_kv_"+s, g1(kk.rows), g1(threadsFor(kvdim, 256)), st)
}

// qkvOperands checks the operands of a q/k/v prologue (QKVRoPEWriteKV,
// qkNormRoPEWriteKV) and returns layer's cache, qkv and the bias pointer
// (0: none).
func (b *Backend) qkvOperands(qkv, bias ml.Tensor, numHeads, numKVHeads, headDim int, c ml.KVCache, layer int) (*kvCache, *tensor, uint64, error) {
	kc, err := b.cache(c, layer)
	if err != nil {
		return nil, nil, 0, err
	}
	x, err := b.f32(qkv, "qkv")
	if err != nil {
		return nil, nil, 0, err
	}
	width := (numHeads + 2*numKVHeads) * headDim
	if headDim <= 0 || headDim%2 != 0 || numHeads <= 0 || numKVHeads != kc.kvh || headDim != kc.hd || x.cols < width {
		return nil, nil, 0, shapeErr("qkv %dx%d, %d heads, %d kv heads of %d (cache %d of %d)", x.rows, x.cols, numHeads, numKVHeads, headDim, kc.kvh, kc.hd)
	}
	if bias == nil {
		return kc, x, 0, nil
	}
	bb, err := b.f32(bias, "qkv bias")
	if err != nil {
		return nil, nil, 0, err
	}
	if bb.n() != width {
		return nil, nil, 0, shapeErr("qkv bias %dx%d for width %d", bb.rows, bb.cols, width)
	}
	return kc, x, bb.ptr, nil
}

// qkNormOperands checks per-head q/k norm weights: f32, headDim each.
func (b *Backend) qkNormOperands(qNorm, kNorm ml.Tensor, headDim int) (qn, kn *tensor, err error) {
	if qn, err = b.f32(qNorm, "q norm"); err != nil {
		return nil, nil, err
	}
	if kn, err = b.f32(kNorm, "k norm"); err != nil {
		return nil, nil, err
	}
	if qn.n() != headDim || kn.n() != headDim {
		return nil, nil, shapeErr("q/k norms of %d and %d for head dim %d", qn.n(), kn.n(), headDim)
	}
	return qn, kn, nil
}

// QKVRoPEWriteKV is the attention prologue of a fused q/k/v projection in
// one launch: qkv [T, (numHeads+2·numKVHeads)·headDim] holds q's heads, then
// k's, then v's; bias (nil: none) [1, same] is added to all three, q and k
// are rotated in place, and k and v are stored into layer's cache at slots
// (slots < 0 are skipped). Attention then reads q from qkv (its row stride
// is qkv's width).
func (b *Backend) QKVRoPEWriteKV(qkv, bias, positions, invFreq ml.Tensor, numHeads, numKVHeads, headDim int,
	c ml.KVCache, layer int, slots ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	kc, x, bp, err := b.qkvOperands(qkv, bias, numHeads, numKVHeads, headDim, c, layer)
	if err != nil {
		return err
	}
	pos, inv, sl, err := b.ropeOperands(positions, invFreq, slots, x.rows, headDim)
	if err != nil {
		return err
	}
	if x.rows == 0 {
		return nil
	}
	b.invalidate(x.ptr, x.bytes())
	b.ropeRec.valid = false
	qd, kvd := uint64(numHeads*headDim*4), uint64(numKVHeads*headDim*4)
	return b.pushRopeKV(x.ptr, numHeads, x.cols, x.ptr+qd, numKVHeads, x.cols, pos.ptr, inv.ptr, headDim, x.rows,
		kc, layer, x.ptr+qd+kvd, x.cols, sl.ptr, bp)
}

// qkNormRoPEWriteKV is QKVRoPEWriteKV for layers with per-head q/k
// RMSNorm (weights qNorm and kNorm, [1, headDim]): each q and k head gets
// its bias, is normed, then rotated (qknorm_rope_kv).
func (b *Backend) qkNormRoPEWriteKV(qkv, bias, qNorm, kNorm ml.Tensor, eps float32, positions, invFreq ml.Tensor,
	numHeads, numKVHeads, headDim int, c ml.KVCache, layer int, slots ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	kc, x, bp, err := b.qkvOperands(qkv, bias, numHeads, numKVHeads, headDim, c, layer)
	if err != nil {
		return err
	}
	qn, kn, err := b.qkNormOperands(qNorm, kNorm, headDim)
	if err != nil {
		return err
	}
	pos, inv, sl, err := b.ropeOperands(positions, invFreq, slots, x.rows, headDim)
	if err != nil {
		return err
	}
	if x.rows == 0 {
		return nil
	}
	b.invalidate(x.ptr, x.bytes())
	b.ropeRec.valid = false
	s := kvSuffix(kc.dt)
	st := b.argStart()
	b.aP(x.ptr)
	b.aI(x.cols)
	b.aI(numHeads)
	b.aI(numKVHeads)
	b.aI(headDim)
	b.aP(pos.ptr)
	b.aP(inv.ptr)
	b.aP(qn.ptr)
	b.aP(kn.ptr)
	b.aF(eps)
	b.aP(bp)
	b.aP(kc.k(layer))
	b.aP(kc.v(layer))
	b.aP(sl.ptr)
	b.aL(int64(kc.numBlocks) * int64(kc.blockSize))
	return b.push("qknorm_rope_kv_"+s, g1(x.rows), g1(32*min(8, numHeads+numKVHeads)), st)
}

// PadSteps reports that steps of a few padded shapes pay: a step whose
// launches repeat an earlier one's replays from a CUDA graph.
func (b *Backend) PadSteps() bool { return !b.opts.DisableGraphs }

const attnMaxG = 8 // MAXG in kernels/attention.cu

// attnSplits picks how many pieces each token's context is cut into, for
// a step of T tokens of which rows take the per-token kernel (the others
// are flash's; their blocks return at once): enough blocks to fill the GPU
// when those rows are few, and pieces of at most attnPieceKeys keys (a
// block walks its piece's keys in a chain, and one long context would keep
// the whole step waiting), but never pieces under ~32 keys, and never so
// many pieces that the blocks flash leaves to return swamp the launch. It
// depends on MaxContext only while that is small, or by powers of two
// beyond attnPieceKeys, so steps of one batch size soon repeat exactly and
// replay from a graph (a backend caches at most Options.MaxGraphs, each
// shape of a step its own).
func attnSplits(sms, rows, T, blocksPerToken, maxContext int) int {
	rows = max(rows, 1)
	fill := (2*sms + rows*blocksPerToken - 1) / (rows * blocksPerToken)
	long := 1
	for long*attnPieceKeys < maxContext && long < attnMaxSplits {
		long *= 2
	}
	ns := min(max(fill, long), attnMaxSplits, (maxContext+31)/32)
	ns = max(1, min(ns, 64*sms/(max(T, 1)*blocksPerToken)))
	if rows < T {
		// Beside flash the count follows the step's sequences, which vary
		// from step to step: a power of two keeps its graphs few.
		for ns&(ns-1) != 0 {
			ns &= ns - 1
		}
	}
	return ns
}

// attnPrefixRows is the per-token kernels' grid for a step whose rows
// that flash leaves lie in its first left tokens: left rounded up to a
// power of two (at least 8), so that steps of a few sizes share graphs.
func attnPrefixRows(left int) int {
	p := 8
	for p < left {
		p *= 2
	}
	return p
}

// flashLeftPlan finds, from a host copy of a step's TokenSeq, one past the
// last token that the flash kernel leaves to the per-token kernels (by
// flashServes in kernels/attention.cu, over tiles of tile tokens). A step
// calls Attention once a layer with the same tokens: the last answer is
// kept, and reused while the tokens and tile are the same.
type flashLeftPlan struct {
	seqs       []int32
	tile, left int
	count      []int // a tile's tokens per sequence, zero between tiles
}

// faMinRows is FA_MIN_ROWS in kernels/attention.cu.
const faMinRows = 8

// end returns the plan's answer for tokSeq (a step of numSeqs sequences)
// and flash tiles of tile tokens.
func (f *flashLeftPlan) end(tokSeq []int32, numSeqs, tile int) int {
	if tile == f.tile && slices.Equal(tokSeq, f.seqs) {
		return f.left
	}
	f.seqs, f.tile, f.left = append(f.seqs[:0], tokSeq...), tile, 0
	T := len(tokSeq)
	if slices.Min(tokSeq) < 0 || int(slices.Max(tokSeq)) >= numSeqs { // not sequence indices: plan for every token
		f.left = T
		return T
	}
	if n := int(slices.Max(tokSeq)) + 1; n > len(f.count) {
		f.count = make([]int, n)
	}
	for t0 := 0; t0 < T; t0 += tile {
		tok := tokSeq[t0:min(t0+tile, T)]
		before, after := int32(-1), int32(-1)
		if t0 > 0 {
			before = tokSeq[t0-1]
		}
		if t0+len(tok) < T {
			after = tokSeq[t0+len(tok)]
		}
		for _, s := range tok {
			f.count[s]++
		}
		for r, s := range tok {
			if n := f.count[s]; !(n >= faMinRows || n == len(tok) || s == before || s == after) {
				f.left = t0 + r + 1
			}
		}
		for _, s := range tok {
			f.count[s] = 0
		}
	}
	return f.left
}

const (
	// attnPieceKeys bounds the keys of one per-token attention piece.
	attnPieceKeys = 256
	// attnMaxSplits bounds the pieces of a token's context.
	attnMaxSplits = 32
)

// Attention implements ml.Backend.
func (b *Backend) Attention(dst, q ml.Tensor, c ml.KVCache, layer int, meta *ml.AttentionMeta) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	if meta == nil {
		return shapeErr("nil attention meta")
	}
	kc, err := b.cache(c, layer)
	if err != nil {
		return err
	}
	d, err := b.f32(dst, "attention dst")
	if err != nil {
		return err
	}
	qq, err := b.f32(q, "attention q")
	if err != nil {
		return err
	}
	T, H, KVH, D := meta.NumTokens, meta.NumHeads, meta.NumKVHeads, meta.HeadDim
	if T < 0 || H <= 0 || KVH <= 0 || H%KVH != 0 || KVH != kc.kvh || D != kc.hd || meta.MaxBlocks <= 0 {
		return shapeErr("attention %d heads, %d kv heads of %d (cache %d of %d), max blocks %d", H, KVH, D, kc.kvh, kc.hd, meta.MaxBlocks)
	}
	if qq.rows < T || d.rows < T || qq.cols < H*D || d.cols < H*D {
		return shapeErr("attention q %dx%d dst %dx%d for %d tokens × %d", qq.rows, qq.cols, d.rows, d.cols, T, H*D)
	}
	if T > 65535 {
		return fmt.Errorf("%w: %d tokens in one attention call (max 65535)", ml.ErrUnsupported, T)
	}
	tokSeq, err := b.i32(meta.TokenSeq, "TokenSeq", T)
	if err != nil {
		return err
	}
	pos, err := b.i32(meta.Positions, "Positions", T)
	if err != nil {
		return err
	}
	bt, err := b.i32(meta.BlockTables, "BlockTables", max(meta.NumSeqs, 1)*meta.MaxBlocks)
	if err != nil {
		return err
	}
	if T == 0 {
		return nil
	}
	// With flash, the per-token kernel still serves the tokens of sequences
	// with few rows in a flash tile (flashServes in kernels/attention.cu);
	// one sequence leaves it nothing.
	// The flash kernels scale scores after taking their maximum: a
	// positive scale only.
	flash, flashRows := meta.Scale > 0 && b.useFlash(kc, T, meta.NumSeqs, H, D, qq.cols, d.cols), 0
	if flash {
		if meta.NumSeqs <= 1 {
			return b.flashAttention(d, qq, kc, layer, meta, tokSeq, pos, bt)
		}
		flashRows = flashTileTokens(H/KVH, b.flashWideFor(D, T, H/KVH, KVH))
	}
	epl := 1
	for epl*32 < D {
		epl *= 2
	}
	G := H / KVH
	ngc := (G + attnMaxG - 1) / attnMaxG
	rows := T
	if flash {
		rows = meta.NumSeqs // decode rows, and the few of a prompt's that flash leaves
	}
	// The per-token kernels' grid: every token (those flash serves return
	// at once), or, where the host copy of TokenSeq shows that the rows
	// flash leaves all come first (decodes laid out before prompts), just
	// those: a grid of all the step's tokens allows them one piece each
	// (attnSplits), and one piece walks a whole context in a chain.
	grid := T
	if flash && len(meta.HostTokenSeq) == T {
		left := b.flashLeft.end(meta.HostTokenSeq, meta.NumSeqs, flashRows)
		if left == 0 {
			return b.flashAttention(d, qq, kc, layer, meta, tokSeq, pos, bt)
		}
		if p := attnPrefixRows(left); p <= T/2 {
			// The prefix's rows all go to the per-token kernels (flashRows
			// 0); flash, last, rewrites those of them it serves.
			grid, rows, flashRows = p, p, 0
			b.prefixAttn++
		}
	}
	ns := attnSplits(int(b.dev.sms), rows, grid, KVH*ngc, meta.MaxContext)
	var partO, partML uint64
	if ns > 1 {
		nO := int64(grid) * int64(H) * int64(ns) * int64(D)
		nML := int64(grid) * int64(H) * int64(ns) * 2
		if err := b.ensure(&b.part, (nO+nML)*4); err != nil {
			return err
		}
		partO, partML = b.part.ptr, b.part.ptr+uint64(nO*4)
	}
	sh, err := b.attnOutput(d, T)
	if err != nil {
		return err
	}
	// Pieces of a bf16 cache go to the tensor cores (attn_tc, the decode
	// step's form): the lane-per-dims kernel's per-key warp sums and
	// exponents per head made it the batched step's largest cost.
	tc := ns > 1 && b.tcAttention(kc, D)
	mUnit := float32(1)
	if tc {
		mUnit = math.Ln2 // attn_tc's maxima are base 2
		b.tcAttn++
		st := b.argStart()
		b.aP(qq.ptr)
		b.aPaged(kc, layer, tokSeq, pos, bt, meta.MaxBlocks)
		b.aI(H)
		b.aI(KVH)
		b.aF(meta.Scale)
		b.aI(ns)
		b.aI(qq.cols)
		b.aP(partO)
		b.aP(partML)
		b.aI(max(meta.Window, 0))
		b.aI(flashRows)
		if err := b.push(fmt.Sprintf("attn_tc_bf16_%d", D/16), g3(KVH*ngc, grid, (ns+3)/4), g1(128), st); err != nil {
			return err
		}
	} else {
		st := b.argStart()
		b.aP(d.ptr)
		b.aP(partO)
		b.aP(partML)
		b.aP(qq.ptr)
		b.aPaged(kc, layer, tokSeq, pos, bt, meta.MaxBlocks)
		b.aI(H)
		b.aI(KVH)
		b.aI(D)
		b.aF(meta.Scale)
		b.aI(ns)
		b.aI(qq.cols)
		b.aI(d.cols)
		b.aP(sh)
		b.aI(max(meta.Window, 0))
		b.aI(flashRows)
		if err := b.push(fmt.Sprintf("attention_%s_%d", kvSuffix(kc.dt), epl), g3(KVH*ngc, grid, ns), g1(128), st); err != nil {
			return err
		}
	}
	if ns == 1 {
		if flash {
			return b.flashAttention(d, qq, kc, layer, meta, tokSeq, pos, bt)
		}
		return nil
	}
	st := b.argStart()
	b.aP(d.ptr)
	b.aP(partO)
	b.aP(partML)
	b.aI(H)
	b.aI(D)
	b.aI(ns)
	b.aI(d.cols)
	b.aP(sh)
	b.aF(mUnit)
	if err := b.push("attn_combine", g3(H, grid, 1), g1(threadsFor(D, 256)), st); err != nil {
		return err
	}
	if flash {
		// Last: it overwrites the rows it serves, which the combine wrote
		// from partials no piece filled.
		return b.flashAttention(d, qq, kc, layer, meta, tokSeq, pos, bt)
	}
	return nil
}

// aPaged records the paged-cache arguments both attention kernels take:
// layer's K and V, each token's sequence and position, the block tables.
func (b *Backend) aPaged(kc *kvCache, layer int, tokSeq, pos, bt *tensor, maxBlocks int) {
	b.aP(kc.k(layer))
	b.aP(kc.v(layer))
	b.aP(tokSeq.ptr)
	b.aP(pos.ptr)
	b.aP(bt.ptr)
	b.aI(maxBlocks)
	b.aI(kc.blockSize)
	b.aI(kc.numBlocks)
}

// defaultFlashMin is Backend.flashMin's default: a step of one token per
// sequence (decode) reads each sequence's keys once in the per-token kernel
// too, while prefill tokens share their keys' loads in the flash kernel.
const defaultFlashMin = 64

// flashWideWaves is how many waves (two blocks an SM) the grid of
// flash_attn's _wide form must fill for prefill attention to take it
// (FlashAttention-2's layout: 128 rows a block, warps of 32 rows, K and V
// in two stages where they fit) instead of the 64-row form, where the
// device allows its shared memory. The wide form reuses each K/V fragment
// across twice the rows but has half the blocks: on an H100
// (BenchmarkAttentionPrefill, Qwen2.5-1.5B's heads) it was the faster at
// 8,000 tokens (2.9 waves) and the slower at 1,024 (0.37 waves). Counting
// waves, not tokens, carries that to other head counts; where between the
// two the forms cross is not measured yet. A variable so that the tests
// and the benchmark can force either form (0: always, +Inf: never).
var flashWideWaves = 2.0

// bf16Planes records x's activations as bf16 planes for a tensor-core
// product: one rounded plane under RoundActivations, else hi and lo halves
// (f32 accuracy). It returns their address and their number.
func (b *Backend) bf16Planes(x *tensor) (uint64, int, error) {
	if b.opts.RoundActivations {
		x16, err := b.castAct16(x, "cast_f32_bf16")
		return x16, 1, err
	}
	x16, err := b.splitAct16(x)
	return x16, 2, err
}

// flashPasses is flash_attn's PASSES: 2 splits q and p into bf16 halves
// (f32 accuracy), 1 rounds them (RoundActivations).
func (b *Backend) flashPasses() int {
	if b.opts.RoundActivations {
		return 1
	}
	return 2
}

// flashWideFor reports whether flash attention at head dim d takes the
// _wide form in a step of T tokens with GQA groups of g query heads and
// kvh KV heads. The per-token kernel's flashRows follows it: both must cut
// the tokens into the same tiles.
func (b *Backend) flashWideFor(d, T, g, kvh int) bool {
	tile := flashTileTokens(g, true)
	if tile == 0 || int64(flashShared(d, b.flashPasses(), true)) > int64(b.dev.sharedOptin) {
		return false
	}
	blocks := (T + tile - 1) / tile * kvh
	return float64(blocks) >= flashWideWaves*2*float64(b.dev.sms)
}

// flashTileTokens is the flash kernel's tile of tokens for GQA groups of
// g query heads: its FA_BM (wide: FW_BM) rows (kernels/flash.cu) are each
// token's g heads. At most 128, the per-token kernel's threads a block,
// which count a tile's tokens one each (flashRows in kernels/attention.cu).
func flashTileTokens(g int, wide bool) int {
	if wide {
		return 128 / g
	}
	return 64 / g
}

// useFlash reports whether a step of T tokens from numSeqs sequences takes
// the flash kernel: a bf16 cache, a head dim it is built for, an Ampere or
// later GPU, and enough tokens per sequence to share key loads.
func (b *Backend) useFlash(kc *kvCache, T, numSeqs, H, D, qStride, outStride int) bool {
	return kc.dt == ml.BF16 && (D == 64 || D == 128) && b.dev.major >= 8 && kc.kvh > 0 && H%kc.kvh == 0 &&
		flashTileTokens(H/kc.kvh, b.flashWideFor(D, T, H/kc.kvh, kc.kvh)) > 0 && qStride%2 == 0 && outStride%2 == 0 && T-max(numSeqs, 1) >= b.flashMin
}

// tcAttention reports whether attn_tc takes the per-token attention
// pieces of cache kc at head dim D: a bf16 cache, head dims 16 to 128 (a
// power of two), Ampere or later.
func (b *Backend) tcAttention(kc *kvCache, D int) bool {
	return !b.laneAttn && kc.dt == ml.BF16 && b.dev.major >= 8 && D >= 16 && D <= 128 && D&(D-1) == 0
}

// attnOutput prepares d for T tokens of attention output and returns the
// bf16 copy the kernel also writes, the o projection's input (no cast
// launch), or 0 when d is a view the copy cannot stand for.
func (b *Backend) attnOutput(d *tensor, T int) (uint64, error) {
	b.invalidate(d.ptr, d.bytes())
	if T == d.rows {
		return b.setShadow(d)
	}
	b.shadow.valid = false
	return 0, nil
}

// flashAttention launches flash_attn (kernels/flash.cu) for Attention.
func (b *Backend) flashAttention(d, q *tensor, kc *kvCache, layer int, meta *ml.AttentionMeta, tokSeq, pos, bt *tensor) error {
	T, H, D := meta.NumTokens, meta.NumHeads, meta.HeadDim
	sh, err := b.attnOutput(d, T)
	if err != nil {
		return err
	}
	passes, wide := b.flashPasses(), b.flashWideFor(D, T, H/meta.NumKVHeads, meta.NumKVHeads)
	st := b.argStart()
	b.aP(d.ptr)
	b.aP(q.ptr)
	b.aPaged(kc, layer, tokSeq, pos, bt, meta.MaxBlocks)
	b.aI(T)
	b.aI(H)
	b.aI(meta.NumKVHeads)
	b.aF(meta.Scale)
	b.aI(q.cols)
	b.aI(d.cols)
	b.aP(sh)
	b.aI(max(meta.Window, 0))
	name, tb := fmt.Sprintf("flash_attn_bf16_%d_%d", D, passes), flashTileTokens(H/meta.NumKVHeads, wide)
	if wide {
		name += "_wide"
	}
	return b.pushShared(name, g3((T+tb-1)/tb, meta.NumKVHeads, 1), g1(128), flashShared(D, passes, wide), st)
}

// flashShared is flash_attn's dynamic shared memory (kernels/flash.cu): q's
// rows in passes bf16 planes, then K and V tiles of 64 keys, rows of
// headDim+8 bf16. The 64-row form has one K and one V tile; the wide form
// (128 rows) two of each where q's planes and they fit two blocks an SM
// (fw_cfg), else one.
func flashShared(headDim, passes int, wide bool) uint32 {
	const keys = 64 // FA_BN, fw_cfg's BN
	rows, stages := 64, 1
	if wide {
		rows = 128
		if headDim*passes <= 128 {
			stages = 2
		}
	}
	return uint32((passes*rows + 2*stages*keys) * (headDim + 8) * 2)
}

// SiLUMul implements ml.Backend.
func (b *Backend) SiLUMul(dst, gateUp ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	d, err := b.f32(dst, "silu dst")
	if err != nil {
		return err
	}
	gu, err := b.f32(gateUp, "silu gateUp")
	if err != nil {
		return err
	}
	if gu.rows != d.rows || gu.cols != 2*d.cols {
		return shapeErr("silu dst %dx%d, gateUp %dx%d", d.rows, d.cols, gu.rows, gu.cols)
	}
	if d.n() == 0 {
		return nil
	}
	b.invalidate(d.ptr, d.bytes())
	sh, err := b.setShadow(d)
	if err != nil {
		return err
	}
	n := int64(d.n())
	st := b.argStart()
	b.aP(d.ptr)
	b.aP(sh)
	b.aP(gu.ptr)
	b.aI(d.cols)
	b.aL(n)
	return b.push("silu_mul", g1(gridFor(n, 256)), g1(256), st)
}

// gateUpSiLU is MatMul(gateUp, xn, w, bias) then SiLUMul(act, gateUp) of a
// GEMM-sized step. With rounded activations and bf16 weights, where the
// down projection reads act's bf16 copy only, the product is written in
// bf16 into gateUp's first half and act only as its bf16 copy: act's f32
// rows are not written. That halves the largest intermediate's traffic (at
// 8k tokens, 2I·T f32 written and read) and is the precision vLLM keeps;
// the caller must read act through MatMul by the bf16 weight down alone.
func (b *Backend) gateUpSiLU(act, gateUp, xn, w, bias, down ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	ok, err := b.gateUpSiLU16(act, gateUp, xn, w, bias, down)
	b.mu.Unlock()
	if ok || err != nil {
		return err
	}
	if err := b.MatMul(gateUp, xn, w, bias); err != nil {
		return err
	}
	return b.SiLUMul(act, gateUp)
}

// gateUpSiLU16 records gateUpSiLU's bf16 form and reports whether it did;
// false (no error) leaves the step to MatMul and SiLUMul.
func (b *Backend) gateUpSiLU16(act, gateUp, xn, w, bias, down ml.Tensor) (bool, error) {
	if bias != nil || !b.useShadow || !b.opts.RoundActivations || b.opts.ExactActivations {
		return false, nil
	}
	d, err := b.f32(act, "silu dst")
	if err != nil {
		return false, err
	}
	gu, err := b.f32(gateUp, "matmul dst")
	if err != nil {
		return false, err
	}
	xx, err := b.f32(xn, "matmul x")
	if err != nil {
		return false, err
	}
	ww, err := b.tens(w, "matmul w")
	if err != nil {
		return false, err
	}
	dw, err := b.tens(down, "matmul w")
	if err != nil {
		return false, err
	}
	T, K, I := xx.rows, xx.cols, d.cols
	if ww.dt != ml.BF16 || dw.dt != ml.BF16 || T <= max(b.opts.SkinnyMaxT, b.opts.GemvMaxT) || I%8 != 0 {
		return false, nil // the GEMV paths, or no whole uint4 of act per thread
	}
	if ww.cols != K || ww.rows != 2*I || gu.rows != T || gu.cols != 2*I || d.rows != T {
		return false, shapeErr("gate/up %dx%d = x %dx%d · w %dx%dᵀ, act %dx%d", gu.rows, gu.cols, T, K, ww.rows, ww.cols, d.rows, d.cols)
	}
	xp := b.sh16.ptr // the producing norm already wrote x in bf16
	if !b.shadowed(xx) {
		if xp, err = b.castAct16(xx, "cast_f32_bf16"); err != nil {
			return false, err
		}
	}
	b.invalidate(gu.ptr, gu.bytes())
	b.pushGemm(gemmArgs{transa: cublasOpT, transb: cublasOpN, m: int32(2 * I), n: int32(T), k: int32(K),
		a: ww.ptr, atype: cudaR16BF, lda: int32(K), b: xp, btype: cudaR16BF, ldb: int32(K),
		c: gu.ptr, ctype: cudaR16BF, ldc: int32(2 * I)})
	b.invalidate(d.ptr, d.bytes())
	sh, err := b.setShadow(d)
	if err != nil {
		return false, err
	}
	b.gateUp16++
	n8 := int64(d.n()) / 8
	st := b.argStart()
	b.aP(sh)
	b.aP(gu.ptr)
	b.aI(I)
	b.aL(n8)
	return true, b.push("silu_mul16", g1(gridFor(n8, 256)), g1(256), st)
}

// GatherRows implements ml.Backend.
func (b *Backend) GatherRows(dst, src, idx ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	d, err := b.f32(dst, "gather dst")
	if err != nil {
		return err
	}
	s, err := b.f32(src, "gather src")
	if err != nil {
		return err
	}
	ix, err := b.i32(idx, "gather idx", d.rows)
	if err != nil {
		return err
	}
	if d.cols != s.cols {
		return shapeErr("gather dst %dx%d src %dx%d", d.rows, d.cols, s.rows, s.cols)
	}
	if d.rows == 0 {
		return nil
	}
	b.invalidate(d.ptr, d.bytes())
	st := b.argStart()
	b.aP(d.ptr)
	b.aP(s.ptr)
	b.aP(ix.ptr)
	b.aI(d.cols)
	b.aI(s.rows)
	return b.push("gather_rows", g1(d.rows), g1(threadsFor(d.cols, 256)), st)
}

// ArgMax writes the index of each row's largest value of the F32 tensor
// logits[R, V] into the I32 tensor dst (≥ R elements); ties pick the lowest
// index. With DownloadI32 it lets greedy decoding copy back 4 bytes a row
// instead of the whole logits row.
func (b *Backend) ArgMax(dst, logits ml.Tensor) error {
	return b.ArgMaxAllowed(dst, logits, nil)
}

// ArgMaxAllowed is ArgMax among the tokens allowed allows: an I32 tensor
// of one bitset row per logits row (bit t%32 of word t/32 allows token t;
// ceil(V/32) words), or nil for every token. A row that allows nothing
// gives 0.
func (b *Backend) ArgMaxAllowed(dst, logits, allowed ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	x, err := b.f32(logits, "argmax logits")
	if err != nil {
		return err
	}
	d, err := b.i32(dst, "argmax dst", x.rows)
	if err != nil {
		return err
	}
	var ap uint64
	words := (x.cols + 31) / 32
	if allowed != nil {
		a, err := b.tens(allowed, "argmax allowed")
		if err != nil {
			return err
		}
		if a.dt != ml.I32 || a.cols != words || a.rows < x.rows {
			return shapeErr("argmax allowed %dx%d %v for %d rows of %d tokens (%d words each)", a.rows, a.cols, a.dt, x.rows, x.cols, words)
		}
		ap = a.ptr
	}
	if x.rows == 0 || x.cols == 0 {
		return nil
	}
	if x.rows > 65535 {
		return fmt.Errorf("%w: argmax over %d rows (max 65535)", ml.ErrUnsupported, x.rows)
	}
	// A block per ~2k entries of a row, partials reduced by the row's last block.
	nb := min(max(1, x.cols/2048), 256)
	if err := b.ensure(&b.amPart, int64(x.rows)*int64(nb)*8); err != nil {
		return err
	}
	if err := b.ensure(&b.amCount, int64(x.rows)*4); err != nil { // zeroed at allocation, reset by the kernel
		return err
	}
	b.invalidate(d.ptr, int64(x.rows)*4)
	st := b.argStart()
	b.aP(d.ptr)
	b.aP(x.ptr)
	b.aI(x.cols)
	b.aP(b.amPart.ptr)
	b.aP(b.amPart.ptr + uint64(x.rows*nb*4))
	b.aP(b.amCount.ptr)
	b.aP(ap)
	b.aI(words)
	return b.push("argmax_rows", g3(nb, x.rows, 1), g1(256), st)
}
