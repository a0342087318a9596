package kernels

import "testing"

func BenchmarkProbeDotStream(b *testing.B) {
	n := 64 << 20
	a := make([]float32, n)
	c := make([]float32, 16)
	for i := range a {
		a[i] = 1
	}
	b.SetBytes(int64(4 * n))
	for b.Loop() {
		var s float32
		for i := 0; i < n; i += 16 << 10 {
			for j := 0; j < 16<<10; j += 16 {
				s += Dot(a[i+j:i+j+16], c)
			}
		}
		_ = s
	}
}

func BenchmarkProbeDotStream2(b *testing.B) {
	n := 64 << 20
	a := make([]float32, n)
	c := make([]float32, 8192)
	for i := range a {
		a[i] = 1
	}
	b.SetBytes(int64(4 * n))
	for b.Loop() {
		var s float32
		for i := 0; i < n; i += 8192 {
			s += Dot(a[i:i+8192], c)
		}
		_ = s
	}
}

func BenchmarkProbeMatVec2T(b *testing.B) {
	for _, kind := range []wkind{kBF16, kI8} {
		b.Run(kind.String(), func(b *testing.B) {
			N, K := 151936, 896
			x := make([]float32, K)
			dst := make([]float32, N)
			w := make([]uint16, N*K)
			wi := make([]int8, N*K)
			s := make([]float32, N)
			for i := range w {
				w[i] = 0x3f80
				wi[i] = 1
			}
			if kind == kBF16 {
				b.SetBytes(int64(2 * N * K))
			} else {
				b.SetBytes(int64(N * K))
			}
			for b.Loop() {
				done := make(chan bool)
				for g := 0; g < 2; g++ {
					go func(g int) {
						n0, n1 := g*N/2, (g+1)*N/2
						if kind == kBF16 {
							GemmBF16(dst[n0:n1], n1-n0, x, w[n0*K:n1*K], 1, n1-n0, K)
						} else {
							GemmI8(dst[n0:n1], n1-n0, x, wi[n0*K:n1*K], s[n0:n1], 1, n1-n0, K)
						}
						done <- true
					}(g)
				}
				<-done
				<-done
			}
		})
	}
}
