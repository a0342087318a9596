package cpu

import (
	"sync"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu/kernels"
)

// FP8 (E4M3) weights on the CPU: stored one byte per value with a scale
// per row, as --quantization fp8 stores them on the GPU, so that the CPU
// computes what the GPU's fp8 weights give (and reports their accuracy in
// CI). The CPU has no fp8 arithmetic: a one-token product widens the
// weights in registers (kernels.MatVecF8, one byte per weight read from
// memory, half of bf16's); larger ones widen a block of rows to f32
// (kernels.F8ToF32) for the f32 GEMM.

// f8Block is the rows widened at a time.
const f8Block = 16

var f8Bufs = sync.Pool{New: func() any { return new([]float32) }}

// gemmF8 is dst[T,N] (row stride ldd) = x[T,K]·(scales·w[N,K])ᵀ.
func gemmF8(dst []float32, ldd int, x []float32, w []uint8, scales []float32, T, N, K int) {
	if T == 1 {
		// Decode: widened in registers, each weight byte read once.
		kernels.MatVecF8(dst, x, w, scales, N, K)
		return
	}
	bp := f8Bufs.Get().(*[]float32)
	defer f8Bufs.Put(bp)
	if cap(*bp) < f8Block*K {
		*bp = make([]float32, f8Block*K)
	}
	buf := (*bp)[:f8Block*K]
	for n0 := 0; n0 < N; n0 += f8Block {
		nn := min(f8Block, N-n0)
		for r := range nn {
			kernels.F8ToF32(buf[r*K:(r+1)*K], w[(n0+r)*K:(n0+r+1)*K], scales[n0+r])
		}
		kernels.GemmF32(dst[n0:], ldd, x, buf[:nn*K], T, nn, K)
	}
}

// quantizeF8 fills t's rows from buf rows (LoadWeight's conversion).
func quantizeF8(t *Tensor, r int, row []float32) {
	c := t.cols
	t.scales[r] = ml.QuantizeF8Row(t.f8[r*c:(r+1)*c], row)
}

// f8ToF32 widens FP8 values (an fp8 KV cache's, scale 1) into dst.
func f8ToF32(dst []float32, src []uint8) { kernels.F8ToF32(dst, src, 1) }
