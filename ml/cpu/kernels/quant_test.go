package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// q8Case is one random int8×int8 problem: x (T rows of K) is quantized
// once; rows [t0, t1) are multiplied with N int8 weight rows.
type q8Case struct {
	T, N, K, ldd, t0, t1 int
	x                    []float32
	w                    []int8
	scales               []float32
	a                    Q8Acts
}

func newQ8Case(r *rand.Rand, T, N, K, ldd, t0, t1 int) *q8Case {
	c := &q8Case{T: T, N: N, K: K, ldd: ldd, t0: t0, t1: t1}
	c.x = make([]float32, T*K)
	for i := range c.x {
		c.x[i] = float32(r.NormFloat64())
		if r.IntN(50) == 0 {
			c.x[i] *= 30 // outliers, as activations have
		}
	}
	c.w = make([]int8, N*K)
	for i := range c.w {
		c.w[i] = int8(r.IntN(255) - 127)
	}
	c.scales = make([]float32, N)
	for n := range c.scales {
		c.scales[n] = float32(r.Float64()*0.01 + 1e-4)
	}
	c.a.Quantize(c.x, T, K)
	return c
}

func (c *q8Case) run(im impl) []float32 {
	T := c.t1 - c.t0
	dst := make([]float32, max(0, (T-1)*c.ldd+c.N)+7) // slack past the end must stay untouched
	for i := range dst {
		dst[i] = sentinel
	}
	if T > 0 {
		im.gemmI8Q8(dst[:(T-1)*c.ldd+c.N], c.ldd, &c.a, c.t0, c.t1, c.w, c.scales, c.N)
	}
	return dst
}

// check compares got with the exact product of the quantized operands
// (float64 of the block scales times exact integer sums), within a
// tolerance relative to Σ|d·q·w|: float32 rounding only.
func (c *q8Case) check(t testing.TB, name string, got []float32) {
	t.Helper()
	K := c.K
	nb := (K + q8Block - 1) / q8Block
	bad := 0
	for tt := c.t0; tt < c.t1; tt++ {
		q := c.a.q[tt*c.a.ld:]
		d := c.a.scales[tt*nb:]
		for n := 0; n < c.ldd; n++ {
			i := (tt-c.t0)*c.ldd + n
			if n >= c.N {
				if i < len(got) && got[i] != sentinel {
					t.Errorf("%s %v: dst[t=%d, n=%d >= N] overwritten: %v", name, c.shape(), tt, n, got[i])
					bad++
				}
				continue
			}
			var ref, mag float64
			for b := range nb {
				var s int64
				var m int64
				for k := b * q8Block; k < min(K, (b+1)*q8Block); k++ {
					p := int64(q[k]) * int64(c.w[n*K+k])
					s += p
					m += max(p, -p)
				}
				ref += float64(d[b]) * float64(s)
				mag += float64(d[b]) * float64(m)
			}
			ref *= float64(c.scales[n])
			// The SIMD tiles also carry the +128 offset of the weights, which
			// scales their rounding error by up to ~3.
			mag *= 4 * float64(c.scales[n])
			if diff := math.Abs(float64(got[i]) - ref); !(diff <= 1e-5*mag+1e-30) {
				t.Errorf("%s %v: dst[t=%d,n=%d] = %v, want %v (diff %.3g, scale %.3g)", name, c.shape(), tt, n, got[i], ref, diff, mag)
				bad++
			}
			if bad > 10 {
				t.FailNow()
			}
		}
	}
	for i := max(0, (c.t1-c.t0-1)*c.ldd+c.N); i < len(got); i++ {
		if got[i] != sentinel {
			t.Fatalf("%s %v: wrote past the end of dst at %d", name, c.shape(), i)
		}
	}
}

func (c *q8Case) shape() string {
	return fmt.Sprintf("T=%d rows [%d,%d) N=%d K=%d ldd=%d", c.T, c.t0, c.t1, c.N, c.K, c.ldd)
}

var q8Shapes = [][6]int{ // T, N, K, ldd, t0, t1
	{1, 1, 1, 1, 0, 1}, {1, 1, 64, 1, 0, 1}, {1, 8, 64, 8, 0, 1}, {1, 9, 65, 9, 0, 1},
	{1, 37, 896, 37, 0, 1}, {2, 3, 5, 3, 0, 2}, {3, 5, 31, 8, 0, 3}, {4, 4, 64, 4, 0, 4},
	{4, 8, 128, 8, 0, 4}, {5, 9, 33, 12, 1, 5}, {7, 13, 100, 13, 0, 7}, {8, 17, 129, 20, 2, 8},
	{9, 6, 257, 6, 0, 9}, {13, 11, 48, 11, 0, 13}, {128, 8, 96, 9, 5, 128}, {3, 300, 160, 301, 0, 3},
	{6, 3, 1300, 3, 0, 6}, {1, 3, 2100, 3, 0, 1}, {17, 33, 2112, 40, 0, 17}, {9, 261, 1100, 263, 0, 9},
	{6, 20, 4096 + 448, 20, 0, 6}, {5, 130, 8200, 130, 1, 5}, {1, 1000, 64, 1000, 0, 1}, {4, 3, 0, 3, 0, 4},
}

func TestGemmI8Q8(t *testing.T) {
	for _, im := range impls() {
		t.Run(im.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 8))
			for _, s := range q8Shapes {
				c := newQ8Case(r, s[0], s[1], s[2], s[3], s[4], s[5])
				c.check(t, im.name, c.run(im))
			}
		})
	}
}

// FuzzGemmI8Q8 checks every implementation against the exact product on
// bounded random shapes (tails in T, N and K, ldd > N, a row sub-range).
func FuzzGemmI8Q8(f *testing.F) {
	f.Add(uint64(1), uint8(1), uint8(1), uint16(1), uint8(0), uint8(0))
	f.Add(uint64(2), uint8(4), uint8(8), uint16(64), uint8(3), uint8(0))
	f.Add(uint64(3), uint8(5), uint8(9), uint16(127), uint8(1), uint8(2))
	f.Add(uint64(4), uint8(13), uint8(7), uint16(1000), uint8(2), uint8(5))
	f.Add(uint64(5), uint8(1), uint8(33), uint16(896), uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, seed uint64, t8, n8 uint8, k16 uint16, pad, skip uint8) {
		T, N, K := 1+int(t8)%24, 1+int(n8)%48, int(k16)%1500
		t0 := int(skip) % T
		r := rand.New(rand.NewPCG(seed, 9))
		c := newQ8Case(r, T, N, K, N+int(pad)%5, t0, T)
		for _, im := range impls() {
			c.check(t, im.name, c.run(im))
		}
	})
}

// TestGemmI8Q8Random runs the fuzz body on a fixed set of random inputs, so
// plain go test covers more than the seed corpus.
func TestGemmI8Q8Random(t *testing.T) {
	r := rand.New(rand.NewPCG(42, 43))
	for range 200 {
		T, N := 1+r.IntN(12), 1+r.IntN(40)
		K := r.IntN(700)
		c := newQ8Case(r, T, N, K, N+r.IntN(4), r.IntN(T), T)
		for _, im := range impls() {
			c.check(t, im.name, c.run(im))
		}
	}
}

// TestQuantizeRows: every value is within half a step of its block's scale
// d = max|x|/127, the lane scales repeat the block scales over whole steps,
// padding is zero, and corr is 128·Σ d·q over whole steps.
func TestQuantizeRows(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, K := range []int{1, 31, 32, 33, 64, 65, 100, 128, 896} {
		T := 3
		x := make([]float32, T*K)
		for i := range x {
			x[i] = float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(5)-2)))
		}
		x[1] = 0 // a zero within a block
		var a Q8Acts
		a.Reset(T, K)
		a.QuantizeRows(x, 1, T)
		a.QuantizeRows(x, 0, 1)
		nb := (K + q8Block - 1) / q8Block
		kmain := K &^ (q8Step - 1)
		for tt := range T {
			var corr float64
			for b := range nb {
				d := a.scales[tt*nb+b]
				var amax float64
				for k := b * q8Block; k < min(K, (b+1)*q8Block); k++ {
					amax = math.Max(amax, math.Abs(float64(x[tt*K+k])))
				}
				if want := float32(amax) / 127; d != want {
					t.Errorf("K=%d row %d block %d: scale %v, want %v", K, tt, b, d, want)
				}
				for k := b * q8Block; k < min(K, (b+1)*q8Block); k++ {
					q := a.q[tt*a.ld+k]
					if e := math.Abs(float64(x[tt*K+k]) - float64(d)*float64(q)); e > 0.5001*float64(d) {
						t.Errorf("K=%d row %d col %d: %v quantized to %d×%v", K, tt, k, x[tt*K+k], q, d)
					}
					if k < kmain {
						corr += float64(d) * float64(q)
						if l := a.lanes[tt*a.ld/4+k/4]; l != d {
							t.Errorf("K=%d row %d col %d: lane scale %v, want %v", K, tt, k, l, d)
						}
					}
				}
			}
			for k := K; k < a.ld; k++ {
				if a.q[tt*a.ld+k] != 0 {
					t.Errorf("K=%d row %d: padding at %d is %d", K, tt, k, a.q[tt*a.ld+k])
				}
			}
			if got := a.corr[tt]; math.Abs(float64(got)-128*corr) > 1e-5*math.Abs(128*corr)+1e-30 {
				t.Errorf("K=%d row %d: corr %v, want %v", K, tt, got, 128*corr)
			}
		}
	}
}

// TestQuantizeQ8Impls: every implementation's block quantizer matches the
// portable one bit for bit (so GemmI8Q8's result does not depend on which
// quantized it), zeros, ties and tiny values included.
func TestQuantizeQ8Impls(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	const nblocks = 40
	x := make([]float32, nblocks*q8Block)
	for i := range x {
		x[i] = float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(9)-4)))
	}
	clear(x[3*q8Block : 4*q8Block]) // an all-zero block
	for i := range q8Block {        // exact ties: amax 127 gives d = 1
		x[5*q8Block+i] = float32(i) - 15.5
	}
	x[5*q8Block] = 127
	x[7*q8Block+2] = 1e-38 // subnormal range
	type out struct {
		q             []int8
		scales, lanes []float32
		corr          float64
	}
	run := func(f func(q []int8, scales, lanes, x []float32, nblocks int) float64) out {
		o := out{make([]int8, len(x)), make([]float32, nblocks), make([]float32, len(x)/4), 0}
		o.corr = f(o.q, o.scales, o.lanes, x, nblocks)
		return o
	}
	want := run(quantizeQ8Generic)
	for _, im := range impls() {
		got := run(im.quantizeQ8)
		for i := range want.q {
			if got.q[i] != want.q[i] {
				t.Fatalf("%s: q[%d] = %d, want %d (x %v, d %v)", im.name, i, got.q[i], want.q[i], x[i], want.scales[i/q8Block])
			}
		}
		for i := range want.scales {
			if math.Float32bits(got.scales[i]) != math.Float32bits(want.scales[i]) {
				t.Fatalf("%s: scale[%d] = %v, want %v", im.name, i, got.scales[i], want.scales[i])
			}
		}
		for i := range want.lanes {
			if got.lanes[i] != want.lanes[i] {
				t.Fatalf("%s: lanes[%d] = %v, want %v", im.name, i, got.lanes[i], want.lanes[i])
			}
		}
		if got.corr != want.corr {
			t.Errorf("%s: Σ d·Σq = %v, want %v", im.name, got.corr, want.corr)
		}
	}
}
