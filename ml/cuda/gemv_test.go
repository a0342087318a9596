package cuda

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/mltest"
)

// TestGemvOddShapes checks the bf16 GEMV against a float64 reference over
// bf16 w and f32 x (x rounded to bf16 with RoundActivations), for odd N, K
// at the edges of its vector loop, every row count and split-K factor,
// with and without a norm before it (whose bf16 copy of x RoundActivations
// reads), a fused bias and three merged projections of one x.
func TestGemvOddShapes(t *testing.T) {
	gpuOrSkip(t)
	for _, round := range []bool{false, true} {
		for _, ks := range []int{0, 1, 2, 4, 8} {
			b := newTestBackend(t, Options{GemvMaxT: 8, GemvKS: ks, DisableGraphs: true, RoundActivations: round})
			r := rand.New(rand.NewPCG(uint64(ks), 3))
			for _, sh := range [][2]int{{1, 8}, {7, 24}, {33, 256}, {13, 264}, {1001, 1544}, {5, 2056}, {3, 8968}, {19, 20}} {
				N, K := sh[0], sh[1]
				for _, T := range []int{1, 2, 3, 5, 8} {
					for _, normed := range []bool{false, true} {
						name := fmt.Sprintf("round=%v/ks=%d/N=%d/K=%d/T=%d/normed=%v", round, ks, N, K, T, normed)
						gemvCase(t, b, r, name, T, K, []int{N, N/2 + 3, 5}, normed, round)
					}
				}
			}
			b.Close()
		}
	}
}

func gemvCase(t *testing.T, b *Backend, r *rand.Rand, name string, T, K int, Ns []int, normed, round bool) {
	t.Helper()
	xv := mltest.RandF32(r, T*K, 2)
	x, _ := b.NewTensor(ml.F32, T, K)
	defer b.Free(x)
	if err := b.UploadF32(x, xv); err != nil {
		t.Fatal(err)
	}
	if normed {
		// x = RMSNorm(x0, 1); with RoundActivations the MatMuls read the norm's bf16 copy.
		ones := make([]float32, K)
		for i := range ones {
			ones[i] = 1
		}
		nw, _ := b.LoadWeight(1, K, mltest.Encode(ml.F32, ones), ml.F32, ml.BF16)
		defer b.Free(nw)
		if err := b.RMSNorm(x, x, nw, 1e-6); err != nil {
			t.Fatal(err)
		}
		if err := b.Download(xv, x); err != nil {
			t.Fatal(err)
		}
	}
	type mm struct {
		w, bias, d ml.Tensor
		wv, bv     []float32
		n          int
	}
	var ms []mm
	for i, N := range Ns {
		wv := mltest.RandF32(r, N*K, 1)
		for j := range wv {
			wv[j] = mltest.Round(ml.BF16, wv[j])
		}
		w, err := b.LoadWeight(N, K, mltest.Encode(ml.F32, wv), ml.F32, ml.BF16)
		if err != nil {
			t.Fatal(err)
		}
		m := mm{w: w, wv: wv, n: N}
		if i != 1 {
			m.bv = mltest.RandF32(r, N, 1)
			m.bias, _ = b.NewTensor(ml.F32, 1, N)
			if err := b.UploadF32(m.bias, m.bv); err != nil {
				t.Fatal(err)
			}
		}
		m.d, _ = b.NewTensor(ml.F32, T, N)
		ms = append(ms, m)
	}
	defer func() {
		for _, m := range ms {
			b.Free(m.w)
			b.Free(m.d)
			if m.bias != nil {
				b.Free(m.bias)
			}
		}
	}()
	for _, m := range ms {
		if err := b.MatMul(m.d, x, m.w, m.bias); err != nil {
			t.Fatal(err)
		}
	}
	xr := slices.Clone(xv)
	if round {
		for i, v := range xv {
			xr[i] = mltest.Round(ml.BF16, v)
		}
	}
	for i, m := range ms {
		got := make([]float32, T*m.n)
		if err := b.Download(got, m.d); err != nil {
			t.Fatal(err)
		}
		want := mltest.RefMatMul(xr, m.wv, m.bv, T, m.n, K)
		for j := range got {
			tt, n := j/m.n, j%m.n
			mag := 0.0
			for k := 0; k < K; k++ {
				mag += math.Abs(float64(xr[tt*K+k]) * float64(m.wv[n*K+k]))
			}
			if d := math.Abs(float64(got[j]) - want[j]); d > 1e-5*mag+1e-6 || math.IsNaN(float64(got[j])) {
				t.Fatalf("%s matmul %d: [%d,%d] = %v, want %v (|x||w| %.3g)", name, i, tt, n, got[j], want[j], mag)
			}
		}
	}
}

// decodeShapes are Qwen2.5-1.5B's decode MatMuls (q/k/v fused, gate/up fused).
// gate_up_rows is gate/up's shape as a plain GEMV (adjacent row pairs), to
// compare with the SiLU epilogue's pairs of rows 27.5 MB apart.
var decodeShapes = []struct {
	name string
	N, K int
}{{"qkv", 2048, 1536}, {"o", 1536, 1536}, {"gate_up", 17920, 1536}, {"gate_up_rows", 17920, 1536}, {"down", 1536, 8960}, {"lm_head", 151936, 1536}}

// weightCopies loads enough random bf16 [N,K] weights (up to 64) to fill
// 256 MiB, so that cycling through them misses the 50 MB L2.
func weightCopies(bm *testing.B, b *Backend, r *rand.Rand, N, K int) []ml.Tensor {
	ws := make([]ml.Tensor, max(1, min(64, (256<<20)/(N*K*2))))
	for i := range ws {
		w, err := b.LoadWeight(N, K, randBytes(r, N*K, ml.BF16, 0.05), ml.BF16, ml.BF16)
		if err != nil {
			bm.Fatal(err)
		}
		ws[i] = w
	}
	return ws
}

// benchBatched times op (called with 0, 1, ...) as graph-replayed batches
// of 64 launches and reports µs per op and weight GB/s for bytes per op.
func benchBatched(bm *testing.B, b *Backend, bytes int, op func(i int) error) {
	const batch = 64
	step := func() error {
		var err error
		for i := 0; i < batch; i++ {
			err = errors.Join(err, op(i))
		}
		return errors.Join(err, b.Sync())
	}
	for i := 0; i < 3; i++ { // capture the graph
		if err := step(); err != nil {
			bm.Fatal(err)
		}
	}
	bm.ResetTimer()
	for i := 0; i < bm.N; i++ {
		if err := step(); err != nil {
			bm.Fatal(err)
		}
	}
	sec := bm.Elapsed().Seconds() / float64(bm.N*batch)
	bm.ReportMetric(sec*1e6, "us/op")
	bm.ReportMetric(float64(bytes)/sec/1e9, "GB/s")
}

// BenchmarkGemv times decode-shaped bf16 MatMuls (bf16 x, as the norms'
// copies give them) through cuBLAS and the GEMV at each split-K factor,
// as graph-replayed batches of 64 launches over enough weight copies to
// miss the 50 MB L2, the way a decode step streams its weights.
func BenchmarkGemv(bm *testing.B) {
	gpuOrSkip(bm)
	type variant struct {
		name string
		o    Options
	}
	vs := []variant{{"cublas", Options{GemvMaxT: -1}}, {"gemv-persistent", Options{GemvMaxT: 8}}}
	for _, ks := range []int{1, 2} {
		vs = append(vs, variant{fmt.Sprintf("gemv-ks%d", ks), Options{GemvMaxT: 8, GemvKS: ks}})
	}
	for _, v := range vs {
		b := newTestBackend(bm, v.o)
		r := rand.New(rand.NewPCG(1, 1))
		for _, sh := range decodeShapes {
			bytes := sh.N * sh.K * 2
			ws := weightCopies(bm, b, r, sh.N, sh.K)
			copies := len(ws)
			for _, T := range []int{1, 2, 4} {
				x, _ := b.NewTensor(ml.BF16, T, sh.K)
				d, _ := b.NewTensor(ml.F32, T, sh.N)
				bm.Run(fmt.Sprintf("%s/%s/T=%d", v.name, sh.name, T), func(bm *testing.B) {
					benchBatched(bm, b, bytes, func(i int) error { return b.MatMul(d, x, ws[i%copies], nil) })
				})
				b.Free(x)
				b.Free(d)
			}
			for _, w := range ws {
				b.Free(w)
			}
		}
		b.Close()
	}
}
