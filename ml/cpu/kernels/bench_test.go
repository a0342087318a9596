package kernels

import (
	"math/rand/v2"
	"testing"
)

// Benchmarks use the selected implementation through the exported API.
// Matvec (T=1) reports GB/s of weights streamed; the T=128 GEMMs report GFLOP/s.

func benchGemm(b *testing.B, kind wkind, T, N, K int) {
	r := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, T*K)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	dst := make([]float32, T*N)
	var run func()
	var wbytes int
	switch kind {
	case kF32:
		w := make([]float32, N*K)
		for i := range w {
			w[i] = float32(r.NormFloat64())
		}
		wbytes = 4 * len(w)
		run = func() { GemmF32(dst, N, x, w, T, N, K) }
	case kBF16, kF16:
		w := make([]uint16, N*K)
		for i := range w {
			w[i] = toBF16(float32(r.NormFloat64() * 0.1))
		}
		wbytes = 2 * len(w)
		run = func() { GemmBF16(dst, N, x, w, T, N, K) }
		if kind == kF16 {
			run = func() { GemmF16(dst, N, x, w, T, N, K) }
		}
	case kI8:
		w := make([]int8, N*K)
		for i := range w {
			w[i] = int8(r.Uint32())
		}
		s := make([]float32, N)
		for i := range s {
			s[i] = 0.01
		}
		wbytes = len(w) + 4*N
		run = func() { GemmI8(dst, N, x, w, s, T, N, K) }
	}
	if T == 1 {
		b.SetBytes(int64(wbytes))
	}
	b.ResetTimer()
	for b.Loop() {
		run()
	}
	if T > 1 {
		b.ReportMetric(2*float64(T)*float64(N)*float64(K)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	}
}

func BenchmarkMatVecBF16_896x896(b *testing.B)    { benchGemm(b, kBF16, 1, 896, 896) }
func BenchmarkMatVecBF16_4864x896(b *testing.B)   { benchGemm(b, kBF16, 1, 4864, 896) }
func BenchmarkMatVecBF16_896x4864(b *testing.B)   { benchGemm(b, kBF16, 1, 896, 4864) }
func BenchmarkMatVecBF16_151936x896(b *testing.B) { benchGemm(b, kBF16, 1, 151936, 896) }
func BenchmarkMatVecF16_4864x896(b *testing.B)    { benchGemm(b, kF16, 1, 4864, 896) }
func BenchmarkMatVecF32_896x896(b *testing.B)     { benchGemm(b, kF32, 1, 896, 896) }
func BenchmarkMatVecF32_4864x896(b *testing.B)    { benchGemm(b, kF32, 1, 4864, 896) }
func BenchmarkMatVecF32_151936x896(b *testing.B)  { benchGemm(b, kF32, 1, 151936, 896) }
func BenchmarkMatVecI8_896x896(b *testing.B)      { benchGemm(b, kI8, 1, 896, 896) }
func BenchmarkMatVecI8_4864x896(b *testing.B)     { benchGemm(b, kI8, 1, 4864, 896) }
func BenchmarkMatVecI8_896x4864(b *testing.B)     { benchGemm(b, kI8, 1, 896, 4864) }
func BenchmarkMatVecI8_151936x896(b *testing.B)   { benchGemm(b, kI8, 1, 151936, 896) }

func BenchmarkGemmBF16_T128_4864x896(b *testing.B) { benchGemm(b, kBF16, 128, 4864, 896) }
func BenchmarkGemmBF16_T128_896x4864(b *testing.B) { benchGemm(b, kBF16, 128, 896, 4864) }
func BenchmarkGemmF32_T128_4864x896(b *testing.B)  { benchGemm(b, kF32, 128, 4864, 896) }
func BenchmarkGemmI8_T128_4864x896(b *testing.B)   { benchGemm(b, kI8, 128, 4864, 896) }
