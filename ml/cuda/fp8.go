package cuda

import (
	"encoding/binary"
	"math"
	"runtime"
	"sync"

	"github.com/llmserve/llmserve/ml"
)

// FP8 (E4M3) weights (--quantization fp8, FP8 checkpoints): one byte per
// value and an f32 scale per row, as the CPU backend stores them
// (ml.QuantizeF8Row), in one allocation (codes, then scales at a 16-byte
// boundary). Decode-sized products read the codes in gemv_f8 (half of
// bf16's bytes); up to f8WideMinT rows they run expert_mma's dense form
// (kernels/moe.cu), which widens the codes to bf16 (exact) for the tensor
// cores as it builds their operands and scales each output row at the end,
// with K split when it has too few blocks; more rows widen the weight to
// bf16 for cuBLAS (matMulF8Wide).

// f8GemvMaxT: products of at most this many rows take gemv_f8.
const f8GemvMaxT = 8

// f8WideMinT: FP8 products of at least this many rows take matMulF8Wide.
// There cuBLAS's tensor-core GEMM outruns expert_mma by more than the
// widening costs (3 bytes a weight: 1 read, 2 written); below it the
// product is bound by the weight's bytes, which expert_mma reads once. A
// variable for BenchmarkMatMulF8.
var f8WideMinT = 128

// f8WideScratch bounds matMulF8Wide's chunk of widened weight rows (bytes).
var f8WideScratch = 64 << 20

// f8SplitK lets dense FP8 products split K (f8Slices); BenchmarkMatMulF8
// turns it off to measure what the split buys.
var f8SplitK = true

// loadF8 quantizes a weight of dtype src row by row on the host and uploads
// its codes and scales (the caller holds b.mu). The rows are quantized in
// parallel: for an 8B model this is every weight byte of the load.
func (b *Backend) loadF8(rows, cols int, data []byte, src ml.DType) (ml.Tensor, error) {
	n := rows * cols
	codeBytes := (int64(n) + 15) &^ 15
	host := make([]byte, codeBytes+int64(rows)*4)
	es := src.Size()
	workers := min(runtime.GOMAXPROCS(0), max(1, rows/16))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			row, f32 := make([]float32, cols), make([]byte, 4*cols)
			for r := w * rows / workers; r < (w+1)*rows/workers; r++ {
				convertHostTo(f32, data[r*cols*es:(r+1)*cols*es], src, ml.F32)
				for c := range row {
					row[c] = math.Float32frombits(binary.LittleEndian.Uint32(f32[4*c:]))
				}
				s := ml.QuantizeF8Row(host[r*cols:(r+1)*cols], row)
				binary.LittleEndian.PutUint32(host[codeBytes+int64(4*r):], math.Float32bits(s))
			}
		}()
	}
	wg.Wait()
	p, err := b.alloc(int64(len(host)))
	if err != nil {
		return nil, err
	}
	if err := b.uploadWeight(p, host); err != nil {
		return nil, err
	}
	return &tensor{owner: b, ptr: p, dt: ml.F8, rows: rows, cols: cols, owned: true, scales: p + uint64(codeBytes)}, nil
}

// matMulF8 is MatMul with FP8 weights (T and N not zero).
func (b *Backend) matMulF8(d, xx, ww, bb *tensor, bs string) error {
	T, K, N := xx.rows, xx.cols, ww.rows
	if xx.dt != ml.F32 || ww.scales == 0 {
		return shapeErr("fp8 matmul of x %v", xx.dt)
	}
	b.invalidate(d.ptr, d.bytes())
	if T <= f8GemvMaxT {
		if err := b.pushGemvF8(d, xx, ww); err != nil {
			return err
		}
		return b.biasAdd(d, bb, bs, T, N)
	}
	if K%16 != 0 || b.dev.major < 8 {
		// No tensor-core form: gemv_f8 over groups of rows.
		for t0 := 0; t0 < T; t0 += f8GemvMaxT {
			rows := &tensor{owner: b, ptr: xx.ptr + uint64(t0*xx.cols*4), dt: ml.F32, rows: min(f8GemvMaxT, T-t0), cols: K}
			out := &tensor{owner: b, ptr: d.ptr + uint64(t0*d.cols*4), dt: ml.F32, rows: rows.rows, cols: d.cols}
			if err := b.pushGemvF8(out, rows, ww); err != nil {
				return err
			}
		}
		return b.biasAdd(d, bb, bs, T, N)
	}
	if T >= f8WideMinT {
		if err := b.matMulF8Wide(d, xx, ww); err != nil {
			return err
		}
		return b.biasAdd(d, bb, bs, T, N)
	}
	const tm = 64 // expert_mma's row tile
	kernel, x16, err := b.expertMMA(ww, xx, tm)
	if err != nil {
		return err
	}
	tiles := (T + tm - 1) / tm
	slices := 1
	if f8SplitK {
		bm := expertMMARows(kernel)
		slices = f8Slices(int(b.dev.sms), (N+bm-1)/bm*tiles, K, T*N)
	}
	if slices == 1 {
		if err := b.pushExpertMMA(kernel, d.ptr, d, xx, ww, x16, 0, 0, 0, tiles, 1, T, 1); err != nil {
			return err
		}
		return b.biasAdd(d, bb, bs, T, N)
	}
	n := int64(T) * int64(N)
	if err := b.ensure(&b.mmaPart, int64(slices)*n*4); err != nil {
		return err
	}
	if err := b.pushExpertMMA(kernel, b.mmaPart.ptr, d, xx, ww, x16, 0, 0, 0, tiles, slices, T, 1); err != nil {
		return err
	}
	if err := b.pushSplitKSum(d.ptr, b.mmaPart.ptr, slices, n, N, ww.scales); err != nil {
		return err
	}
	return b.biasAdd(d, bb, bs, T, N)
}

// matMulF8Wide is matMulF8 for many rows (K % 16 == 0): chunks of the
// weight's rows widened to bf16 (exact) in the w16 scratch, cuBLAS's
// product of each with x's bf16 planes (one rounded, or hi and lo added
// into the same output), then each output column scaled.
func (b *Backend) matMulF8Wide(d, xx, ww *tensor) error {
	T, K, N := xx.rows, xx.cols, ww.rows
	// Whole 64-row groups keep each chunk's output columns 256-byte aligned.
	chunk := min(N, max(64, f8WideScratch/(2*K)/64*64))
	if err := b.ensure(&b.w16, int64(chunk)*int64(K)*2); err != nil {
		return err
	}
	x16, planes, err := b.bf16Planes(xx)
	if err != nil {
		return err
	}
	for n0 := 0; n0 < N; n0 += chunk {
		rows := min(chunk, N-n0)
		n := int64(rows) * int64(K)
		st := b.argStart()
		b.aP(b.w16.ptr)
		b.aP(ww.ptr + uint64(int64(n0)*int64(K)))
		b.aL(n)
		if err := b.push("f8_to_bf16", g1(gridFor(n/16, 256)), g1(256), st); err != nil {
			return err
		}
		for p := range planes {
			// Column-major C(rows×T) = W16(K×rows)ᵀ·x(K×T): d's columns n0.. (ldc N).
			b.pushGemm(gemmArgs{accumulate: p > 0, transa: cublasOpT, transb: cublasOpN, m: int32(rows), n: int32(T), k: int32(K),
				a: b.w16.ptr, atype: cudaR16BF, lda: int32(K), b: x16 + uint64(int64(p)*int64(T)*int64(K)*2), btype: cudaR16BF, ldb: int32(K),
				c: d.ptr + uint64(n0*4), ctype: cudaR32F, ldc: int32(N)})
		}
	}
	return b.pushSplitKSum(d.ptr, d.ptr, 1, int64(T)*int64(N), N, ww.scales)
}

// pushSplitKSum records splitk_sum: dst's n values (rows of N) are the sum
// of slices planes of n partial sums at part, times each column's scale
// (none when scales is 0). part may be dst when slices is 1.
func (b *Backend) pushSplitKSum(dst, part uint64, slices int, n int64, N int, scales uint64) error {
	st := b.argStart()
	b.aP(dst)
	b.aP(part)
	b.aI(slices)
	b.aL(n)
	b.aI(N)
	b.aP(scales)
	return b.push("splitk_sum", g1(gridFor(n, 256)), g1(256), st)
}

// f8Slices splits K of a dense FP8 product of blocks output blocks (64 or
// 128 weight rows by 64 rows of x each: expertMMARows) until there are about
// four blocks an SM: fewer leave too few weight bytes in flight to stream at
// HBM speed (a decode batch's o and down projections make one block per 64
// or 128 outputs). Each slice keeps at least 256 columns (8 of the 64-row
// form's 32-column steps, 4 of the wide form's 64), and the partial sums
// (slices planes of outputs f32 values) stay within 64 MiB.
func f8Slices(sms, blocks, K, outputs int) int {
	slices := 1
	for slices < 16 && blocks*slices < 4*sms && K/(2*slices) >= 8*32 && 2*slices*outputs*4 <= 64<<20 {
		slices *= 2
	}
	return slices
}

// pushGemvF8 records gemv_f8 of d = x·wᵀ (x of at most f8GemvMaxT rows).
func (b *Backend) pushGemvF8(d, x, w *tensor) error {
	st := b.argStart()
	b.aP(d.ptr)
	b.aI(d.cols)
	b.aP(x.ptr)
	b.aI(x.cols)
	b.aP(w.ptr)
	b.aP(w.scales)
	b.aI(w.rows)
	b.aI(x.cols)
	b.aI(x.rows)
	return b.push("gemv_f8", g1((w.rows+7)/8), g1(256), st)
}
