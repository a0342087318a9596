package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/mltest"
)

// TestSplitGemm: bf16-weight MatMuls on the cuBLAS path (more rows than the
// GEMV takes) against a float64 reference over the f32 x, in chunks of
// rows that do not divide T. Split activations must be within f32-grade
// error (1e-5 of Σ|x||w|), and at least ten times closer than one bf16
// rounding of x (RoundActivations), which shows the split is really taken.
func TestSplitGemm(t *testing.T) {
	gpuOrSkip(t)
	defer func(s int) { splitGemmScratch = s }(splitGemmScratch)
	const K = 520
	r := rand.New(rand.NewPCG(4, 9))
	for _, sh := range [][2]int{{23, 40}, {9, 7}, {64, 1000}} {
		T, N := sh[0], sh[1]
		for _, chunk := range []int{T, 5} {
			splitGemmScratch = 2 * 4 * N * chunk
			worst := map[bool]float64{}
			for _, round := range []bool{false, true} {
				name := fmt.Sprintf("T=%d/N=%d/chunk=%d/round=%v", T, N, chunk, round)
				b := newTestBackend(t, Options{RoundActivations: round})
				xv := mltest.RandF32(r, T*K, 2)
				wv := mltest.RandF32(r, N*K, 1)
				for i := range wv {
					wv[i] = mltest.Round(ml.BF16, wv[i])
				}
				bv := mltest.RandF32(r, N, 1)
				x, _ := b.NewTensor(ml.F32, T, K)
				d, _ := b.NewTensor(ml.F32, T, N)
				bias, _ := b.NewTensor(ml.F32, 1, N)
				w, err := b.LoadWeight(N, K, mltest.Encode(ml.F32, wv), ml.F32, ml.BF16)
				if err != nil {
					t.Fatal(err)
				}
				if err := b.UploadF32(x, xv); err != nil {
					t.Fatal(err)
				}
				if err := b.UploadF32(bias, bv); err != nil {
					t.Fatal(err)
				}
				if err := b.MatMul(d, x, w, bias); err != nil {
					t.Fatal(err)
				}
				got := make([]float32, T*N)
				if err := b.Download(got, d); err != nil {
					t.Fatal(err)
				}
				b.Close()
				want := mltest.RefMatMul(xv, wv, bv, T, N, K)
				for j := range got {
					tt, n := j/N, j%N
					mag := 0.0
					for k := 0; k < K; k++ {
						mag += math.Abs(float64(xv[tt*K+k]) * float64(wv[n*K+k]))
					}
					e := math.Abs(float64(got[j])-want[j]) / mag
					if math.IsNaN(e) {
						t.Fatalf("%s: [%d,%d] = %v", name, tt, n, got[j])
					}
					worst[round] = math.Max(worst[round], e)
				}
				t.Logf("%s: max |error| / Σ|x||w| = %.3g", name, worst[round])
			}
			if worst[false] > 1e-5 {
				t.Errorf("T=%d N=%d chunk=%d: split activations off by %.3g of Σ|x||w| > 1e-5", T, N, chunk, worst[false])
			}
			if worst[false]*10 > worst[true] {
				t.Errorf("T=%d N=%d chunk=%d: split %.3g is not ten times closer than rounded %.3g", T, N, chunk, worst[false], worst[true])
			}
		}
	}
}
