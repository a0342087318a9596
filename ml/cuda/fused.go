package cuda

import (
	"fmt"

	"github.com/llmserve/llmserve/ml"
)

// Fused decode ops. A decode step of a few tokens is bound by streaming the
// weights once, and on an H100 a 1.5B model's step is ~300 kernels whose
// launch gaps and ramp-ups cost as much as the streaming. These ops fold
// each layer's RMSNorms, RoPE and KV write, SiLU and residual adds into the
// GEMVs (the dgemv kernels): five launches per layer instead of ten. With
// programmatic dependent launch (Options.EnablePDL, off by default: 1-2%
// slower on an H100) each GEMV issues its first weight loads before waiting
// for the kernel ahead of it.
// The backend's fused layers (layers.go) use them for steps FusedDecode
// accepts. One-token steps go further: DecodeLayers (step.go) runs every
// layer in one cooperative launch on the same GEMVs.

// defaultFusedDecodeMaxT is Options.FusedDecodeMaxT's default. On an H100
// (Qwen2.5-1.5B, BenchmarkModelDecode, results/h100) the fused step took
// 2.25 ms at one token against 2.51 unfused, but 2.58 and 3.47 ms at two and
// four tokens against 2.48 and 2.53: each token re-reads x per weight vector.
const defaultFusedDecodeMaxT = 1

// dgemvM is the token capacity (a compiled variant) serving T tokens.
func dgemvM(T int) int {
	switch {
	case T <= 1:
		return 1
	case T <= 2:
		return 2
	}
	return 4
}

// FusedDecode reports whether a step of T tokens of a model with the given
// hidden size takes the fused decode ops, and, when weights are given,
// whether those weights suit them (bf16, rows a multiple of 8 elements).
func (b *Backend) FusedDecode(T, hidden int, weights ...ml.Tensor) bool {
	if T < 1 || T > b.opts.FusedDecodeMaxT || hidden <= 0 || hidden%8 != 0 {
		return false
	}
	for _, w := range weights {
		t, ok := w.(*tensor)
		if !ok || t == nil || t.owner != b || (t.dt != ml.BF16 && t.dt != ml.F8) || t.cols%8 != 0 {
			return false
		}
	}
	return true
}

// dgemvArgs mirrors DArgs in kernels/dgemv.cu.
type dgemvArgs struct {
	w, bias, xg, xr, nw, dst, dst16, pos, invFreq, kc, vc, slots, res uint64
	wscale                                                            uint64 // FP8 weights: the rows' scales
	numSlots                                                          int64
	n, k, t, ldx, ldxr, ldd, nwdt, nh, nkv, hd, kvdt                  int
	eps                                                               float32
}

func (b *Backend) pushDgemv(epi string, a *dgemvArgs) error {
	st := b.argStart()
	for _, p := range []uint64{a.w, a.bias, a.xg, a.xr, a.nw, a.dst, a.dst16, a.pos, a.invFreq, a.kc, a.vc, a.slots, a.res, a.wscale} {
		b.aP(p)
	}
	b.aL(a.numSlots)
	for _, v := range []int{a.n, a.k, a.t, a.ldx, a.ldxr, a.ldd, a.nwdt, a.nh, a.nkv, a.hd, a.kvdt} {
		b.aI(v)
	}
	b.aF(a.eps)
	b.align(8) // the struct's size is a multiple of its alignment
	m := dgemvM(a.t)
	pairs := (a.n + 1) / 2
	ks := b.dgemvKS(pairs, a.k)
	b.skinnyRec.valid, b.ropeRec.valid = false, false
	per := 8 / ks // pairs per 8-warp block
	if a.wscale != 0 {
		epi += "_f8"
	}
	return b.push(fmt.Sprintf("dgemv_%s_%d_%d", epi, m, ks), g1((pairs+per-1)/per), g1(256), st)
}

// dgemvKS picks how many warps split each pair of rows' K: enough warps to
// keep every SM streaming (a few thousand) when the matrix has few rows, as
// long as each lane keeps at least two 16-byte loads per row.
func (b *Backend) dgemvKS(pairs, K int) int {
	switch b.opts.DgemvKS {
	case 1, 2, 4, 8:
		return b.opts.DgemvKS
	}
	ks := 1
	for ks < 8 && pairs*ks < 32*int(b.dev.sms) && K/8/(64*ks) >= 2 {
		ks *= 2
	}
	return ks
}

// fusedOperands checks the operands every fused op shares: x [T,K],
// w [N,K] bf16 with N = wantN (0: any), dst [T, ≥N/outDiv] f32 (the SiLU
// epilogue writes one column per gate/up pair), bias nil or f32 [N]. It
// returns the tensors and the bias pointer.
func (b *Backend) fusedOperands(op string, dst, x, w, bias ml.Tensor, wantN, outDiv int) (d, xx, ww *tensor, bp uint64, err error) {
	if d, err = b.f32(dst, op+" dst"); err != nil {
		return
	}
	if xx, err = b.tens(x, op+" x"); err != nil {
		return
	}
	if ww, err = b.tens(w, op+" w"); err != nil {
		return
	}
	T, K, N := xx.rows, xx.cols, ww.rows
	if (ww.dt != ml.BF16 && ww.dt != ml.F8) || K%8 != 0 || T < 1 || T > b.opts.FusedDecodeMaxT {
		return nil, nil, nil, 0, fmt.Errorf("%w: %s of %d tokens with %v weights %dx%d (fused decode takes ≤%d tokens, bf16 or fp8, K%%8 == 0)",
			ml.ErrUnsupported, op, T, ww.dt, ww.rows, ww.cols, max(b.opts.FusedDecodeMaxT, 0))
	}
	if ww.cols != K || d.rows != T || d.cols < N/outDiv || (wantN > 0 && N != wantN) {
		return nil, nil, nil, 0, shapeErr("%s dst %dx%d = x %dx%d · w %dx%dᵀ", op, d.rows, d.cols, xx.rows, xx.cols, ww.rows, ww.cols)
	}
	if bias != nil {
		var bb *tensor
		if bb, err = b.f32(bias, op+" bias"); err != nil {
			return
		}
		if bb.n() != N {
			return nil, nil, nil, 0, shapeErr("%s bias %dx%d for N=%d", op, bb.rows, bb.cols, N)
		}
		bp = bb.ptr
	}
	return d, xx, ww, bp, nil
}

// normArg checks a norm weight of K elements and returns its kernel dtype code.
func (b *Backend) normArg(normW ml.Tensor, K int) (*tensor, int, error) {
	nw, err := b.tens(normW, "norm weight")
	if err != nil {
		return nil, 0, err
	}
	if nw.n() != K {
		return nil, 0, shapeErr("norm weight %dx%d for %d columns", nw.rows, nw.cols, K)
	}
	switch nw.dt {
	case ml.F32:
		return nw, 0, nil
	case ml.BF16:
		return nw, 1, nil
	case ml.F16:
		return nw, 2, nil
	}
	return nil, 0, fmt.Errorf("%w: norm weight dtype %v", ml.ErrUnsupported, nw.dt)
}

// normedArgs fills the prologue of a GEMV over RMSNorm(x)·normW.
func (b *Backend) normedArgs(op string, dst, x, normW ml.Tensor, eps float32, w, bias ml.Tensor, wantN, outDiv int) (*dgemvArgs, *tensor, error) {
	d, xx, ww, bp, err := b.fusedOperands(op, dst, x, w, bias, wantN, outDiv)
	if err != nil {
		return nil, nil, err
	}
	if xx.dt != ml.F32 || xx.cols%4 != 0 {
		return nil, nil, shapeErr("%s x %v with %d columns, want f32", op, xx.dt, xx.cols)
	}
	nw, nwdt, err := b.normArg(normW, xx.cols)
	if err != nil {
		return nil, nil, err
	}
	b.invalidate(d.ptr, d.bytes())
	return &dgemvArgs{w: ww.ptr, wscale: ww.scales, bias: bp, xr: xx.ptr, nw: nw.ptr, dst: d.ptr, n: ww.rows, k: xx.cols, t: xx.rows,
		ldxr: xx.cols, ldd: d.cols, nwdt: nwdt, eps: eps}, d, nil
}

// NormMatMul sets dst[T,N] = (RMSNorm(x)·normW)·wᵀ (+bias) for a step
// FusedDecode accepts; x [T,K] is left as it is.
func (b *Backend) NormMatMul(dst, x, normW ml.Tensor, eps float32, w, bias ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	a, _, err := b.normedArgs("norm-matmul", dst, x, normW, eps, w, bias, 0, 1)
	if err != nil {
		return err
	}
	return b.pushDgemv("store", a)
}

// NormQKVRoPEWriteKV is NormMatMul into the fused q/k/v projection qkv
// followed by QKVRoPEWriteKV, in one launch: w is [(numHeads+2·numKVHeads)·
// headDim, K], bias (nil: none) is added to all three, q and k are rotated,
// and k and v are stored into layer's cache at slots (< 0: not stored).
func (b *Backend) NormQKVRoPEWriteKV(qkv, x, normW ml.Tensor, eps float32, w, bias, positions, invFreq ml.Tensor,
	numHeads, numKVHeads, headDim int, c ml.KVCache, layer int, slots ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	kc, err := b.cache(c, layer)
	if err != nil {
		return err
	}
	if headDim <= 0 || headDim%2 != 0 || numHeads <= 0 || numKVHeads != kc.kvh || headDim != kc.hd {
		return shapeErr("qkv: %d heads, %d kv heads of %d (cache %d of %d)", numHeads, numKVHeads, headDim, kc.kvh, kc.hd)
	}
	kvdt := 0
	switch kc.dt {
	case ml.F32:
	case ml.BF16:
		kvdt = 1
	case ml.F8:
		kvdt = 2
	default:
		return fmt.Errorf("%w: KV cache dtype %v", ml.ErrUnsupported, kc.dt)
	}
	a, d, err := b.normedArgs("norm-qkv", qkv, x, normW, eps, w, bias, (numHeads+2*numKVHeads)*headDim, 1)
	if err != nil {
		return err
	}
	pos, inv, sl, err := b.ropeOperands(positions, invFreq, slots, d.rows, headDim)
	if err != nil {
		return err
	}
	a.pos, a.invFreq, a.slots = pos.ptr, inv.ptr, sl.ptr
	a.kc, a.vc, a.numSlots, a.kvdt = kc.k(layer), kc.v(layer), int64(kc.numBlocks)*int64(kc.blockSize), kvdt
	a.nh, a.nkv, a.hd = numHeads, numKVHeads, headDim
	return b.pushDgemv("rope", a)
}

// NormGateUpSiLU sets act[T,I] = silu(g)·u where [g | u] = (RMSNorm(x)·
// normW)·gateUpᵀ (+bias), gateUp [2I, K] holding the gate rows then the up
// rows. It also leaves act's bf16 copy for the down projection.
func (b *Backend) NormGateUpSiLU(act, x, normW ml.Tensor, eps float32, gateUp, bias ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	d, err := b.f32(act, "silu act")
	if err != nil {
		return err
	}
	a, _, err := b.normedArgs("norm-gateup-silu", act, x, normW, eps, gateUp, bias, 2*d.cols, 2)
	if err != nil {
		return err
	}
	if a.dst16, err = b.setShadow(d); err != nil {
		return err
	}
	return b.pushDgemv("silu", a)
}

// MatMulAdd adds x·wᵀ (+bias) to acc[T,N] (the residual stream), reading
// f32 x as it is (x is a few KiB against the weight's MiB), or, with
// RoundActivations, through its bf16 copy.
func (b *Backend) MatMulAdd(acc, x, w, bias ml.Tensor) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	d, xx, ww, bp, err := b.fusedOperands("matmul-add", acc, x, w, bias, 0, 1)
	if err != nil {
		return err
	}
	if d.cols != ww.rows {
		return shapeErr("matmul-add acc %dx%d for N=%d", d.rows, d.cols, ww.rows)
	}
	T, K := xx.rows, xx.cols
	var xg uint64
	ldx := K
	switch {
	case xx.dt == ml.BF16:
		xg = xx.ptr
	case xx.dt != ml.F32:
		return shapeErr("matmul-add x %v", xx.dt)
	case !b.opts.RoundActivations:
		b.invalidate(d.ptr, d.bytes())
		return b.pushDgemv("addf", &dgemvArgs{w: ww.ptr, wscale: ww.scales, bias: bp, xr: xx.ptr, dst: d.ptr, n: ww.rows, k: K, t: T, ldxr: K, ldd: d.cols})
	case b.shadowed(xx):
		xg = b.sh16.ptr
	default:
		if xg, err = b.castAct16(xx, "cast_f32_bf16"); err != nil {
			return err
		}
	}
	b.invalidate(d.ptr, d.bytes())
	return b.pushDgemv("add", &dgemvArgs{w: ww.ptr, wscale: ww.scales, bias: bp, xg: xg, dst: d.ptr, n: ww.rows, k: K, t: T, ldx: ldx, ldd: d.cols})
}
