package cuda

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/llmserve/llmserve/ml"
)

// FP8 (E4M3) weights (--quantization fp8, FP8 checkpoints): one byte per
// value and an f32 scale per row, as the CPU backend stores them
// (ml.QuantizeF8Row), in one allocation (codes, then scales at a 16-byte
// boundary). Decode-sized products read the codes in gemv_f8 (half of
// bf16's bytes); larger ones widen chunks of rows to bf16 (exact: every
// E4M3 value is a bf16 value), multiply them on the bf16 path and scale
// the product's columns (kernels/fp8.cu).

// f8GemvMaxT: products of at most this many rows take gemv_f8.
const f8GemvMaxT = 8

// f8ChunkBytes bounds the bf16 copy of a chunk of FP8 rows; f8Chunk, when
// positive, sets the rows of a chunk instead (tests of the chunking).
const f8ChunkBytes = 64 << 20

var f8Chunk = 0

// loadF8 quantizes a weight of dtype src row by row on the host and uploads
// its codes and scales (the caller holds b.mu).
func (b *Backend) loadF8(rows, cols int, data []byte, src ml.DType) (ml.Tensor, error) {
	n := rows * cols
	codeBytes := (int64(n) + 15) &^ 15
	host := make([]byte, codeBytes+int64(rows)*4)
	row := make([]float32, cols)
	f32 := convertHost(data[:n*src.Size()], src, ml.F32)
	for r := range rows {
		for c := range row {
			row[c] = math.Float32frombits(binary.LittleEndian.Uint32(f32[4*(r*cols+c):]))
		}
		s := ml.QuantizeF8Row(host[r*cols:(r+1)*cols], row)
		binary.LittleEndian.PutUint32(host[codeBytes+int64(4*r):], math.Float32bits(s))
	}
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
		st := b.argStart()
		b.aP(d.ptr)
		b.aI(d.cols)
		b.aP(xx.ptr)
		b.aI(xx.cols)
		b.aP(ww.ptr)
		b.aP(ww.scales)
		b.aI(N)
		b.aI(K)
		b.aI(T)
		if err := b.push("gemv_f8", g1((N+7)/8), g1(256), st); err != nil {
			return err
		}
		return b.biasAdd(d, bb, bs, T, N)
	}
	chunk := max(1, min(N, f8ChunkBytes/(2*K)))
	if f8Chunk > 0 {
		chunk = min(N, f8Chunk)
	}
	if err := b.ensure(&b.f8W, int64(chunk)*int64(K)*2); err != nil {
		return err
	}
	if err := b.ensure(&b.f8Out, int64(T)*int64(chunk)*4); err != nil {
		return err
	}
	for n0 := 0; n0 < N; n0 += chunk {
		nc := min(chunk, N-n0)
		n := int64(nc) * int64(K)
		st := b.argStart()
		b.aP(b.f8W.ptr)
		b.aP(ww.ptr + uint64(int64(n0)*int64(K)))
		b.aL(n)
		if err := b.push("dequant_f8_bf16", g1(gridFor(n, 256)), g1(256), st); err != nil {
			return err
		}
		w16 := &tensor{owner: b, ptr: b.f8W.ptr, dt: ml.BF16, rows: nc, cols: K}
		out := &tensor{owner: b, ptr: b.f8Out.ptr, dt: ml.F32, rows: T, cols: nc}
		if err := b.matMul(out, xx, w16, nil, ""); err != nil {
			return fmt.Errorf("fp8 matmul: %w", err)
		}
		st = b.argStart()
		b.aP(d.ptr + uint64(n0*4))
		b.aI(d.cols)
		b.aP(out.ptr)
		b.aI(nc)
		b.aP(ww.scales + uint64(n0*4))
		b.aI(nc)
		if err := b.push("scale_cols", g3((nc+255)/256, T, 1), g1(256), st); err != nil {
			return err
		}
	}
	return b.biasAdd(d, bb, bs, T, N)
}
