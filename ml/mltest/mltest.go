// Package mltest is the conformance suite every ml.Backend passes: each op is
// run on random inputs and compared with a naive float64 reference.
//
// Conventions the suite pins down beyond ml.go's comments:
//   - Index tensors (ids, positions, slots, TokenSeq, GatherRows' idx) are I32
//     tensors of any shape; the first n elements are read, where n is the
//     number of rows of the op's data operand (or meta.NumTokens), and
//     Rows()*Cols() must be at least n. The suite passes both [1,n] and [n,1].
//   - meta.BlockTables has shape [NumSeqs, MaxBlocks]: MaxBlocks is its
//     row stride; unused entries are ignored.
//   - Views of rows may be passed anywhere a tensor is, as dst or operand.
//   - I8 weights are symmetric per output row: scale = max|row|/127,
//     q = round(w/scale).
//
// A backend test is one line:
//
//	func TestConformance(t *testing.T) { mltest.RunBackendTests(t, func() ml.Backend { return New(...) }) }
package mltest

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llmserve/llmserve/ml"
)

// Options sets the suite's tolerances and what it covers. An error is
// measured as |got-want| / max(1, max|want|) over a whole output.
type Options struct {
	// Tol bounds elementwise ops and norms (RMSNorm, SiLUMul, Embedding of f32).
	Tol float64
	// MatMulTol bounds MatMul and Attention, which accumulate long sums.
	MatMulTol float64
	// RoPETol bounds RoPE (an f32 angle pos*invFreq loses ~pos*6e-8 rad).
	RoPETol float64
	// WeightDTypes are the storage dtypes tested for LoadWeight, Embedding
	// and MatMul (ErrUnsupported from LoadWeight skips one).
	WeightDTypes []ml.DType
	// KVDTypes are the KV cache dtypes tested (ErrUnsupported skips one).
	KVDTypes []ml.DType
	// Seed makes the random inputs reproducible.
	Seed uint64
	// Int8Activations: matmuls with int8 weights quantize their
	// activations as RefQuantizeQ8 does, and the reference does the same.
	Int8Activations bool
}

// DefaultOptions suits a backend computing in float32.
func DefaultOptions() Options {
	return Options{
		Tol:          2e-6,
		MatMulTol:    2e-5,
		RoPETol:      2e-4,
		WeightDTypes: []ml.DType{ml.F32, ml.F16, ml.BF16, ml.I8, ml.F8},
		KVDTypes:     []ml.DType{ml.F32, ml.BF16, ml.F16, ml.F8},
		Seed:         1,
	}
}

// RunBackendTests runs the suite with DefaultOptions.
func RunBackendTests(t *testing.T, newBackend func() ml.Backend) {
	Run(t, newBackend, DefaultOptions())
}

// Run runs every conformance test; newBackend is called once per subtest
// and the backend closed at its end.
func Run(t *testing.T, newBackend func() ml.Backend, o Options) {
	s := &suite{newBackend: newBackend, o: o}
	tests := []struct {
		name string
		fn   func(t *testing.T, b ml.Backend)
	}{
		{"UploadDownloadView", s.testUploadDownload},
		{"Embedding", s.testEmbedding},
		{"RMSNorm", s.testRMSNorm},
		{"AddRMSNorm", s.testAddRMSNorm},
		{"MatMul", s.testMatMul},
		{"MatMulLarge", s.testMatMulLarge},
		{"MatMulI8Quantize", s.testMatMulI8Quantize},
		{"RoPE", s.testRoPE},
		{"Attention", s.testAttention},
		{"AttentionLongContext", s.testAttentionLong},
		{"AttentionLayers", s.testAttentionLayers},
		{"SiLUMul", s.testSiLUMul},
		{"GatherRows", s.testGatherRows},
		{"RMSNormHeads", s.testRMSNormHeads},
		{"TopKSoftmax", s.testTopKSoftmax},
		{"MatMulExperts", s.testMatMulExperts},
		{"ScatterAdd", s.testScatterAdd},
		{"AttentionWindow", s.testAttentionWindow},
		{"AttentionRandomShapes", s.testAttentionRandom},
		{"ShapeErrors", s.testShapeErrors},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend()
			defer func() {
				if err := b.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			}()
			tc.fn(t, b)
		})
	}
}

type suite struct {
	newBackend func() ml.Backend
	o          Options
}

func (s *suite) rng(salt uint64) *rand.Rand {
	return rand.New(rand.NewPCG(s.o.Seed, salt))
}

// --- helpers ---

// must returns a function that fails t on a non-nil error and passes the
// value through: must[T](t)(f()).
func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func ok(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func newF32(t *testing.T, b ml.Backend, rows, cols int, data []float32) ml.Tensor {
	t.Helper()
	x := must[ml.Tensor](t)(b.NewTensor(ml.F32, rows, cols))
	if data != nil {
		ok(t, "UploadF32", b.UploadF32(x, data))
	}
	return x
}

func newI32(t *testing.T, b ml.Backend, rows, cols int, data []int32) ml.Tensor {
	t.Helper()
	x := must[ml.Tensor](t)(b.NewTensor(ml.I32, rows, cols))
	if data != nil {
		ok(t, "UploadI32", b.UploadI32(x, data))
	}
	return x
}

func download(t *testing.T, b ml.Backend, x ml.Tensor) []float32 {
	t.Helper()
	out := make([]float32, x.Rows()*x.Cols())
	ok(t, "Download", b.Download(out, x))
	return out
}

// loadWeight stores w (rows×cols f32 values) as dtype store, encoded in src;
// it returns the tensor and the values the backend should now hold.
func loadWeight(t *testing.T, b ml.Backend, w []float32, rows, cols int, src, store ml.DType) (ml.Tensor, []float32, bool) {
	t.Helper()
	want := make([]float32, len(w))
	for i, v := range w {
		want[i] = Round(src, v)
	}
	switch store {
	case ml.F16, ml.BF16:
		for i, v := range want {
			want[i] = Round(store, v)
		}
	case ml.I8:
		want = QuantizeI8(want, rows, cols)
	case ml.F8:
		want = QuantizeF8(want, rows, cols)
	}
	wt, err := b.LoadWeight(rows, cols, Encode(src, w), src, store)
	if errors.Is(err, ml.ErrUnsupported) {
		return nil, nil, false
	}
	ok(t, fmt.Sprintf("LoadWeight(%s→%s)", src, store), err)
	if wt.Rows() != rows || wt.Cols() != cols || wt.DType() != store {
		t.Fatalf("LoadWeight: got %s [%d,%d], want %s [%d,%d]", wt.DType(), wt.Rows(), wt.Cols(), store, rows, cols)
	}
	return wt, want, true
}

// weightValues returns random weights for dtype store: exactly
// representable ones for I8, uniform in [-1,1) otherwise.
func weightValues(r *rand.Rand, store ml.DType, rows, cols int) []float32 {
	if store == ml.I8 {
		return RandI8Exact(r, rows, cols)
	}
	return RandF32(r, rows*cols, 1)
}

// srcFor is the checkpoint dtype a test loads a weight of dtype store from.
func srcFor(store ml.DType) ml.DType {
	if store == ml.I8 || store == ml.F8 {
		return ml.F32
	}
	return store
}

// compare fails t when got and want differ by more than tol relative to
// max(1, max|want|).
func compare(t *testing.T, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d values, want %d", what, len(got), len(want))
	}
	scale := 1.0
	for _, w := range want {
		scale = math.Max(scale, math.Abs(w))
	}
	worst, at := 0.0, -1
	for i := range got {
		d := math.Abs(float64(got[i]) - want[i])
		if d != d || d > worst {
			worst, at = d, i
			if d != d {
				break
			}
		}
	}
	if at >= 0 && !(worst/scale <= tol) {
		t.Errorf("%s: error %.3g (relative %.3g > tol %.3g) at %d: got %v want %v",
			what, worst, worst/scale, tol, at, got[at], want[at])
	}
}

func f64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// --- tests ---

func (s *suite) testUploadDownload(t *testing.T, b ml.Backend) {
	r := s.rng(1)
	x := must[ml.Tensor](t)(b.NewTensor(ml.F32, 5, 7))
	if x.Rows() != 5 || x.Cols() != 7 || x.DType() != ml.F32 {
		t.Fatalf("NewTensor: got %s [%d,%d]", x.DType(), x.Rows(), x.Cols())
	}
	compare(t, "zeroed", download(t, b, x), make([]float64, 35), 0)
	data := RandF32(r, 35, 3)
	ok(t, "UploadF32", b.UploadF32(x, data))
	compare(t, "roundtrip", download(t, b, x), f64(data), 0)

	v := b.View(x, 2, 2)
	if v.Rows() != 2 || v.Cols() != 7 {
		t.Fatalf("View: got [%d,%d], want [2,7]", v.Rows(), v.Cols())
	}
	compare(t, "view", download(t, b, v), f64(data[14:28]), 0)
	// Upload through a view writes only the viewed rows.
	part := RandF32(r, 7, 3)
	ok(t, "UploadF32(view)", b.UploadF32(b.View(x, 3, 1), part))
	want := append(append(append([]float32(nil), data[:21]...), part...), data[28:]...)
	compare(t, "upload via view", download(t, b, x), f64(want), 0)
	b.Free(x)
}

func (s *suite) testEmbedding(t *testing.T, b ml.Backend) {
	r := s.rng(2)
	const V, D, T = 37, 24, 9
	ids := []int32{0, 36, 5, 5, 17, 3, 36, 1, 20}
	for _, st := range s.o.WeightDTypes {
		for _, shape := range [][2]int{{1, T}, {T, 1}} {
			w := weightValues(r, st, V, D)
			table, vals, ok2 := loadWeight(t, b, w, V, D, srcFor(st), st)
			if !ok2 {
				t.Logf("%s weights unsupported", st)
				continue
			}
			idT := newI32(t, b, shape[0], shape[1], ids)
			dst := newF32(t, b, T, D, nil)
			ok(t, "Embedding", b.Embedding(dst, table, idT))
			want := make([]float64, 0, T*D)
			for _, id := range ids {
				want = append(want, f64(vals[int(id)*D:int(id+1)*D])...)
			}
			compare(t, fmt.Sprintf("Embedding %s ids%v", st, shape), download(t, b, dst), want, s.o.Tol)
			b.Free(table)
			b.Free(idT)
			b.Free(dst)
		}
	}
}

func (s *suite) testRMSNorm(t *testing.T, b ml.Backend) {
	r := s.rng(3)
	for _, sh := range [][2]int{{1, 8}, {3, 64}, {17, 896}, {2, 1000}} {
		T, D := sh[0], sh[1]
		x := RandF32(r, T*D, 2)
		w := RandF32(r, D, 0.5)
		for i := range w {
			w[i] += 1
		}
		xt := newF32(t, b, T, D, x)
		wt := newF32(t, b, 1, D, w)
		// dst is a view of a larger scratch, as the model uses it.
		big := newF32(t, b, T+3, D, nil)
		dst := b.View(big, 0, T)
		ok(t, "RMSNorm", b.RMSNorm(dst, xt, wt, 1e-6))
		compare(t, fmt.Sprintf("RMSNorm %dx%d", T, D), download(t, b, dst), RefRMSNorm(x, w, T, D, 1e-6), s.o.Tol)
		// In place.
		ok(t, "RMSNorm in place", b.RMSNorm(xt, xt, wt, 1e-5))
		compare(t, fmt.Sprintf("RMSNorm in place %dx%d", T, D), download(t, b, xt), RefRMSNorm(x, w, T, D, 1e-5), s.o.Tol)
	}
}

func (s *suite) testAddRMSNorm(t *testing.T, b ml.Backend) {
	r := s.rng(4)
	for _, sh := range [][2]int{{1, 8}, {5, 96}, {33, 896}} {
		T, D := sh[0], sh[1]
		res := RandF32(r, T*D, 2)
		x := RandF32(r, T*D, 2)
		w := RandF32(r, D, 1)
		rt := newF32(t, b, T, D, res)
		xt := newF32(t, b, T, D, x)
		wt := newF32(t, b, 1, D, w)
		dst := newF32(t, b, T, D, nil)
		ok(t, "AddRMSNorm", b.AddRMSNorm(rt, dst, xt, wt, 1e-6))
		sum := make([]float32, T*D)
		for i := range sum {
			sum[i] = res[i] + x[i] // the residual is f32, so the sum is rounded to f32
		}
		compare(t, "AddRMSNorm residual", download(t, b, rt), f64(sum), s.o.Tol)
		compare(t, "AddRMSNorm dst", download(t, b, dst), RefRMSNorm(sum, w, T, D, 1e-6), s.o.Tol)
	}
}

func (s *suite) matmulCase(t *testing.T, b ml.Backend, r *rand.Rand, st ml.DType, T, N, K int, withBias bool) {
	t.Helper()
	w := weightValues(r, st, N, K)
	wt, vals, ok2 := loadWeight(t, b, w, N, K, srcFor(st), st)
	if !ok2 {
		return
	}
	defer b.Free(wt)
	x := RandF32(r, T*K, 1)
	// x and dst are views into larger scratch buffers.
	xBig := newF32(t, b, T+2, K, nil)
	xt := b.View(xBig, 0, T)
	ok(t, "UploadF32", b.UploadF32(xt, x))
	dBig := newF32(t, b, T+1, N, nil)
	dst := b.View(dBig, 0, T)
	var bias []float32
	var bt ml.Tensor
	if withBias {
		bias = RandF32(r, N, 1)
		bt = newF32(t, b, 1, N, bias)
	}
	ok(t, "MatMul", b.MatMul(dst, xt, wt, bt))
	compare(t, fmt.Sprintf("MatMul %s T=%d N=%d K=%d bias=%v", st, T, N, K, withBias),
		download(t, b, dst), RefMatMul(s.actsFor(st, x, T, K), vals, bias, T, N, K), s.o.MatMulTol)
	// The row past the view stays untouched.
	compare(t, "MatMul row past view", download(t, b, b.View(dBig, T, 1)), make([]float64, N), 0)
	b.Free(xBig)
	b.Free(dBig)
	if bt != nil {
		b.Free(bt)
	}
}

// actsFor returns the activations x[T,K] as a matmul with weights of dtype
// st multiplies them.
func (s *suite) actsFor(st ml.DType, x []float32, T, K int) []float32 {
	if st == ml.I8 && s.o.Int8Activations {
		return RefQuantizeQ8(x, T, K)
	}
	return x
}

func (s *suite) testMatMul(t *testing.T, b ml.Backend) {
	r := s.rng(5)
	shapes := [][3]int{
		{1, 1, 1}, {1, 3, 8}, {2, 5, 7}, {1, 16, 64}, {3, 17, 33}, {4, 64, 96},
		{7, 67, 130}, {1, 130, 256}, {16, 48, 64}, {33, 31, 17}, {5, 256, 72},
	}
	for _, st := range s.o.WeightDTypes {
		for i, sh := range shapes {
			s.matmulCase(t, b, r, st, sh[0], sh[1], sh[2], i%2 == 0)
		}
	}
}

func (s *suite) testMatMulLarge(t *testing.T, b ml.Backend) {
	r := s.rng(6)
	for _, st := range s.o.WeightDTypes {
		s.matmulCase(t, b, r, st, 1, 1000, 896, true)
		s.matmulCase(t, b, r, st, 70, 300, 320, false)
	}
}

// testMatMulI8Quantize checks int8 quantization of values that are not
// exactly representable, from each checkpoint dtype, against the documented
// scheme (allowing one quantization step of disagreement per weight).
func (s *suite) testMatMulI8Quantize(t *testing.T, b ml.Backend) {
	if !contains(s.o.WeightDTypes, ml.I8) {
		t.Skip("I8 not tested")
	}
	r := s.rng(7)
	const T, N, K = 3, 40, 64
	for _, src := range []ml.DType{ml.F32, ml.BF16, ml.F16} {
		w := RandF32(r, N*K, 0.5)
		wt, vals, ok2 := loadWeight(t, b, w, N, K, src, ml.I8)
		if !ok2 {
			t.Skip("I8 unsupported")
		}
		// An identity-like x reads single weights: x = e_k.
		x := make([]float32, T*K)
		for i := range T {
			x[i*K+i*7] = 1
		}
		xt := newF32(t, b, T, K, x)
		dst := newF32(t, b, T, N, nil)
		ok(t, "MatMul", b.MatMul(dst, xt, wt, nil))
		got := download(t, b, dst)
		want := RefMatMul(x, vals, nil, T, N, K)
		for i := range got {
			n := i % N
			var m float64
			for k := range K {
				m = math.Max(m, math.Abs(float64(Round(src, w[n*K+k]))))
			}
			step := m / 127
			if d := math.Abs(float64(got[i]) - want[i]); d > step*1.001 {
				t.Fatalf("I8 from %s: weight %d differs by %.3g (> one step %.3g)", src, i, d, step)
			}
		}
		b.Free(wt)
		b.Free(xt)
		b.Free(dst)
	}
}

func (s *suite) testRoPE(t *testing.T, b ml.Backend) {
	r := s.rng(8)
	for _, c := range []struct{ T, heads, hd int }{{1, 1, 2}, {5, 3, 8}, {9, 14, 64}, {4, 2, 128}} {
		x := RandF32(r, c.T*c.heads*c.hd, 1)
		pos := make([]int32, c.T)
		for i := range pos {
			pos[i] = int32(r.IntN(2048))
		}
		pos[0] = 0
		inv := make([]float32, c.hd/2)
		for i := range inv {
			inv[i] = float32(math.Pow(10000, -2*float64(i)/float64(c.hd)))
		}
		inv[len(inv)-1] /= 32 // llama3-style scaled low frequencies
		for _, shape := range [][2]int{{1, c.T}, {c.T, 1}} {
			xt := newF32(t, b, c.T, c.heads*c.hd, x)
			pt := newI32(t, b, shape[0], shape[1], pos)
			it := newF32(t, b, 1, c.hd/2, inv)
			ok(t, "RoPE", b.RoPE(xt, pt, it, c.heads, c.hd))
			compare(t, fmt.Sprintf("RoPE T=%d heads=%d hd=%d", c.T, c.heads, c.hd),
				download(t, b, xt), RefRoPE(x, pos, inv, c.T, c.heads, c.hd), s.o.RoPETol)
			b.Free(xt)
			b.Free(pt)
			b.Free(it)
		}
	}
}

// attnSeq is one sequence of an attention test: ctx positions in all, the
// last nNew of which are this step's tokens.
type attnSeq struct {
	ctx, nNew int
	blocks    []int32
}

type attnCase struct {
	heads, kvHeads, hd int
	blockSize          int
	numBlocks          int
	window             int       // sliding window (0: none)
	seqs               []attnSeq // blocks filled in by the test
	// contiguous lays the step's tokens out sequence by sequence (the
	// engine's layout) instead of interleaved; pad appends that many
	// padding tokens as the decoder pads a step (position 0 of the last
	// sequence, no KV written).
	contiguous bool
	pad        int
}

// runAttention writes history KV and this step's KV for every sequence of c
// (history in one WriteKV call, this step in another, with scattered
// shuffled blocks), runs Attention for all new tokens (in an interleaved
// token order) and compares with the reference.
func (s *suite) runAttention(t *testing.T, b ml.Backend, r *rand.Rand, c attnCase, kvdt ml.DType, layers, layer int) {
	t.Helper()
	kvDim := c.kvHeads * c.hd
	qDim := c.heads * c.hd
	cache, err := b.NewKVCache(layers, c.numBlocks, c.blockSize, c.kvHeads, c.hd, kvdt)
	if errors.Is(err, ml.ErrUnsupported) {
		t.Logf("KV dtype %s unsupported", kvdt)
		return
	}
	ok(t, "NewKVCache", err)
	defer b.FreeKVCache(cache)
	if cache.NumBlocks() != c.numBlocks || cache.BlockSize() != c.blockSize {
		t.Fatalf("KVCache: got %d blocks of %d, want %d of %d", cache.NumBlocks(), cache.BlockSize(), c.numBlocks, c.blockSize)
	}

	// Scattered, shuffled, disjoint block tables.
	perm := r.Perm(c.numBlocks)
	next := 0
	maxBlocks := 0
	for i := range c.seqs {
		n := (c.seqs[i].ctx + c.blockSize - 1) / c.blockSize
		c.seqs[i].blocks = make([]int32, n)
		for j := range n {
			c.seqs[i].blocks[j] = int32(perm[next])
			next++
		}
		maxBlocks = max(maxBlocks, n)
	}
	if next > c.numBlocks {
		t.Fatalf("test case needs %d blocks, has %d", next, c.numBlocks)
	}
	slotOf := func(seq, pos int) int32 {
		blk := c.seqs[seq].blocks[pos/c.blockSize]
		return blk*int32(c.blockSize) + int32(pos%c.blockSize)
	}

	// Every position's K and V (f32 as given, and as the cache holds them).
	keys := make([][][]float32, len(c.seqs))
	vals := make([][][]float32, len(c.seqs))
	for i, sq := range c.seqs {
		keys[i] = make([][]float32, sq.ctx)
		vals[i] = make([][]float32, sq.ctx)
		for p := range sq.ctx {
			keys[i][p] = RandF32(r, kvDim, 1.5)
			vals[i][p] = RandF32(r, kvDim, 1)
		}
	}
	rounded := func(x []float32) []float32 {
		out := make([]float32, len(x))
		for i, v := range x {
			out[i] = Round(kvdt, v)
		}
		return out
	}

	write := func(seqPos [][2]int) {
		n := len(seqPos)
		if n == 0 {
			return
		}
		k := make([]float32, 0, n*kvDim)
		v := make([]float32, 0, n*kvDim)
		slots := make([]int32, 0, n)
		for _, sp := range seqPos {
			k = append(k, keys[sp[0]][sp[1]]...)
			v = append(v, vals[sp[0]][sp[1]]...)
			slots = append(slots, slotOf(sp[0], sp[1]))
		}
		kt := newF32(t, b, n, kvDim, k)
		vt := newF32(t, b, n, kvDim, v)
		st := newI32(t, b, 1, n, slots)
		ok(t, "WriteKV", b.WriteKV(cache, layer, kt, vt, st))
		b.Free(kt)
		b.Free(vt)
		b.Free(st)
	}
	// History, in reverse order to show writes are by slot, not by order.
	var hist [][2]int
	for i, sq := range c.seqs {
		for p := sq.ctx - sq.nNew - 1; p >= 0; p-- {
			hist = append(hist, [2]int{i, p})
		}
	}
	write(hist)

	// This step's tokens, interleaved across sequences (or contiguous).
	var toks [][2]int
	for round := 0; !c.contiguous; round++ {
		added := false
		for i, sq := range c.seqs {
			if round < sq.nNew {
				toks = append(toks, [2]int{i, sq.ctx - sq.nNew + round})
				added = true
			}
		}
		if !added {
			break
		}
	}
	for i, sq := range c.seqs {
		for p := sq.ctx - sq.nNew; c.contiguous && p < sq.ctx; p++ {
			toks = append(toks, [2]int{i, p})
		}
	}
	write(toks)
	for range c.pad {
		toks = append(toks, [2]int{len(c.seqs) - 1, 0})
	}

	T := len(toks)
	q := RandF32(r, T*qDim, 1.5)
	tokSeq := make([]int32, T)
	pos := make([]int32, T)
	maxCtx := 0
	for i, sp := range toks {
		tokSeq[i], pos[i] = int32(sp[0]), int32(sp[1])
		maxCtx = max(maxCtx, sp[1]+1)
	}
	bt := make([]int32, len(c.seqs)*maxBlocks)
	for i := range bt {
		bt[i] = -1 // padding must be ignored
	}
	for i, sq := range c.seqs {
		copy(bt[i*maxBlocks:], sq.blocks)
	}
	qt := newF32(t, b, T, qDim, q)
	meta := &ml.AttentionMeta{
		NumTokens:    T,
		NumSeqs:      len(c.seqs),
		TokenSeq:     newI32(t, b, 1, T, tokSeq),
		HostTokenSeq: tokSeq,
		Positions:    newI32(t, b, 1, T, pos),
		BlockTables:  newI32(t, b, len(c.seqs), maxBlocks, bt),
		MaxBlocks:    maxBlocks,
		MaxContext:   maxCtx,
		NumHeads:     c.heads,
		NumKVHeads:   c.kvHeads,
		HeadDim:      c.hd,
		Scale:        float32(1 / math.Sqrt(float64(c.hd))),
		Window:       c.window,
	}
	big := newF32(t, b, T+2, qDim, nil)
	dst := b.View(big, 0, T)
	ok(t, "Attention", b.Attention(dst, qt, cache, layer, meta))
	got := download(t, b, dst)

	want := make([]float64, 0, T*qDim)
	for i, sp := range toks {
		seq := sp[0]
		first := 0 // the window's first position
		if c.window > 0 {
			first = max(0, sp[1]+1-c.window)
		}
		want = append(want, RefAttention(q[i*qDim:(i+1)*qDim], sp[1]+1-first,
			func(j int) []float32 { return rounded(keys[seq][first+j]) },
			func(j int) []float32 { return rounded(vals[seq][first+j]) },
			c.heads, c.kvHeads, c.hd, float64(meta.Scale))...)
	}
	compare(t, fmt.Sprintf("Attention kv=%s heads=%d/%d hd=%d bs=%d window=%d", kvdt, c.heads, c.kvHeads, c.hd, c.blockSize, c.window),
		got, want, s.o.MatMulTol)
	for _, x := range []ml.Tensor{qt, meta.TokenSeq, meta.Positions, meta.BlockTables, big} {
		b.Free(x)
	}
}

func (s *suite) testAttention(t *testing.T, b ml.Backend) {
	r := s.rng(9)
	cases := []attnCase{
		// MHA, one decode.
		{heads: 4, kvHeads: 4, hd: 8, blockSize: 4, numBlocks: 16, seqs: []attnSeq{{ctx: 7, nNew: 1}}},
		// GQA: fresh prefill, chunked prefill, decodes.
		{heads: 6, kvHeads: 2, hd: 16, blockSize: 4, numBlocks: 64, seqs: []attnSeq{
			{ctx: 11, nNew: 11}, {ctx: 23, nNew: 5}, {ctx: 9, nNew: 1}, {ctx: 1, nNew: 1}, {ctx: 16, nNew: 1}}},
		// MQA, block size 1.
		{heads: 8, kvHeads: 1, hd: 32, blockSize: 1, numBlocks: 64, seqs: []attnSeq{{ctx: 20, nNew: 3}, {ctx: 30, nNew: 1}}},
		// Qwen2.5-0.5B's heads.
		{heads: 14, kvHeads: 2, hd: 64, blockSize: 16, numBlocks: 40, seqs: []attnSeq{
			{ctx: 70, nNew: 70}, {ctx: 100, nNew: 1}, {ctx: 50, nNew: 17}}},
		// Llama's head_dim 128.
		{heads: 8, kvHeads: 2, hd: 128, blockSize: 8, numBlocks: 32, seqs: []attnSeq{{ctx: 33, nNew: 9}, {ctx: 17, nNew: 1}}},
		// Groups of 6: prompt chunks whose last or first few tokens share a
		// tile of 10 or 21 tokens (a tensor-core kernel's 64 or 128 rows)
		// with another sequence's, a decode between them.
		{heads: 12, kvHeads: 2, hd: 64, blockSize: 16, numBlocks: 16, seqs: []attnSeq{
			{ctx: 23, nNew: 23}, {ctx: 40, nNew: 23}, {ctx: 30, nNew: 1}, {ctx: 23, nNew: 23}}},
		// The engine's layout: decodes first, then prompt chunks by size
		// (a backend may serve the few-token rows apart), and padding.
		{heads: 12, kvHeads: 2, hd: 64, blockSize: 16, numBlocks: 32, contiguous: true, pad: 5, seqs: []attnSeq{
			{ctx: 40, nNew: 1}, {ctx: 100, nNew: 1}, {ctx: 30, nNew: 1}, {ctx: 61, nNew: 1}, {ctx: 9, nNew: 1},
			{ctx: 23, nNew: 23}, {ctx: 80, nNew: 40}}},
		{heads: 8, kvHeads: 2, hd: 128, blockSize: 8, numBlocks: 24, contiguous: true, seqs: []attnSeq{
			{ctx: 33, nNew: 1}, {ctx: 17, nNew: 1}, {ctx: 5, nNew: 1}, {ctx: 20, nNew: 3}, {ctx: 50, nNew: 50}}},
	}
	for _, kvdt := range s.o.KVDTypes {
		for _, c := range cases {
			c.seqs = append([]attnSeq(nil), c.seqs...)
			s.runAttention(t, b, r, c, kvdt, 2, 1)
		}
	}
}

// testAttentionRandom runs random shapes of the kind prefill and decode
// kernels specialize on: head dims 64 and 128, GQA groups of 1 to 8 query
// heads per KV head, block sizes 8 and 16, odd context lengths, prefill
// chunks after a cached prefix and decodes mixed in one step, padded
// block-table rows, in the first KV dtype and in bf16.
func (s *suite) testAttentionRandom(t *testing.T, b ml.Backend) {
	r := s.rng(13)
	for i := range 10 {
		kvHeads := 1 + r.IntN(2)
		c := attnCase{hd: []int{64, 128}[i%2], kvHeads: kvHeads, heads: kvHeads << r.IntN(4),
			blockSize: []int{8, 16}[r.IntN(2)]}
		for range 1 + r.IntN(3) {
			ctx := 1 + 2*r.IntN(90) // odd
			nNew := 1
			if r.IntN(2) == 0 {
				nNew = 1 + r.IntN(ctx)
			}
			c.seqs = append(c.seqs, attnSeq{ctx: ctx, nNew: nNew})
			c.numBlocks += (ctx + c.blockSize - 1) / c.blockSize
		}
		c.numBlocks += 3 // blocks no sequence uses
		for _, kvdt := range []ml.DType{s.o.KVDTypes[0], ml.BF16} {
			if contains(s.o.KVDTypes, kvdt) {
				s.runAttention(t, b, r, c, kvdt, 1, 0)
			}
		}
	}
}

func (s *suite) testAttentionLong(t *testing.T, b ml.Backend) {
	r := s.rng(10)
	c := attnCase{heads: 4, kvHeads: 2, hd: 64, blockSize: 16, numBlocks: 200, seqs: []attnSeq{
		{ctx: 1500, nNew: 1}, {ctx: 700, nNew: 40}, {ctx: 900, nNew: 1}}}
	s.runAttention(t, b, r, c, s.o.KVDTypes[0], 1, 0)
}

// testAttentionLayers checks that layers of one cache are separate: layer 1
// is written after layer 0 with other data, and layer 0 still reads its own.
func (s *suite) testAttentionLayers(t *testing.T, b ml.Backend) {
	const L, nb, bs, kvH, hd, H = 3, 8, 4, 1, 8, 2
	r := s.rng(11)
	cache := must[ml.KVCache](t)(b.NewKVCache(L, nb, bs, kvH, hd, s.o.KVDTypes[0]))
	defer b.FreeKVCache(cache)
	// One sequence of 5 tokens in blocks 6 and 2, written at every layer.
	slots := []int32{24, 25, 26, 27, 8}
	ks := make([][]float32, L)
	vs := make([][]float32, L)
	for l := range L {
		ks[l] = RandF32(r, 5*kvH*hd, 1)
		vs[l] = RandF32(r, 5*kvH*hd, 1)
		kt := newF32(t, b, 5, kvH*hd, ks[l])
		vt := newF32(t, b, 5, kvH*hd, vs[l])
		st := newI32(t, b, 5, 1, slots)
		ok(t, "WriteKV", b.WriteKV(cache, l, kt, vt, st))
	}
	q := RandF32(r, H*hd, 1)
	meta := &ml.AttentionMeta{
		NumTokens: 1, NumSeqs: 1,
		TokenSeq:    newI32(t, b, 1, 1, []int32{0}),
		Positions:   newI32(t, b, 1, 1, []int32{4}),
		BlockTables: newI32(t, b, 1, 2, []int32{6, 2}),
		MaxBlocks:   2, MaxContext: 5, NumHeads: H, NumKVHeads: kvH, HeadDim: hd, Scale: 0.3,
	}
	qt := newF32(t, b, 1, H*hd, q)
	for _, l := range []int{0, 2, 1} {
		dst := newF32(t, b, 1, H*hd, nil)
		ok(t, "Attention", b.Attention(dst, qt, cache, l, meta))
		kl, vl := ks[l], vs[l]
		want := RefAttention(q, 5,
			func(j int) []float32 { return roundAll(s.o.KVDTypes[0], kl[j*hd:(j+1)*hd]) },
			func(j int) []float32 { return roundAll(s.o.KVDTypes[0], vl[j*hd:(j+1)*hd]) },
			H, kvH, hd, 0.3)
		compare(t, fmt.Sprintf("layer %d", l), download(t, b, dst), want, s.o.MatMulTol)
	}
}

func roundAll(dt ml.DType, x []float32) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = Round(dt, v)
	}
	return out
}

func (s *suite) testSiLUMul(t *testing.T, b ml.Backend) {
	r := s.rng(12)
	for _, sh := range [][2]int{{1, 4}, {3, 160}, {20, 4864}} {
		T, I := sh[0], sh[1]
		gu := RandF32(r, T*2*I, 6)
		gt := newF32(t, b, T, 2*I, gu)
		big := newF32(t, b, T+1, I, nil)
		dst := b.View(big, 0, T)
		ok(t, "SiLUMul", b.SiLUMul(dst, gt))
		want := make([]float64, T*I)
		for i := range T {
			for j := range I {
				want[i*I+j] = SiLU(float64(gu[i*2*I+j])) * float64(gu[i*2*I+I+j])
			}
		}
		compare(t, fmt.Sprintf("SiLUMul %dx%d", T, I), download(t, b, dst), want, s.o.Tol)
	}
}

func (s *suite) testGatherRows(t *testing.T, b ml.Backend) {
	r := s.rng(13)
	const T, D = 10, 33
	src := RandF32(r, T*D, 1)
	st := newF32(t, b, T, D, src)
	for _, idx := range [][]int32{{9}, {0, 9, 3, 3}, {5, 4, 3, 2, 1, 0, 9, 8, 7, 6}} {
		it := newI32(t, b, len(idx), 1, idx)
		big := newF32(t, b, 12, D, nil)
		dst := b.View(big, 0, len(idx))
		ok(t, "GatherRows", b.GatherRows(dst, st, it))
		want := make([]float64, 0, len(idx)*D)
		for _, i := range idx {
			want = append(want, f64(src[int(i)*D:int(i+1)*D])...)
		}
		compare(t, fmt.Sprintf("GatherRows %v", idx), download(t, b, dst), want, 0)
	}
}

// testShapeErrors: mismatched shapes are errors, not crashes.
func (s *suite) testShapeErrors(t *testing.T, b ml.Backend) {
	x := newF32(t, b, 2, 8, nil)
	w := must[ml.Tensor](t)(b.LoadWeight(4, 9, Encode(ml.F32, make([]float32, 36)), ml.F32, ml.F32))
	dst := newF32(t, b, 2, 4, nil)
	if err := b.MatMul(dst, x, w, nil); err == nil {
		t.Error("MatMul with K 8 vs 9: no error")
	}
	w2 := must[ml.Tensor](t)(b.LoadWeight(4, 8, Encode(ml.F32, make([]float32, 32)), ml.F32, ml.F32))
	bad := newF32(t, b, 2, 5, nil)
	if err := b.MatMul(bad, x, w2, nil); err == nil {
		t.Error("MatMul with dst cols 5 vs N 4: no error")
	}
	if err := b.RMSNorm(x, x, newF32(t, b, 1, 7, nil), 1e-6); err == nil {
		t.Error("RMSNorm with weight cols 7 vs 8: no error")
	}
	if err := b.SiLUMul(bad, x); err == nil {
		t.Error("SiLUMul with dst 5 cols vs gateUp 8 cols: no error")
	}
	if _, err := b.LoadWeight(4, 8, make([]byte, 10), ml.F32, ml.F32); err == nil {
		t.Error("LoadWeight with short data: no error")
	}
	if _, err := b.NewKVCache(1, 4, 4, 1, 8, ml.I32); err == nil {
		t.Error("NewKVCache of I32: no error")
	}
}

func contains(ds []ml.DType, d ml.DType) bool {
	for _, x := range ds {
		if x == d {
			return true
		}
	}
	return false
}

// testAttentionWindow: a sliding window (Mistral's sliding_window) limits
// each token to the last Window positions, across block boundaries, in
// prefills, chunked prefills and decodes.
func (s *suite) testAttentionWindow(t *testing.T, b ml.Backend) {
	r := s.rng(14)
	seqs := []attnSeq{{ctx: 23, nNew: 23}, {ctx: 30, nNew: 6}, {ctx: 41, nNew: 1}, {ctx: 3, nNew: 1}}
	for _, w := range []int{1, 5, 8, 29, 100} {
		for _, kvdt := range s.o.KVDTypes[:1] {
			c := attnCase{heads: 6, kvHeads: 2, hd: 16, blockSize: 4, numBlocks: 64, window: w,
				seqs: append([]attnSeq(nil), seqs...)}
			s.runAttention(t, b, r, c, kvdt, 1, 0)
		}
	}
	long := attnCase{heads: 4, kvHeads: 2, hd: 64, blockSize: 16, numBlocks: 200, window: 300, seqs: []attnSeq{
		{ctx: 1500, nNew: 1}, {ctx: 700, nNew: 40}}}
	s.runAttention(t, b, r, long, s.o.KVDTypes[0], 1, 0)
}

func (s *suite) testRMSNormHeads(t *testing.T, b ml.Backend) {
	r := s.rng(15)
	for _, sh := range [][3]int{{1, 2, 8}, {5, 4, 32}, {9, 16, 128}, {3, 10, 64}} {
		T, n, hd := sh[0], sh[1], sh[2]
		x := RandF32(r, T*n*hd, 2)
		w := RandF32(r, hd, 0.5)
		for i := range w {
			w[i] += 1
		}
		// x is a view of a larger scratch, as the model uses it.
		big := newF32(t, b, T+2, n*hd, append(x, make([]float32, 2*n*hd)...))
		xt := b.View(big, 0, T)
		wt := newF32(t, b, 1, hd, w)
		ok(t, "RMSNormHeads", b.RMSNormHeads(xt, wt, hd, 1e-6))
		compare(t, fmt.Sprintf("RMSNormHeads %dx%dx%d", T, n, hd), download(t, b, xt), RefRMSNormHeads(x, w, T, hd, 1e-6), s.o.Tol)
		compare(t, "RMSNormHeads leaves rows past the view", download(t, b, b.View(big, T, 2)), make([]float64, 2*n*hd), 0)
		b.Free(big)
		b.Free(wt)
	}
	x := newF32(t, b, 2, 24, nil)
	if err := b.RMSNormHeads(x, newF32(t, b, 1, 16, nil), 16, 1e-6); err == nil {
		t.Error("RMSNormHeads of 24 columns in heads of 16: no error")
	}
}

// downloadIDs reads an I32 tensor's first n values through GatherRows of
// an identity table (the interface downloads F32 only).
func downloadIDs(t *testing.T, b ml.Backend, ids ml.Tensor, n, maxID int) []int32 {
	t.Helper()
	tab := make([]float32, maxID)
	for i := range tab {
		tab[i] = float32(i)
	}
	tt := newF32(t, b, maxID, 1, tab)
	dst := newF32(t, b, n, 1, nil)
	ok(t, "GatherRows(ids)", b.GatherRows(dst, tt, ids))
	out := make([]int32, n)
	for i, v := range download(t, b, dst) {
		out[i] = int32(v)
	}
	b.Free(tt)
	b.Free(dst)
	return out
}

func (s *suite) testTopKSoftmax(t *testing.T, b ml.Backend) {
	r := s.rng(16)
	for _, c := range []struct{ T, E, k int }{{1, 8, 2}, {7, 8, 2}, {33, 128, 8}, {5, 60, 4}, {3, 16, 1}, {2, 4, 4}} {
		for _, norm := range []bool{false, true} {
			// Distinct logits a step apart (so that no near-tie makes the
			// order depend on rounding), in random order per row, and one
			// exact tie of the top two in row 0 (the lower index first).
			lg := make([]float32, c.T*c.E)
			for t := range c.T {
				for i, p := range r.Perm(c.E) {
					lg[t*c.E+i] = float32(p)*0.125 - 4
				}
			}
			if c.E > 2 {
				top := 0
				for i := range c.E {
					if lg[i] > lg[top] {
						top = i
					}
				}
				other := (top + 1 + r.IntN(c.E-1)) % c.E
				lg[other] = lg[top]
			}
			wantW, wantI := RefTopKSoftmax(lg, c.T, c.E, c.k, norm)
			lt := newF32(t, b, c.T, c.E, lg)
			wt := newF32(t, b, c.T*c.k+3, 1, nil)
			it := newI32(t, b, c.T*c.k+3, 1, nil)
			ok(t, "TopKSoftmax", b.TopKSoftmax(wt, it, lt, c.k, norm))
			what := fmt.Sprintf("TopKSoftmax T=%d E=%d k=%d norm=%v", c.T, c.E, c.k, norm)
			compare(t, what+" weights", download(t, b, b.View(wt, 0, c.T*c.k)), wantW, s.o.Tol*10)
			got := downloadIDs(t, b, it, c.T*c.k, c.E)
			for i := range got {
				if got[i] != wantI[i] {
					t.Errorf("%s: ids %v, want %v", what, got, wantI)
					break
				}
			}
			b.Free(lt)
			b.Free(wt)
			b.Free(it)
		}
	}
}

func (s *suite) testMatMulExperts(t *testing.T, b ml.Backend) {
	r := s.rng(17)
	cases := []struct{ E, N, K, T, k int }{
		{8, 24, 40, 1, 1},     // one token, one expert
		{8, 24, 40, 1, 2},     // a decode token, top-2
		{8, 48, 64, 13, 3},    // a few tokens
		{16, 64, 96, 70, 4},   // a prefill: many rows per expert
		{128, 24, 40, 64, 8},  // a decode batch over many experts: few rows each
		{4, 40, 32, 9, 1},     // fan-out 1: rows of x are rows of dst
		{8, 200, 136, 40, 2},  // few rows per expert, several output blocks
		{4, 130, 256, 100, 2}, // many rows per expert, several row tiles each
	}
	for _, st := range s.o.WeightDTypes {
		for _, c := range cases {
			w := weightValues(r, st, c.E*c.N, c.K)
			wt, vals, ok2 := loadWeight(t, b, w, c.E*c.N, c.K, srcFor(st), st)
			if !ok2 {
				continue
			}
			R := c.T * c.k
			x := RandF32(r, c.T*c.K, 1)
			ex := make([]int32, R)
			for i := range ex {
				ex[i] = int32(r.IntN(c.E))
			}
			if c.E > 3 && R > 1 {
				ex[R-1] = ex[0] // a repeat at least
			}
			bigX := newF32(t, b, c.T+1, c.K, append(append([]float32(nil), x...), make([]float32, c.K)...))
			xt := b.View(bigX, 0, c.T)
			et := newI32(t, b, R, 1, ex)
			big := newF32(t, b, R+2, c.N, nil)
			dst := b.View(big, 0, R)
			ok(t, "MatMulExperts", b.MatMulExperts(dst, xt, wt, et))
			compare(t, fmt.Sprintf("MatMulExperts %s E=%d N=%d K=%d T=%d k=%d", st, c.E, c.N, c.K, c.T, c.k),
				download(t, b, dst), RefMatMulExperts(s.actsFor(st, x, c.T, c.K), vals, ex, c.N, c.K), s.o.MatMulTol)
			for _, x := range []ml.Tensor{wt, bigX, et, big} {
				b.Free(x)
			}
		}
	}
	x := newF32(t, b, 3, 8, nil)
	w := must[ml.Tensor](t)(b.LoadWeight(12, 8, Encode(ml.F32, make([]float32, 96)), ml.F32, ml.F32))
	if err := b.MatMulExperts(newF32(t, b, 4, 4, nil), x, w, newI32(t, b, 4, 1, nil)); err == nil {
		t.Error("MatMulExperts of 4 rows from 3 rows of x: no error")
	}
}

func (s *suite) testScatterAdd(t *testing.T, b ml.Backend) {
	r := s.rng(18)
	for _, c := range []struct{ D, S, C int }{{1, 2, 8}, {5, 10, 64}, {33, 264, 96}} {
		for _, withScale := range []bool{true, false} {
			dst := RandF32(r, c.D*c.C, 1)
			src := RandF32(r, c.S*c.C, 1)
			idx := make([]int32, c.S)
			for i := range idx {
				idx[i] = int32(r.IntN(c.D))
			}
			var scale []float32
			var sct ml.Tensor
			if withScale {
				scale = RandF32(r, c.S, 1)
				sct = newF32(t, b, c.S, 1, scale)
			}
			dt := newF32(t, b, c.D, c.C, dst)
			st := newF32(t, b, c.S, c.C, src)
			it := newI32(t, b, 1, c.S, idx)
			ok(t, "ScatterAdd", b.ScatterAdd(dt, st, it, sct))
			compare(t, fmt.Sprintf("ScatterAdd %d rows into %d, scale %v", c.S, c.D, withScale),
				download(t, b, dt), RefScatterAdd(dst, src, idx, scale, c.C), s.o.Tol*10)
			for _, x := range []ml.Tensor{dt, st, it, sct} {
				if x != nil {
					b.Free(x)
				}
			}
		}
	}
}
