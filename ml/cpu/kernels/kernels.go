// Package kernels holds the hot CPU compute kernels of the cpu backend:
// matrix products of f32 activations with f32/bf16/f16/int8 weights, dot and
// axpy, dtype conversions, and the kernels of flash attention and SiLU
// (flash.go: broadcast GEMM tiles, a vector exp, online softmax columns).
//
// Weights stay in their storage dtype and are upcast in registers; all sums
// are accumulated in float32 with FMA. The exception is GemmI8Q8 (quant.go):
// int8 weights times activations quantized to int8 (Q8Acts), summed
// exactly in int32 by the AVX512-VNNI dot product and scaled in float32.
// Every function is single-threaded: the caller splits the output rows (N)
// across goroutines and passes sub-slices of w and offset dst.
//
// The implementation is chosen once at start-up from the CPU features
// (AVX-512, AVX2+FMA, or portable Go; the purego build tag forces portable
// Go; AVX512-VNNI adds the int8 dot product). Features reports the choice.
//
// The GEMMs run generated register-blocked tile kernels (gemm_amd64.s, from
// gen_asm.go: 4 tokens × 4 rows of 16 lanes per step, horizontal sums once
// per tile); tiled_amd64.go blocks K and N for L1/L2 and adds the K tail in
// Go. Single-token (matvec) tiles take 8 rows and prefetch the weights
// ahead, since decode streams every weight from DRAM once per step.
// dst must not overlap x or w.
package kernels

import "fmt"

// impl is one complete set of kernels. The exported functions check their
// arguments and then call the selected impl, which may assume valid shapes.
type impl struct {
	name     string
	gemmF32  func(dst []float32, ldd int, x []float32, w []float32, T, N, K int)
	gemmBF16 func(dst []float32, ldd int, x []float32, w []uint16, T, N, K int)
	gemmF16  func(dst []float32, ldd int, x []float32, w []uint16, T, N, K int)
	gemmI8   func(dst []float32, ldd int, x []float32, w []int8, scales []float32, T, N, K int)
	gemmI8Q8 func(dst []float32, ldd int, a *Q8Acts, t0, t1 int, w []int8, scales []float32, N int)
	int8Dot  bool // gemmI8Q8 uses a native int8 dot product
	// quantizeQ8 quantizes whole blocks for Q8Acts.QuantizeRows.
	quantizeQ8 func(q []int8, scales, lanes, x []float32, nblocks int) float64
	dot        func(a, b []float32) float32
	axpy       func(a float32, x, y []float32)
	bf16ToF32  func(dst []float32, src []uint16)
	f16ToF32   func(dst []float32, src []uint16)
	f32ToBF16  func(dst []uint16, src []float32)
	f32ToF16   func(dst []uint16, src []float32)
	f8ToF32    func(dst []float32, src []uint8, scale float32)
	matvecF8   func(dst, x []float32, w []uint8, scales []float32, N, K int)
}

// active is chosen once at package initialisation and never written again.
var active = selectImpl()

// Features names the selected implementation, for logs.
func Features() string { return active.name }

// checkGemm panics (like an out-of-range index would) when the slices are
// too short for the shape: the assembly kernels must never read or write
// out of bounds.
func checkGemm(nd, ldd, nx, nw, T, N, K int) bool {
	if T < 0 || N < 0 || K < 0 {
		panic(fmt.Sprintf("kernels: negative shape T=%d N=%d K=%d", T, N, K))
	}
	if T == 0 || N == 0 {
		return false
	}
	if ldd < N || nd < (T-1)*ldd+N || nx < T*K || nw < N*K {
		panic(fmt.Sprintf("kernels: gemm shape T=%d N=%d K=%d ldd=%d does not fit len(dst)=%d len(x)=%d len(w)=%d",
			T, N, K, ldd, nd, nx, nw))
	}
	return true
}

// GemmF32 computes dst[t*ldd+n] = sum_k x[t*K+k] * w[n*K+k] for t<T, n<N:
// x holds T rows of K activations, w holds N rows of K weights.
func GemmF32(dst []float32, ldd int, x []float32, w []float32, T, N, K int) {
	if checkGemm(len(dst), ldd, len(x), len(w), T, N, K) {
		active.gemmF32(dst, ldd, x, w, T, N, K)
	}
}

// GemmBF16 is GemmF32 with bfloat16 weights (raw bits).
func GemmBF16(dst []float32, ldd int, x []float32, w []uint16, T, N, K int) {
	if checkGemm(len(dst), ldd, len(x), len(w), T, N, K) {
		active.gemmBF16(dst, ldd, x, w, T, N, K)
	}
}

// GemmF16 is GemmF32 with IEEE half-precision weights (raw bits).
func GemmF16(dst []float32, ldd int, x []float32, w []uint16, T, N, K int) {
	if checkGemm(len(dst), ldd, len(x), len(w), T, N, K) {
		active.gemmF16(dst, ldd, x, w, T, N, K)
	}
}

// GemmI8 is GemmF32 with int8 weights and one scale per weight row:
// dst[t*ldd+n] = scales[n] * sum_k x[t*K+k] * w[n*K+k].
func GemmI8(dst []float32, ldd int, x []float32, w []int8, scales []float32, T, N, K int) {
	if checkGemm(len(dst), ldd, len(x), len(w), T, N, K) {
		if len(scales) < N {
			panic(fmt.Sprintf("kernels: GemmI8 len(scales)=%d < N=%d", len(scales), N))
		}
		active.gemmI8(dst, ldd, x, w, scales, T, N, K)
	}
}

// Dot returns sum_i a[i]*b[i] over len(a) elements; b must be at least as long.
func Dot(a, b []float32) float32 {
	if len(b) < len(a) {
		panic(fmt.Sprintf("kernels: Dot len(b)=%d < len(a)=%d", len(b), len(a)))
	}
	return active.dot(a, b[:len(a)])
}

// Axpy computes y[i] += a*x[i] over len(x) elements; y must be at least as long.
func Axpy(a float32, x, y []float32) {
	if len(y) < len(x) {
		panic(fmt.Sprintf("kernels: Axpy len(y)=%d < len(x)=%d", len(y), len(x)))
	}
	active.axpy(a, x, y[:len(x)])
}

func checkConv(nd, ns int) {
	if nd < ns {
		panic(fmt.Sprintf("kernels: conversion len(dst)=%d < len(src)=%d", nd, ns))
	}
}

// BF16ToF32 converts len(src) bfloat16 values (exact).
func BF16ToF32(dst []float32, src []uint16) {
	checkConv(len(dst), len(src))
	active.bf16ToF32(dst[:len(src)], src)
}

// F8ToF32 sets dst[i] = scale·value(src[i]) for len(src) FP8 E4M3 values
// (a weight row and its scale). NaN codes (0x7f, 0xff) are not kept.
func F8ToF32(dst []float32, src []uint8, scale float32) {
	checkConv(len(dst), len(src))
	active.f8ToF32(dst[:len(src)], src, scale)
}

// MatVecF8 sets dst[r] = scales[r]·Σ_i value(w[r·K+i])·x[i] for N rows of
// FP8 E4M3 weights: a decode step's product, the weights widened in
// registers (one byte per weight read from memory).
func MatVecF8(dst, x []float32, w []uint8, scales []float32, N, K int) {
	if N < 0 || K < 0 || len(dst) < N || len(x) < K || len(w) < N*K || len(scales) < N {
		panic(fmt.Sprintf("kernels: MatVecF8 of %d×%d with dst %d, x %d, w %d, scales %d", N, K, len(dst), len(x), len(w), len(scales)))
	}
	active.matvecF8(dst, x, w, scales, N, K)
}

// F16ToF32 converts len(src) IEEE half values (exact; NaNs come out quiet).
func F16ToF32(dst []float32, src []uint16) {
	checkConv(len(dst), len(src))
	active.f16ToF32(dst[:len(src)], src)
}

// F32ToBF16 converts len(src) floats to bfloat16, rounding to nearest even;
// NaNs stay (quiet) NaNs.
func F32ToBF16(dst []uint16, src []float32) {
	checkConv(len(dst), len(src))
	active.f32ToBF16(dst[:len(src)], src)
}

// F32ToF16 converts len(src) floats to IEEE half, rounding to nearest even
// (overflow gives ±Inf, tiny values become subnormals or zero).
func F32ToF16(dst []uint16, src []float32) {
	checkConv(len(dst), len(src))
	active.f32ToF16(dst[:len(src)], src)
}
