package cuda

import (
	"errors"
	"fmt"
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
// TestF8Slices pins the split-K choice on an H100's 132 SMs for
// Llama-3.1-8B's projections: a decode batch's few output blocks are split,
// a prompt's many are not.
func TestF8Slices(t *testing.T) {
	for _, c := range []struct{ T, N, K, want int }{
		{64, 4096, 4096, 16},   // o: 64 blocks
		{64, 4096, 14336, 16},  // down
		{64, 28672, 4096, 2},   // gate and up: 448 blocks
		{1024, 4096, 4096, 1},  // a prompt's o: 1024 blocks
		{16, 4096, 256, 1},     // K too short to split
		{256, 128256, 4096, 1}, // the LM head
	} {
		blocks := (c.N + 63) / 64 * ((c.T + 63) / 64)
		if got := f8Slices(132, blocks, c.K, c.T*c.N); got != c.want {
			t.Errorf("T=%d N=%d K=%d: %d slices, want %d", c.T, c.N, c.K, got, c.want)
		}
	}
}

func TestF8MatMul(t *testing.T) {
	gpuOrSkip(t)
	// Widen a few rows at a time: the 300-row case takes several chunks,
	// the last one short.
	defer func(v int) { f8WideScratch = v }(f8WideScratch)
	f8WideScratch = 64 * 2048 * 2
	cases := []struct{ T, N, K int }{{1, 300, 512}, {3, 40, 72}, {8, 1000, 1536}, {9, 200, 136}, {40, 130, 96}, {300, 520, 2048},
		{16, 72, 4112}} // K split into slices (f8Slices), the last one ending mid-step

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
			if err := errors.Join(b.UploadF32(xt, x), b.UploadF32(bt, bias)); err != nil {
				t.Fatal(err)
			}
			// expert_mma's products: its 64-row form too (the default is _wide).
			forms := []bool{true}
			if c.T > f8GemvMaxT && c.T < f8WideMinT && c.K%16 == 0 {
				forms = append(forms, false)
			}
			nan := make([]float32, c.T*c.N)
			for i := range nan {
				nan[i] = float32(math.NaN())
			}
			for _, wide := range forms {
				expertMMAWide = wide
				err := errors.Join(b.UploadF32(dst, nan), b.MatMul(dst, xt, wt, bt)) // no output left from the last form
				expertMMAWide = true
				if err != nil {
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
					t.Errorf("round=%v T=%d N=%d K=%d wide=%v: error %.3g > %.3g", round, c.T, c.N, c.K, wide, e, tol)
				} else {
					t.Logf("round=%v T=%d N=%d K=%d wide=%v: error %.3g", round, c.T, c.N, c.K, wide, e)
				}
			}
			for _, x := range []ml.Tensor{wt, xt, bt, dst} {
				b.Free(x)
			}
		}
		b.Close()
	}
}

// BenchmarkMatMulF8 times Llama-3.1-8B's projections with bf16 weights
// (cuBLAS or the GEMV) and FP8 weights (gemv_f8; for more rows expert_mma's
// dense form with and without the split of K, and in its 64-row form
// (mma-narrow, split) beside the default _wide, and matMulF8Wide), x split
// into bf16 halves or rounded once. GB/s counts the weight's bytes.
func BenchmarkMatMulF8(bm *testing.B) {
	gpuOrSkip(bm)
	defer func(minT int) { f8SplitK, f8WideMinT, expertMMAWide = true, minT, true }(f8WideMinT)
	for _, round := range []bool{false, true} {
		b := newTestBackend(bm, Options{DisableGraphs: true, RoundActivations: round})
		r := rand.New(rand.NewPCG(1, 1))
		for _, sh := range []struct {
			name string
			N, K int
		}{{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gateup", 28672, 4096}, {"down", 4096, 14336}} {
			for _, wdt := range []ml.DType{ml.BF16, ml.F8} {
				w, err := b.LoadWeight(sh.N, sh.K, randBytes(r, sh.N*sh.K, ml.BF16, 0.05), ml.BF16, wdt)
				if err != nil {
					bm.Fatal(err)
				}
				for _, T := range []int{1, 16, 64, 256, 1024} {
					x, _ := b.NewTensor(ml.F32, T, sh.K)
					d, _ := b.NewTensor(ml.F32, T, sh.N)
					// FP8 products of more than f8GemvMaxT rows: expert_mma with
					// and without the split of K, and widened for cuBLAS.
					for _, path := range []string{"", "mma-split", "mma", "mma-narrow", "wide"} {
						if (path == "") != (wdt != ml.F8 || T <= f8GemvMaxT) {
							continue
						}
						name := fmt.Sprintf("round=%v/%s/%s/T=%d", round, sh.name, wdt, T)
						if path != "" {
							name += "/" + path
						}
						bm.Run(name, func(bm *testing.B) {
							f8SplitK, f8WideMinT, expertMMAWide = path != "mma", 1<<30, path != "mma-narrow"
							if path == "wide" {
								f8WideMinT = 0
							}
							for i := 0; i < bm.N; i++ {
								if err := b.MatMul(d, x, w, nil); err != nil {
									bm.Fatal(err)
								}
							}
							if err := b.Sync(); err != nil {
								bm.Fatal(err)
							}
							sec := bm.Elapsed().Seconds() / float64(bm.N)
							bm.ReportMetric(sec*1e3, "ms/op")
							bm.ReportMetric(float64(sh.N*sh.K*wdt.Size())/sec/1e9, "GB/s")
						})
					}
					b.Free(x)
					b.Free(d)
				}
				b.Free(w)
			}
		}
		b.Close()
	}
}
