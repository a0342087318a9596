package cpu

import (
	"fmt"
	"testing"

	"github.com/llmserve/llmserve/ml"
)

// BenchmarkMatVec is one decode-step matmul (T=1) of Qwen2.5-0.5B's shapes
// over the pool, in GB/s of weights streamed, beside a single-threaded copy
// of as many bytes as the bf16 weight (copy/...: GB/s of bytes copied), the
// bandwidth one core reaches here.
func BenchmarkMatVec(b *testing.B) {
	for _, sh := range [][2]int{{9728, 896}, {151936, 896}} {
		b.Run(fmt.Sprintf("copy/%dx%d", sh[0], sh[1]), func(b *testing.B) {
			src, dst := make([]byte, sh[0]*sh[1]*2), make([]byte, sh[0]*sh[1]*2)
			for i := range src {
				src[i] = byte(i)
			}
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				copy(dst, src)
			}
		})
		for _, dt := range []ml.DType{ml.BF16, ml.I8} {
			for _, th := range []int{1, 2} {
				b.Run(fmt.Sprintf("%s/%dx%d/threads=%d", dt, sh[0], sh[1], th), func(b *testing.B) {
					be := New(Options{Threads: th})
					defer be.Close()
					N, K := sh[0], sh[1]
					w, err := be.LoadWeight(N, K, make([]byte, N*K*2), ml.BF16, dt)
					if err != nil {
						b.Fatal(err)
					}
					x, _ := be.NewTensor(ml.F32, 1, K)
					d, _ := be.NewTensor(ml.F32, 1, N)
					b.SetBytes(int64(N * K * dt.Size()))
					for b.Loop() {
						if err := be.MatMul(d, x, w, nil); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

// BenchmarkGemm is one prefill matmul (T=128) of Qwen2.5-0.5B's shapes over
// the pool.
func BenchmarkGemm(b *testing.B) {
	for _, sh := range [][2]int{{896, 896}, {128, 896}, {9728, 896}, {896, 4864}} {
		for _, dt := range []ml.DType{ml.BF16, ml.I8} {
			b.Run(fmt.Sprintf("%s/T128/%dx%d", dt, sh[0], sh[1]), func(b *testing.B) {
				be := New(Options{})
				defer be.Close()
				const T = 128
				N, K := sh[0], sh[1]
				w, err := be.LoadWeight(N, K, make([]byte, N*K*2), ml.BF16, dt)
				if err != nil {
					b.Fatal(err)
				}
				x, _ := be.NewTensor(ml.F32, T, K)
				d, _ := be.NewTensor(ml.F32, T, N)
				for b.Loop() {
					if err := be.MatMul(d, x, w, nil); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(2*T*N*K)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}
