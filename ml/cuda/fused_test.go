package cuda

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/mltest"
)

// cacheRows downloads slots' rows of layer 0's K or V part of an f32 cache.
func cacheRows(t *testing.T, b *Backend, c ml.KVCache, v bool, slots []int32) [][]float32 {
	t.Helper()
	kc := c.(*kvCache)
	p := kc.k(0)
	if v {
		p = kc.v(0)
	}
	all := &tensor{owner: b, ptr: p, dt: ml.F32, rows: kc.numBlocks * kc.blockSize, cols: kc.kvh * kc.hd}
	out := make([][]float32, len(slots))
	for i, s := range slots {
		out[i] = make([]float32, all.cols)
		if err := b.Download(out[i], b.View(all, int(s), 1)); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// closeRows fails when a row of got differs from want by more than
// 2e-4 of the row's largest magnitude: f32 summation order stays far below
// it, a wrong row, column, rotation, scale or cache slot does not.
func closeRows(t *testing.T, what string, got, want []float32, cols int) {
	t.Helper()
	for r := 0; r*cols < len(want); r++ {
		g, w := got[r*cols:(r+1)*cols], want[r*cols:(r+1)*cols]
		mx := 0.0
		for _, v := range w {
			mx = math.Max(mx, math.Abs(float64(v)))
		}
		for j := range w {
			if d := math.Abs(float64(g[j] - w[j])); d > 2e-4*mx+1e-6 || math.IsNaN(float64(g[j])) {
				t.Fatalf("%s: [%d,%d] = %v, want %v (row max %.3g)", what, r, j, g[j], w[j], mx)
			}
		}
	}
}

// TestFusedDecodeMatchesUnfused checks each fused decode op against the
// unfused ops it replaces (themselves checked against the CPU backend; with
// SkinnyMaxT their MatMuls keep f32 activations, as the fused norms do), for
// 1 to 4 tokens, bf16 and FP8 weights, with and without biases, GQA head
// layouts and widths at the edges of the GEMV's vector loop, PDL on and
// off, launched directly and replayed from a CUDA graph.
func TestFusedDecodeMatchesUnfused(t *testing.T) {
	gpuOrSkip(t)
	type shape struct{ H, I, nh, nkv, hd int }
	for _, o := range []Options{{FusedDecodeMaxT: 4, SkinnyMaxT: 4, DisableGraphs: true},
		{FusedDecodeMaxT: 4, SkinnyMaxT: 4, EnablePDL: true, DisableGraphs: true},
		{FusedDecodeMaxT: 4, SkinnyMaxT: 4, EnablePDL: true, GraphMinOps: 1},
		{FusedDecodeMaxT: 4, SkinnyMaxT: 4, GraphMinOps: 1}} {
		b := newTestBackend(t, o)
		for si, sh := range []shape{{96, 256, 6, 2, 16}, {1536, 8960, 12, 2, 128}, {264, 520, 4, 4, 66}, {8, 24, 1, 1, 8}} {
			for _, wdt := range []ml.DType{ml.BF16, ml.F8} {
				for T := 1; T <= 4; T++ {
					for _, withBias := range []bool{false, true} {
						name := fmt.Sprintf("pdl=%v/graphs=%v/shape=%d/%v/T=%d/bias=%v", o.EnablePDL, !o.DisableGraphs, si, wdt, T, withBias)
						r := rand.New(rand.NewPCG(uint64(si*10+T), 7))
						reps := 1
						if !o.DisableGraphs {
							reps = 3 // the same recorded ops captured, then replayed
						}
						for rep := 0; rep < reps; rep++ {
							fusedCase(t, b, r, name, wdt, T, sh.H, sh.I, sh.nh, sh.nkv, sh.hd, withBias)
						}
					}
				}
			}
		}
		b.Close()
	}
}

func fusedCase(t *testing.T, b *Backend, r *rand.Rand, name string, wdt ml.DType, T, H, I, nh, nkv, hd int, withBias bool) {
	t.Helper()
	var free []ml.Tensor
	defer func() {
		for _, x := range free {
			b.Free(x)
		}
	}()
	f32 := func(rows, cols int, a float32) (ml.Tensor, []float32) {
		x, err := b.NewTensor(ml.F32, rows, cols)
		if err != nil {
			t.Fatal(err)
		}
		free = append(free, x)
		v := mltest.RandF32(r, rows*cols, a)
		if a != 0 {
			if err := b.UploadF32(x, v); err != nil {
				t.Fatal(err)
			}
		}
		return x, v
	}
	weight := func(rows, cols int) ml.Tensor {
		w, err := b.LoadWeight(rows, cols, mltest.Encode(ml.F32, mltest.RandF32(r, rows*cols, 1)), ml.F32, wdt)
		if err != nil {
			t.Fatal(err)
		}
		free = append(free, w)
		return w
	}
	i32 := func(v []int32) ml.Tensor {
		x, _ := b.NewTensor(ml.I32, len(v), 1)
		free = append(free, x)
		if err := b.UploadI32(x, v); err != nil {
			t.Fatal(err)
		}
		return x
	}
	dl := func(x ml.Tensor) []float32 {
		v := make([]float32, x.Rows()*x.Cols())
		if err := b.Download(v, x); err != nil {
			t.Fatal(err)
		}
		return v
	}
	bias := func(n int) ml.Tensor {
		if !withBias {
			return nil
		}
		x, _ := f32(1, n, 1)
		return x
	}
	const eps = 1e-5
	W := (nh + 2*nkv) * hd
	h, hv := f32(T, H, 3)
	nw, _ := f32(1, H, 1)
	wqkv, bqkv := weight(W, H), bias(W)
	inv := make([]float32, hd/2)
	for j := range inv {
		inv[j] = float32(math.Pow(10000, -2*float64(j)/float64(hd)))
	}
	invT, _ := f32(1, hd/2, 0)
	if err := b.UploadF32(invT, inv); err != nil {
		t.Fatal(err)
	}
	pos, slots := make([]int32, T), make([]int32, T)
	perm := r.Perm(63)
	for i := range pos {
		pos[i] = int32(r.IntN(5000))
		slots[i] = int32(perm[i])
	}
	if T > 1 {
		slots[0] = 63   // the cache's last slot
		slots[T-1] = -1 // a padding token: nothing stored
	}
	posT, slotT := i32(pos), i32(slots)

	// Attention prologue.
	cu, err := b.NewKVCache(1, 4, 16, nkv, hd, ml.F32)
	if err != nil {
		t.Fatal(err)
	}
	defer b.FreeKVCache(cu)
	cf, err := b.NewKVCache(1, 4, 16, nkv, hd, ml.F32)
	if err != nil {
		t.Fatal(err)
	}
	defer b.FreeKVCache(cf)
	xn, _ := f32(T, H, 0)
	qu, _ := f32(T, W, 0)
	qf, _ := f32(T, W, 0)
	if err := errors.Join(b.RMSNorm(xn, h, nw, eps), b.MatMul(qu, xn, wqkv, nil),
		b.QKVRoPEWriteKV(qu, bqkv, posT, invT, nh, nkv, hd, cu, 0, slotT),
		b.NormQKVRoPEWriteKV(qf, h, nw, eps, wqkv, bqkv, posT, invT, nh, nkv, hd, cf, 0, slotT)); err != nil {
		t.Fatal(err)
	}
	qkd := (nh + nkv) * hd
	gq, wq := dl(qf), dl(qu)
	for tt := 0; tt < T; tt++ {
		closeRows(t, name+" q,k", gq[tt*W:tt*W+qkd], wq[tt*W:tt*W+qkd], qkd)
	}
	var stored []int32
	for _, s := range slots {
		if s >= 0 {
			stored = append(stored, s)
		}
	}
	for _, v := range []bool{false, true} {
		g, w := cacheRows(t, b, cf, v, stored), cacheRows(t, b, cu, v, stored)
		for i := range g {
			closeRows(t, fmt.Sprintf("%s cache v=%v slot %d", name, v, stored[i]), g[i], w[i], nkv*hd)
		}
	}

	// o projection with the residual add.
	attn, attnV := f32(T, nh*hd, 0)
	for i := range attnV {
		attnV[i] = mltest.Round(ml.BF16, float32(r.NormFloat64()))
	}
	if err := b.UploadF32(attn, attnV); err != nil {
		t.Fatal(err)
	}
	wo, bo := weight(H, nh*hd), bias(H)
	ou, _ := f32(T, H, 0)
	hf, _ := f32(T, H, 0)
	if err := errors.Join(b.UploadF32(hf, hv), b.MatMul(ou, attn, wo, bo), b.MatMulAdd(hf, attn, wo, bo)); err != nil {
		t.Fatal(err)
	}
	want := dl(ou)
	for i := range want {
		want[i] += hv[i]
	}
	got := dl(hf)
	closeRows(t, name+" o+residual", got, want, H)

	// MLP: norm, gate/up, SiLU; then down with the residual add.
	wgu, bgu := weight(2*I, H), bias(2*I)
	wd, bd := weight(H, I), bias(H)
	gu, _ := f32(T, 2*I, 0)
	au, _ := f32(T, I, 0)
	af, _ := f32(T, I, 0)
	du, _ := f32(T, H, 0)
	if err := errors.Join(b.RMSNorm(xn, hf, nw, eps), b.MatMul(gu, xn, wgu, bgu), b.SiLUMul(au, gu),
		b.NormGateUpSiLU(af, hf, nw, eps, wgu, bgu)); err != nil {
		t.Fatal(err)
	}
	closeRows(t, name+" silu", dl(af), dl(au), I)
	hBefore := dl(hf)
	// The down projection reads act in f32, as the reference does.
	if err := errors.Join(b.MatMul(du, af, wd, bd), b.MatMulAdd(hf, af, wd, bd)); err != nil {
		t.Fatal(err)
	}
	want = dl(du)
	for i := range want {
		want[i] += hBefore[i]
	}
	closeRows(t, name+" down+residual", dl(hf), want, H)

	// lm_head-style NormMatMul (odd N).
	N := 2*H + 3
	wl := weight(N, H)
	lu, _ := f32(T, N, 0)
	lf, _ := f32(T, N, 0)
	if err := errors.Join(b.RMSNorm(xn, hf, nw, eps), b.MatMul(lu, xn, wl, nil), b.NormMatMul(lf, hf, nw, eps, wl, nil)); err != nil {
		t.Fatal(err)
	}
	closeRows(t, name+" norm-matmul", dl(lf), dl(lu), N)
}

// TestFusedDecodeRejects: shapes and dtypes the fused ops don't take are
// ml.ErrUnsupported (the model then keeps the unfused ops), not wrong results.
func TestFusedDecodeRejects(t *testing.T) {
	gpuOrSkip(t)
	b := newTestBackend(t, Options{FusedDecodeMaxT: 4})
	defer b.Close()
	r := rand.New(rand.NewPCG(1, 1))
	x5, _ := b.NewTensor(ml.F32, 5, 64)
	x1, _ := b.NewTensor(ml.F32, 1, 64)
	nw, _ := b.NewTensor(ml.F32, 1, 64)
	d5, _ := b.NewTensor(ml.F32, 5, 32)
	d1, _ := b.NewTensor(ml.F32, 1, 32)
	wbf, _ := b.LoadWeight(32, 64, mltest.Encode(ml.F32, mltest.RandF32(r, 32*64, 1)), ml.F32, ml.BF16)
	wf32, _ := b.LoadWeight(32, 64, mltest.Encode(ml.F32, mltest.RandF32(r, 32*64, 1)), ml.F32, ml.F32)
	if err := b.NormMatMul(d5, x5, nw, 1e-5, wbf, nil); !errors.Is(err, ml.ErrUnsupported) {
		t.Errorf("5 tokens: %v, want ErrUnsupported", err)
	}
	if err := b.NormMatMul(d1, x1, nw, 1e-5, wf32, nil); !errors.Is(err, ml.ErrUnsupported) {
		t.Errorf("f32 weight: %v, want ErrUnsupported", err)
	}
	if b.FusedDecode(5, 64) || b.FusedDecode(1, 64, wf32) || !b.FusedDecode(4, 64, wbf) || b.FusedDecode(1, 12) {
		t.Error("FusedDecode disagrees with the ops")
	}
	db := newTestBackend(t, Options{})
	defer db.Close()
	if !db.FusedDecode(defaultFusedDecodeMaxT, 64) || db.FusedDecode(defaultFusedDecodeMaxT+1, 64) {
		t.Errorf("default backend: fused decode must take up to %d tokens", defaultFusedDecodeMaxT)
	}
	nb := newTestBackend(t, Options{ExactActivations: true})
	defer nb.Close()
	if !nb.FusedDecode(1, 64) {
		t.Error("the fused decode ops keep f32 activations, so ExactActivations takes them too")
	}
}

// BenchmarkDgemv times the fused decode GEMVs on Qwen2.5-1.5B's shapes at
// each split-K factor, as graph-replayed batches of 64 launches over enough
// weight copies to miss the 50 MB L2, as a decode step streams its weights.
// Compare BenchmarkGemv's cuBLAS rows (same shapes, plain MatMul).
func BenchmarkDgemv(bm *testing.B) {
	gpuOrSkip(bm)
	type variant struct {
		name string
		o    Options
	}
	vs := []variant{{"auto", Options{FusedDecodeMaxT: 4}}, {"auto-pdl", Options{FusedDecodeMaxT: 4, EnablePDL: true}}}
	for _, ks := range []int{1, 2, 4, 8} {
		vs = append(vs, variant{fmt.Sprintf("ks%d", ks), Options{FusedDecodeMaxT: 4, DgemvKS: ks}})
	}
	for _, v := range vs {
		b := newTestBackend(bm, v.o)
		r := rand.New(rand.NewPCG(1, 1))
		for _, sh := range decodeShapes {
			bytes := sh.N * sh.K * 2
			ws := weightCopies(bm, b, r, sh.N, sh.K)
			copies := len(ws)
			nw, _ := b.LoadWeight(1, sh.K, randBytes(r, sh.K, ml.F32, 1), ml.F32, ml.F32)
			for _, T := range []int{1, 2, 4} {
				xf, _ := b.NewTensor(ml.F32, T, sh.K)
				d, _ := b.NewTensor(ml.F32, T, sh.N)
				act, _ := b.NewTensor(ml.F32, T, sh.N/2)
				_ = b.UploadF32(xf, mltest.RandF32(r, T*sh.K, 1))
				op := func(i int) error {
					w := ws[i%copies]
					switch sh.name {
					case "o", "down":
						return b.MatMulAdd(d, xf, w, nil)
					case "gate_up":
						return b.NormGateUpSiLU(act, xf, nw, 1e-6, w, nil)
					}
					return b.NormMatMul(d, xf, nw, 1e-6, w, nil)
				}
				bm.Run(fmt.Sprintf("%s/%s/T=%d", v.name, sh.name, T), func(bm *testing.B) { benchBatched(bm, b, bytes, op) })
				for _, x := range []ml.Tensor{xf, d, act} {
					b.Free(x)
				}
			}
			b.Free(nw)
			for _, w := range ws {
				b.Free(w)
			}
		}
		b.Close()
	}
}
