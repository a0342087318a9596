package cuda

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/mltest"
)

// TestF8MatMul checks FP8 weights (a scale per row) against the float64
// product of the quantized values, with a bias: the decode GEMV (up to 8
// rows, K a multiple of 16 or not), the tensor-core product (more rows),
// and the GEMV over groups of rows where K rules the tensor cores out, at
// the f32 bar with split activations and at the bf16 bar with rounded ones.
func TestF8MatMul(t *testing.T) {
	gpuOrSkip(t)
	cases := []struct{ T, N, K int }{{1, 300, 512}, {3, 40, 72}, {8, 1000, 1536}, {9, 200, 136}, {40, 130, 96}, {300, 520, 2048}}
	for _, round := range []bool{false, true} {
		b := newTestBackend(t, Options{RoundActivations: round})
		r := rand.New(rand.NewPCG(5, 6))
		for _, c := range cases {
			w := mltest.RandF32(r, c.N*c.K, 0.5)
			x := mltest.RandF32(r, c.T*c.K, 1)
			bias := mltest.RandF32(r, c.N, 1)
			wt, err := b.LoadWeight(c.N, c.K, mltest.Encode(ml.F32, w), ml.F32, ml.F8)
			if err != nil {
				t.Fatal(err)
			}
			// The values the weight holds: the quantized codes times their row's scale.
			codes, scales := make([]uint8, c.K), make([]float32, c.N)
			deq := make([]float32, c.N*c.K)
			for n := range c.N {
				scales[n] = ml.QuantizeF8Row(codes, w[n*c.K:(n+1)*c.K])
				for k, q := range codes {
					deq[n*c.K+k] = ml.F8Value(q)
				}
			}
			xt, _ := b.NewTensor(ml.F32, c.T, c.K)
			bt, _ := b.NewTensor(ml.F32, 1, c.N)
			dst, _ := b.NewTensor(ml.F32, c.T, c.N)
			if err := errors.Join(b.UploadF32(xt, x), b.UploadF32(bt, bias), b.MatMul(dst, xt, wt, bt)); err != nil {
				t.Fatal(err)
			}
			got := make([]float32, c.T*c.N)
			if err := b.Download(got, dst); err != nil {
				t.Fatal(err)
			}
			xin := x
			tol := 2e-5
			if round && c.T > f8GemvMaxT && c.K%16 == 0 {
				xin = make([]float32, len(x))
				for i, v := range x {
					xin[i] = mltest.Round(ml.BF16, v)
				}
				tol = 1e-5
			}
			var worst, size float64
			for ti := range c.T {
				for n := range c.N {
					var want float64
					for k := range c.K {
						want += float64(xin[ti*c.K+k]) * float64(deq[n*c.K+k])
					}
					want = want*float64(scales[n]) + float64(bias[n])
					worst = max(worst, math.Abs(float64(got[ti*c.N+n])-want))
					size = max(size, math.Abs(want))
				}
			}
			if e := worst / max(1, size); e > tol {
				t.Errorf("round=%v T=%d N=%d K=%d: error %.3g > %.3g", round, c.T, c.N, c.K, e, tol)
			} else {
				t.Logf("round=%v T=%d N=%d K=%d: error %.3g", round, c.T, c.N, c.K, e)
			}
			for _, x := range []ml.Tensor{wt, xt, bt, dst} {
				b.Free(x)
			}
		}
		b.Close()
	}
}
