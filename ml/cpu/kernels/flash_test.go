package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

var negInf = float32(math.Inf(-1))

// expRef is e^t in float64 with the documented edges: 0 below expLo,
// saturation at expHi.
func expRef(t float32) float64 {
	if t < expLo {
		return 0
	}
	return math.Exp(float64(min(t, expHi)))
}

// expOK reports whether got is e^t within 2e-7 relative (exactly 0 where
// the result is 0; NaN for NaN).
func expOK(t, got float32) bool {
	if t != t {
		return got != got
	}
	want := expRef(t)
	if want == 0 {
		return got == 0
	}
	// Results just above the normal range may lose bits to gradual underflow.
	if want < 2e-38 {
		return math.Abs(float64(got)-want) <= 2e-45+2e-7*want
	}
	return math.Abs(float64(got)-want) <= 2e-7*want
}

func TestExp(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	worst := 0.0
	check := func(x float32) {
		got := Exp(x)
		if !expOK(x, got) {
			t.Fatalf("Exp(%v) = %v, want %v", x, got, expRef(x))
		}
		if w := expRef(x); w > 2e-38 {
			worst = max(worst, math.Abs(float64(got)-w)/w)
		}
	}
	for i := range 2000000 {
		x := float32(r.Float64()*176 - 88)
		if i < 100000 {
			x = float32(r.Float64()*2 - 1)
		}
		check(x)
	}
	for _, x := range []float32{0, float32(math.Copysign(0, -1)), 1, -1, 88, 87.9, -87, -87.33, expLo, -87.34, -88, -100, -1e30,
		negInf, float32(math.Inf(1)), 1e30, 1e-30, -1e-30, math.SmallestNonzeroFloat32, 0.5 * math.Ln2, -0.5 * math.Ln2} {
		check(x)
	}
	if Exp(negInf) != 0 || Exp(-88) != 0 {
		t.Error("Exp(-Inf) or Exp(-88) is not exactly 0")
	}
	if Exp(0) != 1 {
		t.Errorf("Exp(0) = %v, want exactly 1", Exp(0))
	}
	if got := Exp(float32(math.NaN())); got == got {
		t.Error("Exp(NaN) is not NaN")
	}
	t.Logf("worst relative error %.3g", worst)
}

// randRow mixes ordinary scores, large negative ones, -Inf (masked) and
// the exact max.
func randRow(r *rand.Rand, n int) ([]float32, float32) {
	x := make([]float32, n)
	m := negInf
	for i := range x {
		switch r.IntN(10) {
		case 0:
			x[i] = negInf
		case 1:
			x[i] = float32(-r.Float64() * 200)
		default:
			x[i] = float32(r.NormFloat64() * 8)
		}
		m = max(m, x[i])
	}
	return x, m
}

func TestExpSum(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, im := range flashImpls() {
		for n := range 100 {
			x, m := randRow(r, n)
			if n%7 == 3 {
				m += float32(r.Float64()) // any m, not only the max
			}
			checkExpSum(t, im, x, m)
		}
		// Edges: all masked (m = -Inf), NaN, +Inf saturating, -0.
		inf := make([]float32, 37)
		for i := range inf {
			inf[i] = negInf
		}
		checkExpSum(t, im, inf, negInf)
		checkExpSum(t, im, []float32{0, float32(math.Copysign(0, -1)), -88, 1, 100, negInf, float32(math.Inf(1)), 3,
			-87.3, -87.4, 88, 87, 5, 6, 7, 8, 9}, 0)
		nan := []float32{1, 2, float32(math.NaN()), 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18}
		x := append([]float32(nil), nan...)
		if s := im.expSum(x, 18); s == s || x[2] == x[2] || x[0] != Exp(1-18) && !expOK(1-18, x[0]) {
			t.Errorf("%s: NaN input: sum %v, x %v", im.name, s, x)
		}
	}
}

func checkExpSum(t *testing.T, im flashImpl, x []float32, m float32) {
	t.Helper()
	orig := append([]float32(nil), x...)
	got := im.expSum(x, m)
	mm := m
	if math.IsInf(float64(m), -1) {
		mm = 0
	}
	var want float64
	for i, v := range orig {
		d := v - mm
		if !expOK(d, x[i]) {
			t.Fatalf("%s: ExpSum n=%d m=%v: x[%d]=%v: got %v, want %v", im.name, len(x), m, i, v, x[i], expRef(d))
		}
		want += expRef(d)
	}
	if want > math.MaxFloat32 {
		if !math.IsInf(float64(got), 1) && float64(got) < 3e38 {
			t.Errorf("%s: ExpSum sum %v, want huge", im.name, got)
		}
		return
	}
	if math.Abs(float64(got)-want) > 1e-6*want {
		t.Errorf("%s: ExpSum n=%d sum %v, want %v", im.name, len(x), got, want)
	}
}

// nnCase checks GemmNN of one shape against float64, with sentinels
// around the output block.
func nnCase(t testing.TB, r *rand.Rand, im flashImpl, R, N, K, ldd, lda, ldb int, acc bool) {
	t.Helper()
	a := make([]float32, max(0, (R-1)*lda+K))
	b := make([]float32, max(0, (K-1)*ldb+N))
	for i := range a {
		a[i] = float32(r.NormFloat64())
	}
	for i := range b {
		b[i] = float32(r.NormFloat64())
	}
	dst := make([]float32, R*ldd+3)
	d0 := make([]float32, len(dst))
	for i := range dst {
		dst[i] = sentinel
		if i%ldd < N && i < (R-1)*ldd+N {
			dst[i] = float32(r.NormFloat64())
		}
	}
	copy(d0, dst)
	im.gemmNN(dst, ldd, a, lda, b, ldb, R, N, K, acc)
	for i := range dst {
		rr, n := i/ldd, i%ldd
		if rr >= R || n >= N {
			if dst[i] != sentinel {
				t.Fatalf("%s R=%d N=%d K=%d: dst[%d] outside the block overwritten", im.name, R, N, K, i)
			}
			continue
		}
		var ref, mag float64
		if acc {
			ref, mag = float64(d0[i]), math.Abs(float64(d0[i]))
		}
		for k := range K {
			p := float64(a[rr*lda+k]) * float64(b[k*ldb+n])
			ref += p
			mag += math.Abs(p)
		}
		if d := math.Abs(float64(dst[i]) - ref); !(d <= 1e-5*mag+1e-30) {
			t.Fatalf("%s R=%d N=%d K=%d ldd=%d acc=%v: dst[%d,%d] = %v, want %v", im.name, R, N, K, ldd, acc, rr, n, dst[i], ref)
		}
	}
}

func TestGemmNN(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, im := range flashImpls() {
		for _, s := range [][3]int{{1, 1, 1}, {1, 16, 64}, {7, 16, 64}, {16, 112, 64}, {64, 112, 16}, {64, 128, 64},
			{13, 40, 5}, {17, 24, 3}, {3, 8, 0}, {20, 80, 33}, {1, 7, 9}, {5, 33, 17}, {64, 16, 1}, {33, 256, 7}} {
			R, N, K := s[0], s[1], s[2]
			for _, acc := range []bool{false, true} {
				nnCase(t, r, im, R, N, K, N+r.IntN(3), K+r.IntN(3), N+r.IntN(5), acc)
			}
		}
	}
}

// checkRowMax compares RowMax over x with a plain loop (no NaNs: their
// order is unspecified).
func checkRowMax(t testing.TB, im flashImpl, x []float32, m float32) {
	t.Helper()
	want := m
	for _, v := range x {
		want = max(want, v)
	}
	if got := im.rowMax(x, m); got != want {
		t.Fatalf("%s: rowMax(n=%d, m=%v) = %v, want %v", im.name, len(x), m, got, want)
	}
}

func TestRowMax(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, im := range flashImpls() {
		for _, n := range []int{0, 1, 3, 7, 8, 15, 16, 17, 32, 48, 64, 112, 128, 130} {
			for range 20 {
				x := make([]float32, n)
				for i := range x {
					switch r.IntN(6) {
					case 0:
						x[i] = negInf
					default:
						x[i] = float32(r.NormFloat64() * 5)
					}
				}
				// The max anywhere: every lane and the tail.
				if n > 0 && r.IntN(2) == 0 {
					x[r.IntN(n)] = 100
				}
				m := negInf
				if r.IntN(3) == 0 {
					m = float32(r.NormFloat64() * 5)
				}
				checkRowMax(t, im, x, m)
			}
		}
	}
}

func TestSiLUMul(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, im := range flashImpls() {
		for _, n := range []int{0, 1, 5, 8, 16, 23, 64, 100} {
			g := make([]float32, n)
			u := make([]float32, n)
			for i := range g {
				g[i] = float32(r.NormFloat64() * 6)
				u[i] = float32(r.NormFloat64())
				if i%11 == 5 {
					g[i] = float32(r.NormFloat64() * 100)
				}
			}
			dst := make([]float32, n+1)
			dst[n] = sentinel
			im.siluMul(dst[:n], g, u)
			for i := range n {
				gg := float64(g[i])
				want := gg / (1 + math.Exp(-gg)) * float64(u[i])
				// e^-g saturates at e^88 (g < -88 gives ~g·e^-88·u, not 0).
				if math.Abs(float64(dst[i])-want) > 1e-6*math.Abs(want)+1e-34 {
					t.Fatalf("%s: SiLUMul(%v, %v) = %v, want %v", im.name, g[i], u[i], dst[i], want)
				}
			}
			if dst[n] != sentinel {
				t.Fatalf("%s: SiLUMul wrote past n", im.name)
			}
		}
	}
}

func TestFlashBadShapesPanic(t *testing.T) {
	for i, f := range []func(){
		func() { GemmNN(make([]float32, 3), 2, make([]float32, 4), 2, make([]float32, 4), 2, 2, 2, 2, false) },
		func() { GemmNN(make([]float32, 4), 2, make([]float32, 3), 2, make([]float32, 4), 2, 2, 2, 2, false) },
		func() { GemmNN(make([]float32, 4), 2, make([]float32, 4), 2, make([]float32, 3), 2, 2, 2, 2, false) },
		func() { SiLUMul(make([]float32, 5), make([]float32, 4), make([]float32, 5)) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("case %d did not panic", i)
				}
			}()
			f()
		}()
	}
}

// FuzzFlash checks the flash kernels of every implementation on fuzzer
// shapes against float64.
func FuzzFlash(f *testing.F) {
	f.Add(uint64(1), uint8(7), uint8(16), uint8(64), uint8(0))
	f.Add(uint64(2), uint8(64), uint8(112), uint8(16), uint8(1))
	f.Add(uint64(3), uint8(1), uint8(1), uint8(1), uint8(2))
	f.Add(uint64(4), uint8(33), uint8(250), uint8(200), uint8(3))
	f.Fuzz(func(t *testing.T, seed uint64, r8, n8, k8, pad uint8) {
		R, N, K := 1+int(r8)%70, 1+int(n8)%200, int(k8)%130
		r := rand.New(rand.NewPCG(seed, 11))
		for _, im := range flashImpls() {
			nnCase(t, r, im, R, N, K, N+int(pad)%5, K+int(pad)%3, N+int(pad)%7, pad&1 == 1)
			x, m := randRow(r, N)
			checkRowMax(t, im, x, m)
			checkExpSum(t, im, x, m)
		}
	})
}

func BenchmarkExpSum(b *testing.B) {
	for _, im := range flashImpls() {
		b.Run(im.name, func(b *testing.B) {
			src := make([]float32, 1024)
			for i := range src {
				src[i] = float32(i%97) * -0.25
			}
			x := make([]float32, len(src))
			cpuLoop(b, len(x), "elem", func() {
				copy(x, src)
				im.expSum(x, 0)
			})
		})
	}
}

func BenchmarkGemmNN(b *testing.B) {
	// Attention's shapes: S of a block (112 query rows × 16 keys, k = head
	// dim 64) and O += P·V (112 rows × 64 dims, k = 16 keys), and a
	// decode step's 2 rows of Qwen3 (head dim 128).
	for _, im := range flashImpls() {
		for _, s := range [][3]int{{112, 16, 64}, {112, 64, 16}, {2, 16, 128}, {2, 128, 16}} {
			R, N, K := s[0], s[1], s[2]
			b.Run(fmt.Sprintf("%s/%dx%dx%d", im.name, R, N, K), func(b *testing.B) {
				a := make([]float32, R*K)
				bb := make([]float32, K*N)
				d := make([]float32, R*N)
				for i := range a {
					a[i] = 0.5
				}
				cpuLoop(b, 2*R*N*K, "flop", func() { im.gemmNN(d, N, a, K, bb, N, R, N, K, true) })
			})
		}
	}
}

func BenchmarkSiLUMul(b *testing.B) {
	// One token's MLP of Qwen2.5-0.5B (intermediate 4864).
	for _, im := range flashImpls() {
		b.Run(im.name, func(b *testing.B) {
			g := make([]float32, 4864)
			u := make([]float32, len(g))
			for i := range g {
				g[i] = float32(i%200)/20 - 5
				u[i] = 1
			}
			d := make([]float32, len(g))
			cpuLoop(b, len(d), "elem", func() { im.siluMul(d, g, u) })
		})
	}
}
