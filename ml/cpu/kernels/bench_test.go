package kernels

import (
	"math/rand/v2"
	"testing"
)

// Benchmarks use the selected implementation (BenchmarkImpls compares all).
// Matvec (T=1) reports GB/s of weights streamed; the T=128 GEMMs report GFLOP/s.

func benchGemm(b *testing.B, kind wkind, T, N, K int) { benchGemmImpl(b, active, kind, T, N, K) }

func benchGemmImpl(b *testing.B, im impl, kind wkind, T, N, K int) {
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
		run = func() { im.gemmF32(dst, N, x, w, T, N, K) }
	case kBF16, kF16:
		w := make([]uint16, N*K)
		for i := range w {
			w[i] = toBF16(float32(r.NormFloat64() * 0.1))
		}
		wbytes = 2 * len(w)
		run = func() { im.gemmBF16(dst, N, x, w, T, N, K) }
		if kind == kF16 {
			run = func() { im.gemmF16(dst, N, x, w, T, N, K) }
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
		run = func() { im.gemmI8(dst, N, x, w, s, T, N, K) }
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

// benchGemmI8Q8 times GemmI8Q8 including the activation quantization, as
// a matmul pays it.
func benchGemmI8Q8(b *testing.B, T, N, K int) {
	r := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, T*K)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	w := make([]int8, N*K)
	for i := range w {
		w[i] = int8(r.Uint32())
	}
	s := make([]float32, N)
	for i := range s {
		s[i] = 0.01
	}
	dst := make([]float32, T*N)
	var a Q8Acts
	if T == 1 {
		b.SetBytes(int64(len(w) + 4*N))
	}
	for b.Loop() {
		a.Quantize(x, T, K)
		GemmI8Q8(dst, N, &a, 0, T, w, s, N)
	}
	if T > 1 {
		b.ReportMetric(2*float64(T)*float64(N)*float64(K)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	}
}

func BenchmarkMatVecI8Q8_896x896(b *testing.B)     { benchGemmI8Q8(b, 1, 896, 896) }
func BenchmarkMatVecI8Q8_4864x896(b *testing.B)    { benchGemmI8Q8(b, 1, 4864, 896) }
func BenchmarkMatVecI8Q8_896x4864(b *testing.B)    { benchGemmI8Q8(b, 1, 896, 4864) }
func BenchmarkMatVecI8Q8_151936x896(b *testing.B)  { benchGemmI8Q8(b, 1, 151936, 896) }
func BenchmarkGemmI8Q8_T128_4864x896(b *testing.B) { benchGemmI8Q8(b, 128, 4864, 896) }
func BenchmarkGemmI8Q8_T128_896x4864(b *testing.B) { benchGemmI8Q8(b, 128, 896, 4864) }
func BenchmarkGemmI8_T128_896x4864(b *testing.B)   { benchGemm(b, kI8, 128, 896, 4864) }

func BenchmarkGemmBF16_T128_4864x896(b *testing.B) { benchGemm(b, kBF16, 128, 4864, 896) }
func BenchmarkGemmBF16_T128_896x4864(b *testing.B) { benchGemm(b, kBF16, 128, 896, 4864) }
func BenchmarkGemmF32_T128_4864x896(b *testing.B)  { benchGemm(b, kF32, 128, 4864, 896) }
func BenchmarkGemmI8_T128_4864x896(b *testing.B)   { benchGemm(b, kI8, 128, 4864, 896) }

// BenchmarkImpls compares the implementations usable on this machine.
func BenchmarkImpls(b *testing.B) {
	for _, im := range impls() {
		b.Run(im.name+"/MatVecBF16_4864x896", func(b *testing.B) { benchGemmImpl(b, im, kBF16, 1, 4864, 896) })
		b.Run(im.name+"/MatVecI8_4864x896", func(b *testing.B) { benchGemmImpl(b, im, kI8, 1, 4864, 896) })
		if im.name == "generic" {
			continue // minutes per op
		}
		b.Run(im.name+"/GemmBF16_T128_4864x896", func(b *testing.B) { benchGemmImpl(b, im, kBF16, 128, 4864, 896) })
		b.Run(im.name+"/GemmI8_T128_4864x896", func(b *testing.B) { benchGemmImpl(b, im, kI8, 128, 4864, 896) })
	}
}

func BenchmarkDot64(b *testing.B) {
	x := make([]float32, 64)
	y := make([]float32, 64)
	for b.Loop() {
		Dot(x, y)
	}
}

func BenchmarkAxpy64(b *testing.B) {
	x := make([]float32, 64)
	y := make([]float32, 64)
	for b.Loop() {
		Axpy(0.5, x, y)
	}
}

// BenchmarkCopyFromDRAM is what a single-threaded copy reaches, for
// comparison with the single-threaded matvecs above: the bytes of a
// 151936×896 bf16 matrix (larger than the caches) copied on one core. MB/s
// counts the bytes read, as the matvecs' do; run it beside
// BenchmarkMatVecBF16_151936x896. (A copy also writes, so it is not a
// ceiling for a read-only stream.)
func BenchmarkCopyFromDRAM(b *testing.B) {
	src := make([]byte, 151936*896*2)
	dst := make([]byte, len(src))
	for i := range src {
		src[i] = byte(i)
	}
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		copy(dst, src)
	}
}

// BenchmarkReadFromDRAM sums the same bytes 8 at a time in plain Go: a
// read-only stream, like a matvec's weights, without the copy's writes
// (scalar loads, without the matvec's prefetch).
func BenchmarkReadFromDRAM(b *testing.B) {
	src := make([]uint64, 151936*896*2/8)
	for i := range src {
		src[i] = uint64(i)
	}
	b.SetBytes(int64(8 * len(src)))
	var s0, s1, s2, s3 uint64
	for b.Loop() {
		for i := 0; i+4 <= len(src); i += 4 {
			s0 += src[i]
			s1 += src[i+1]
			s2 += src[i+2]
			s3 += src[i+3]
		}
	}
	if s0+s1+s2+s3 == 1 {
		b.Log("unreachable") // keeps the sums live
	}
}
