package cpu

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/mltest"
)

// TestAliasWeight: a weight aliased over parts (adjacent in memory or not)
// gives MatMul exactly the results of the same weight copied by LoadWeight,
// for every block split the pool makes.
func TestAliasWeight(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, dt := range []ml.DType{ml.BF16, ml.F16, ml.F32} {
		for _, c := range []struct {
			T, K int
			rows []int
		}{
			{1, 64, []int{48}}, {1, 40, []int{300, 300}}, {3, 72, []int{37, 100, 19}}, {130, 32, []int{64, 64}},
		} {
			N := 0
			for _, n := range c.rows {
				N += n
			}
			for _, adjacent := range []bool{true, false} {
				t.Run(fmt.Sprintf("%s/T%d/%v/adjacent=%v", dt, c.T, c.rows, adjacent), func(t *testing.T) {
					b := New(Options{Threads: 3})
					defer b.Close()
					vals := make([]float32, N*c.K)
					for i := range vals {
						vals[i] = float32(r.NormFloat64())
					}
					data := mltest.Encode(dt, vals)
					var parts [][]byte
					row := 0
					for _, n := range c.rows {
						lo, hi := row*c.K*dt.Size(), (row+n)*c.K*dt.Size()
						p := data[lo:hi:hi]
						if !adjacent {
							p = apart(p)
						}
						parts = append(parts, p)
						row += n
					}
					aw, err := b.AliasWeight(N, c.K, dt, parts...)
					if err != nil {
						t.Fatal(err)
					}
					if got := len(aw.(*Tensor).segs); (adjacent || len(c.rows) == 1) != (got == 0) {
						t.Errorf("%d segments", got)
					}
					cw, err := b.LoadWeight(N, c.K, data, dt, dt)
					if err != nil {
						t.Fatal(err)
					}
					xs := make([]float32, c.T*c.K)
					for i := range xs {
						xs[i] = float32(r.NormFloat64())
					}
					x, _ := b.NewTensor(ml.F32, c.T, c.K)
					b.UploadF32(x, xs)
					want, got := make([]float32, c.T*N), make([]float32, c.T*N)
					d, _ := b.NewTensor(ml.F32, c.T, N)
					if err := b.MatMul(d, x, cw, nil); err != nil {
						t.Fatal(err)
					}
					b.Download(want, d)
					if err := b.MatMul(d, x, aw, nil); err != nil {
						t.Fatal(err)
					}
					b.Download(got, d)
					// Rows are independent dot products, but a block cut at a
					// part's end may run a row in another tile shape (another
					// summation order): a few ulps.
					for i := range want {
						if d := math.Abs(float64(got[i] - want[i])); d > 1e-5*(1+math.Abs(float64(want[i]))) {
							t.Fatalf("element %d: aliased %g, copied %g", i, got[i], want[i])
						}
					}
				})
			}
		}
	}
}

func TestAliasWeightRejects(t *testing.T) {
	b := New(Options{Threads: 1})
	defer b.Close()
	buf := make([]byte, 66)
	for _, c := range []struct {
		name  string
		rows  int
		dt    ml.DType
		parts [][]byte
		want  error
	}{
		{"int8", 4, ml.I8, [][]byte{buf[:32]}, ml.ErrUnsupported},
		{"misaligned", 4, ml.BF16, [][]byte{buf[1:65]}, ml.ErrUnsupported},
		{"partial row", 4, ml.BF16, [][]byte{buf[:62]}, ErrShape},
		{"wrong rows", 3, ml.BF16, [][]byte{buf[:64]}, ErrShape},
		{"no parts", 4, ml.BF16, nil, ErrShape},
	} {
		if _, err := b.AliasWeight(c.rows, 8, c.dt, c.parts...); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// A segmented weight is for MatMul only.
	w, err := b.AliasWeight(4, 8, ml.BF16, apart(make([]byte, 32)), apart(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	if v := b.View(w, 0, 1); v != nil {
		t.Error("View of a segmented weight")
	}
	idx, _ := b.NewTensor(ml.I32, 1, 1)
	dst, _ := b.NewTensor(ml.F32, 1, 8)
	if err := b.Embedding(dst, w, idx); !errors.Is(err, ml.ErrUnsupported) {
		t.Errorf("Embedding from a segmented weight: %v", err)
	}
}

// apart copies p where nothing follows it directly in memory.
func apart(p []byte) []byte {
	return append(make([]byte, 0, len(p)+64), p...)
}

// BenchmarkGateUp is the MLP's gate/up matmul of Qwen2.5-0.5B (2×4864 rows
// of 896) as one contiguous weight, as one weight of two segments (aliased
// gate and up), and as two matmuls.
func BenchmarkGateUp(b *testing.B) {
	const I, K = 4864, 896
	for _, T := range []int{1, 128} {
		for _, layout := range []string{"contiguous", "segments", "two-matmuls"} {
			b.Run(fmt.Sprintf("T%d/%s", T, layout), func(b *testing.B) {
				be := New(Options{})
				defer be.Close()
				gate, up := make([]byte, I*K*2), make([]byte, I*K*2)
				x, _ := be.NewTensor(ml.F32, T, K)
				d, _ := be.NewTensor(ml.F32, T, 2*I)
				d1, _ := be.NewTensor(ml.F32, T, I)
				var w, wg, wu ml.Tensor
				switch layout {
				case "contiguous":
					w, _ = be.LoadWeight(2*I, K, append(gate, up...), ml.BF16, ml.BF16)
				case "segments":
					w, _ = be.AliasWeight(2*I, K, ml.BF16, gate, up)
				default:
					wg, _ = be.AliasWeight(I, K, ml.BF16, gate)
					wu, _ = be.AliasWeight(I, K, ml.BF16, up)
				}
				b.SetBytes(int64(2 * I * K * 2))
				for b.Loop() {
					if w != nil {
						be.MatMul(d, x, w, nil)
						continue
					}
					be.MatMul(d1, x, wg, nil)
					be.MatMul(d1, x, wu, nil)
				}
			})
		}
	}
}
