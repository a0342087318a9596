package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// The float64 reference every kernel is checked against.

type wkind int

const (
	kF32 wkind = iota
	kBF16
	kF16
	kI8
)

func (k wkind) String() string { return [...]string{"f32", "bf16", "f16", "i8"}[k] }

// gemmCase holds one random problem; w64 is the exact value of each stored weight.
type gemmCase struct {
	T, N, K, ldd int
	x            []float32
	wf           []float32
	wh           []uint16
	wi           []int8
	scales       []float32
	w64          []float64 // exact weight values (scale included for int8)
}

func newGemmCase(r *rand.Rand, kind wkind, T, N, K, ldd int) *gemmCase {
	c := &gemmCase{T: T, N: N, K: K, ldd: ldd}
	c.x = make([]float32, T*K)
	for i := range c.x {
		c.x[i] = float32(r.NormFloat64())
	}
	c.w64 = make([]float64, N*K)
	switch kind {
	case kF32:
		c.wf = make([]float32, N*K)
		for i := range c.wf {
			c.wf[i] = float32(r.NormFloat64() * 0.1)
			c.w64[i] = float64(c.wf[i])
		}
	case kBF16:
		c.wh = make([]uint16, N*K)
		for i := range c.wh {
			c.wh[i] = toBF16(float32(r.NormFloat64() * 0.1))
			c.w64[i] = float64(bf16(c.wh[i]))
		}
	case kF16:
		c.wh = make([]uint16, N*K)
		for i := range c.wh {
			c.wh[i] = toF16(float32(r.NormFloat64() * 0.1))
			c.w64[i] = float64(f16(c.wh[i]))
		}
	case kI8:
		c.wi = make([]int8, N*K)
		c.scales = make([]float32, N)
		for n := range c.scales {
			c.scales[n] = float32(r.Float64()*0.01 + 1e-4)
		}
		for i := range c.wi {
			c.wi[i] = int8(r.IntN(256) - 128)
			c.w64[i] = float64(c.wi[i]) * float64(c.scales[i/K])
		}
	}
	return c
}

const sentinel = -12345.5

func (c *gemmCase) run(im impl, kind wkind) []float32 {
	dst := make([]float32, (c.T-1)*c.ldd+c.N+7) // slack past the end must stay untouched
	for i := range dst {
		dst[i] = sentinel
	}
	d := dst[:(c.T-1)*c.ldd+c.N]
	switch kind {
	case kF32:
		im.gemmF32(d, c.ldd, c.x, c.wf, c.T, c.N, c.K)
	case kBF16:
		im.gemmBF16(d, c.ldd, c.x, c.wh, c.T, c.N, c.K)
	case kF16:
		im.gemmF16(d, c.ldd, c.x, c.wh, c.T, c.N, c.K)
	case kI8:
		im.gemmI8(d, c.ldd, c.x, c.wi, c.scales, c.T, c.N, c.K)
	}
	return dst
}

// check compares against the float64 reference with a tolerance relative
// to sum|x*w| (the natural scale of float32 rounding error in a dot product).
func (c *gemmCase) check(t testing.TB, got []float32) {
	t.Helper()
	bad := 0
	for tt := 0; tt < c.T; tt++ {
		for n := 0; n < c.ldd; n++ {
			i := tt*c.ldd + n
			if i >= len(got) {
				break
			}
			if n >= c.N {
				if got[i] != sentinel {
					t.Errorf("T=%d N=%d K=%d ldd=%d: dst[%d] (t=%d, n=%d >= N) overwritten: %v", c.T, c.N, c.K, c.ldd, i, tt, n, got[i])
					bad++
				}
				continue
			}
			var ref, mag float64
			for k := 0; k < c.K; k++ {
				p := float64(c.x[tt*c.K+k]) * c.w64[n*c.K+k]
				ref += p
				mag += math.Abs(p)
			}
			if d := math.Abs(float64(got[i]) - ref); !(d <= 1e-5*mag+1e-30) {
				t.Errorf("T=%d N=%d K=%d ldd=%d: dst[t=%d,n=%d] = %v, want %v (diff %.3g, scale %.3g)", c.T, c.N, c.K, c.ldd, tt, n, got[i], ref, d, mag)
				bad++
			}
			if bad > 10 {
				t.FailNow()
			}
		}
	}
	for i := (c.T-1)*c.ldd + c.N; i < len(got); i++ {
		if got[i] != sentinel {
			t.Fatalf("T=%d N=%d K=%d ldd=%d: wrote past the end of dst at %d", c.T, c.N, c.K, c.ldd, i)
		}
	}
}

var gemmShapes = [][4]int{ // T, N, K, ldd
	{1, 1, 1, 1}, {1, 1, 16, 1}, {1, 4, 32, 4}, {1, 7, 17, 9}, {2, 3, 5, 3},
	{3, 5, 31, 8}, {4, 4, 16, 4}, {4, 8, 64, 8}, {5, 9, 33, 12}, {7, 13, 100, 13},
	{8, 17, 129, 20}, {1, 37, 896, 37}, {9, 6, 257, 6}, {4, 4, 1, 5}, {13, 11, 48, 11},
	{128, 8, 96, 9}, {3, 300, 40, 301}, {6, 3, 1300, 3}, {1, 3, 2100, 3}, {17, 33, 2100, 40},
	{9, 261, 1100, 263}, {5, 130, 2050, 130}, {1, 1000, 64, 1000},
}

func TestGemm(t *testing.T) {
	for _, im := range impls() {
		for _, kind := range []wkind{kF32, kBF16, kF16, kI8} {
			t.Run(fmt.Sprintf("%s/%s", im.name, kind), func(t *testing.T) {
				r := rand.New(rand.NewPCG(1, uint64(kind)))
				for _, s := range gemmShapes {
					c := newGemmCase(r, kind, s[0], s[1], s[2], s[3])
					c.check(t, c.run(im, kind))
				}
			})
		}
	}
}

// TestGemmSpecials checks that infinities and NaNs in the weights propagate
// as IEEE arithmetic would (no lane masking bugs), and zero-length K gives 0.
func TestGemmSpecials(t *testing.T) {
	for _, im := range impls() {
		x := make([]float32, 3*40)
		for i := range x {
			x[i] = 1
		}
		w := make([]uint16, 5*40)
		w[2*40+39] = 0x7f80 // +Inf in the last (tail) element of row 2
		w[4*40+3] = 0x7fc0  // NaN in row 4
		dst := make([]float32, 3*5)
		im.gemmBF16(dst, 5, x, w, 3, 5, 40)
		for tt := 0; tt < 3; tt++ {
			for n := 0; n < 5; n++ {
				v := dst[tt*5+n]
				switch n {
				case 2:
					if !math.IsInf(float64(v), 1) {
						t.Errorf("%s: row 2 = %v, want +Inf", im.name, v)
					}
				case 4:
					if !math.IsNaN(float64(v)) {
						t.Errorf("%s: row 4 = %v, want NaN", im.name, v)
					}
				default:
					if v != 0 {
						t.Errorf("%s: row %d = %v, want 0", im.name, n, v)
					}
				}
			}
		}
		d0 := []float32{7, 7}
		im.gemmF32(d0, 1, nil, nil, 2, 1, 0)
		if d0[0] != 0 || d0[1] != 0 {
			t.Errorf("%s: K=0 gave %v, want zeros", im.name, d0)
		}
	}
}

func TestGemmBadShapesPanic(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("short w did not panic")
		}
	}()
	GemmBF16(make([]float32, 4), 4, make([]float32, 8), make([]uint16, 7), 1, 4, 2)
}

func TestDotAxpy(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, im := range impls() {
		for _, n := range []int{0, 1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 896, 1001} {
			a := make([]float32, n)
			b := make([]float32, n+3)
			for i := range b {
				if i < n {
					a[i] = float32(r.NormFloat64())
				}
				b[i] = float32(r.NormFloat64())
			}
			var ref, mag float64
			for i := range a {
				ref += float64(a[i]) * float64(b[i])
				mag += math.Abs(float64(a[i]) * float64(b[i]))
			}
			if got := im.dot(a, b[:n]); math.Abs(float64(got)-ref) > 1e-5*mag+1e-30 {
				t.Errorf("%s: dot n=%d = %v, want %v", im.name, n, got, ref)
			}
			y := append([]float32(nil), b...)
			const alpha = 0.37
			im.axpy(alpha, a, y[:n])
			for i := range y {
				want := b[i]
				if i < n {
					want = b[i] + alpha*a[i] // one rounding either way
				}
				if d := math.Abs(float64(y[i] - want)); d > 1e-6*(math.Abs(float64(want))+1) {
					t.Errorf("%s: axpy n=%d y[%d] = %v, want %v", im.name, n, i, y[i], want)
					break
				}
			}
		}
	}
}

// TestHalfToF32 checks every 16-bit pattern against the independent
// float64 definition of the formats.
func TestHalfToF32(t *testing.T) {
	src := make([]uint16, 1<<16)
	for i := range src {
		src[i] = uint16(i)
	}
	for _, im := range impls() {
		dst := make([]float32, len(src)+1)
		dst[len(src)] = sentinel
		im.bf16ToF32(dst[:len(src)], src)
		for i, h := range src {
			if want := math.Float32frombits(uint32(h) << 16); math.Float32bits(dst[i]) != math.Float32bits(want) {
				t.Fatalf("%s: bf16 %#04x -> %v, want %v", im.name, h, dst[i], want)
			}
		}
		im.f16ToF32(dst[:len(src)], src)
		for i, h := range src {
			want := halfRef(h)
			if math.IsNaN(want) {
				if !math.IsNaN(float64(dst[i])) || math.Float32bits(dst[i])>>13&0x1ff != uint32(h)&0x1ff || math.Float32bits(dst[i])>>31 != uint32(h)>>15 {
					t.Fatalf("%s: f16 %#04x -> %#08x, want quiet NaN with same sign/payload", im.name, h, math.Float32bits(dst[i]))
				}
				continue
			}
			if float64(dst[i]) != want || math.Signbit(float64(dst[i])) != math.Signbit(want) {
				t.Fatalf("%s: f16 %#04x -> %v, want %v", im.name, h, dst[i], want)
			}
		}
		if dst[len(src)] != sentinel {
			t.Fatalf("%s: wrote past end", im.name)
		}
	}
}

func halfRef(h uint16) float64 {
	s := 1.0
	if h&0x8000 != 0 {
		s = -1
	}
	e := int(h>>10) & 0x1f
	m := float64(h & 0x3ff)
	switch e {
	case 0x1f:
		if m != 0 {
			return math.NaN()
		}
		return math.Inf(int(s))
	case 0:
		return s * m * math.Pow(2, -24)
	}
	return s * (1 + m/1024) * math.Pow(2, float64(e-15))
}

// roundRef rounds v to the nearest representable value among the finite
// values of a format (decoded by dec over all 16-bit patterns), ties to the
// even pattern, and returns the pattern; overflow is handled by the caller.
func nearestRef(v float64, dec func(uint16) float64, maxFinite uint16) uint16 {
	// Binary search over the positive patterns, which are monotone.
	a := math.Abs(v)
	lo, hi := uint16(0), maxFinite
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		if dec(mid) <= a {
			lo = mid
		} else {
			hi = mid
		}
	}
	best := lo
	if dl, dh := a-dec(lo), dec(hi)-a; dh < dl || dh == dl && hi&1 == 0 {
		best = hi
	}
	if math.Signbit(v) {
		best |= 0x8000
	}
	return best
}

func TestF32ToHalf(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var src []float32
	for i := 0; i < 1<<16; i++ { // every half value and the midpoints around it
		h := halfRef(uint16(i))
		if !math.IsNaN(h) {
			src = append(src, float32(h), math.Nextafter32(float32(h), 0), math.Nextafter32(float32(h), float32(math.Inf(1))))
		}
		b := float64(math.Float32frombits(uint32(i) << 16))
		src = append(src, float32(b), math.Float32frombits(uint32(i)<<16|0x8000), math.Float32frombits(uint32(i)<<16|0x7fff), math.Float32frombits(uint32(i)<<16|0x8001))
	}
	for i := 0; i < 1<<16; i++ { // exact f16 midpoints
		a, b := halfRef(uint16(i)), halfRef(uint16(i+1))
		if i&0x7c00 != 0x7c00 && (i+1)&0x7c00 != 0x7c00 && i&0x8000 == 0 {
			src = append(src, float32((a+b)/2))
		}
	}
	for i := 0; i < 100000; i++ {
		src = append(src, math.Float32frombits(r.Uint32()))
	}
	src = append(src, 65504, 65519.99, 65520, 1e10, float32(math.Inf(-1)), float32(math.NaN()), 5.960464477539063e-08/2, 5.960464477539063e-08*0.75)
	for _, im := range impls() {
		dst := make([]uint16, len(src))
		im.f32ToBF16(dst, src)
		for i, f := range src {
			if got := dst[i]; !bf16OK(f, got) {
				t.Fatalf("%s: bf16(%v=%#08x) = %#04x", im.name, f, math.Float32bits(f), got)
			}
		}
		im.f32ToF16(dst, src)
		for i, f := range src {
			if got := dst[i]; !f16OK(f, got) {
				t.Fatalf("%s: f16(%v=%#08x) = %#04x", im.name, f, math.Float32bits(f), got)
			}
		}
	}
}

func bf16OK(f float32, got uint16) bool {
	if math.IsNaN(float64(f)) {
		return got&0x7f80 == 0x7f80 && got&0x7f != 0 && got>>15 == uint16(math.Float32bits(f)>>31)
	}
	if math.IsInf(float64(f), 0) {
		return uint32(got)<<16 == math.Float32bits(f)
	}
	dec := func(h uint16) float64 { return float64(math.Float32frombits(uint32(h) << 16)) }
	if math.Abs(float64(f)) > dec(0x7f7f) {
		// Beyond the largest finite bf16: rounds to it or to Inf by RNE on bits.
		if (math.Float32bits(f)&0x7fffffff)+0x7fff+1 >= 0x7f800000 {
			return got&0x7fff == 0x7f80
		}
		return got&0x7fff == 0x7f7f
	}
	return got == nearestRef(float64(f), dec, 0x7f80)
}

func f16OK(f float32, got uint16) bool {
	if math.IsNaN(float64(f)) {
		return got&0x7c00 == 0x7c00 && got&0x3ff != 0
	}
	a := math.Abs(float64(f))
	if a >= 65520 { // 65520 is the midpoint between 65504 and 2^16: ties to even = Inf
		return got&0x7fff == 0x7c00 && got>>15 == uint16(math.Float32bits(f)>>31)
	}
	want := nearestRef(float64(f), halfRef, 0x7c00)
	return got == want
}

func float32Bits(f float32) uint32     { return math.Float32bits(f) }
func float32FromBits(b uint32) float32 { return math.Float32frombits(b) }
func isNaN32(f float32) bool           { return f != f }

// TestF8ToF32: every implementation widens every FP8 code (at every offset
// of a vector, with tails) to the value E4M3 defines, times the scale.
func TestF8ToF32(t *testing.T) {
	var src []uint8
	for range 3 {
		for c := range 256 {
			src = append(src, uint8(c))
		}
	}
	for _, im := range impls() {
		for _, n := range []int{0, 1, 15, 16, 17, 255, 256, len(src)} {
			for _, off := range []int{0, 3} {
				if off+n > len(src) {
					continue
				}
				in := src[off : off+n]
				got := make([]float32, n)
				im.f8ToF32(got, in, 0.5)
				for i, q := range in {
					e, m := int(q>>3&15), float64(q&7)
					want := math.Ldexp(m, -9)
					if e > 0 {
						want = math.Ldexp(8+m, e-10)
					}
					if q&0x80 != 0 {
						want = -want
					}
					if q&0x7f == 0x7f {
						continue // NaN: not kept
					}
					if float64(got[i]) != 0.5*want {
						t.Fatalf("%s: code %#x gives %v, want %v", im.name, q, got[i], 0.5*want)
					}
				}
			}
		}
	}
}

// TestMatVecF8: every implementation's FP8 matvec equals the float64 sum of
// the widened weights times x, on shapes with row counts that are and are
// not multiples of 4 and widths that are and are not multiples of 16.
func TestMatVecF8(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 9))
	for _, im := range impls() {
		for _, sh := range [][2]int{{4, 16}, {8, 64}, {7, 48}, {13, 896}, {4, 17}, {1, 1}, {33, 160}} {
			N, K := sh[0], sh[1]
			w := make([]uint8, N*K)
			for i := range w {
				w[i] = uint8(r.IntN(256))
				if w[i]&0x7f == 0x7f {
					w[i] = 0x7e
				}
			}
			x := make([]float32, K)
			for i := range x {
				x[i] = float32(r.NormFloat64())
			}
			scales := make([]float32, N)
			for i := range scales {
				scales[i] = 0.001 * float32(1+i)
			}
			dst := make([]float32, N)
			im.matvecF8(dst, x, w, scales, N, K)
			for row := range N {
				var want, mag float64
				for i := range K {
					p := float64(f8Values[w[row*K+i]]) * float64(x[i])
					want += p
					mag += math.Abs(p)
				}
				want *= float64(scales[row])
				mag *= float64(scales[row])
				if math.Abs(float64(dst[row])-want) > 1e-5*mag+1e-30 {
					t.Fatalf("%s %dx%d row %d: %v, want %v", im.name, N, K, row, dst[row], want)
				}
			}
		}
	}
}
