package ml

import (
	"math"
	"testing"
)

// TestF8RoundTrip: every finite E4M3 value encodes to itself, values
// between two neighbours round to the nearer (ties to the even mantissa),
// and out-of-range values saturate.
func TestF8RoundTrip(t *testing.T) {
	var finite []float32
	for i := range 256 {
		b := uint8(i)
		v := F8Value(b)
		if v != v {
			if b&0x7f != 0x7f {
				t.Errorf("%#x decodes to NaN", b)
			}
			continue
		}
		if got := F8Bits(v); got != b && !(v == 0 && got&0x7f == 0) {
			t.Errorf("%#x = %v encodes to %#x", b, v, got)
		}
		if b&0x80 == 0 {
			finite = append(finite, v)
		}
	}
	if len(finite) != 127 || finite[len(finite)-1] != 448 || finite[1] != 0x1p-9 {
		t.Fatalf("%d positive finite values up to %v, smallest %v", len(finite), finite[len(finite)-1], finite[1])
	}
	for i := 0; i+1 < len(finite); i++ {
		lo, hi := finite[i], finite[i+1]
		mid := (lo + hi) / 2
		want := lo
		if F8Bits(lo)&1 == 1 { // ties go to the even mantissa
			want = hi
		}
		if got := F8Value(F8Bits(mid)); got != want {
			t.Errorf("midpoint %v of %v and %v rounds to %v, want %v", mid, lo, hi, got, want)
		}
		if got := F8Value(F8Bits(lo + (hi-lo)/4)); got != lo {
			t.Errorf("%v rounds to %v, want %v", lo+(hi-lo)/4, got, lo)
		}
		if got := F8Value(F8Bits(-(hi - (hi-lo)/4))); got != -hi {
			t.Errorf("%v rounds to %v, want %v", -(hi - (hi-lo)/4), got, -hi)
		}
	}
	for _, v := range []float32{448, 449, 1e9, float32(math.Inf(1))} {
		if got := F8Value(F8Bits(v)); got != 448 {
			t.Errorf("%v saturates to %v, want 448", v, got)
		}
		if got := F8Value(F8Bits(-v)); got != -448 {
			t.Errorf("%v saturates to %v, want -448", -v, got)
		}
	}
}

// TestQuantizeF8Row: the row's largest magnitude maps to ±448 and every
// value is within half a quantum (relative 2^-4) of the original.
func TestQuantizeF8Row(t *testing.T) {
	row := []float32{0.5, -2, 0.001, 1.3, 0, -0.75}
	q := make([]uint8, len(row))
	s := QuantizeF8Row(q, row)
	if s != 2.0/448 {
		t.Fatalf("scale %v, want %v", s, 2.0/448)
	}
	for i, v := range row {
		got := s * F8Value(q[i])
		if math.Abs(float64(got-v)) > math.Abs(float64(v))/16+float64(s)*0x1p-9 {
			t.Errorf("%v quantized to %v", v, got)
		}
	}
	if F8Value(q[1]) != -448 {
		t.Errorf("the largest magnitude quantizes to %v", F8Value(q[1]))
	}
}

// BenchmarkQuantizeF8Row: one 4,096-wide row of random values (the load
// path quantizes every matmul weight of --quantization fp8 this way).
func BenchmarkQuantizeF8Row(b *testing.B) {
	row := make([]float32, 4096)
	for i := range row {
		row[i] = float32(math.Sin(float64(i)*0.37)) * 0.02
	}
	q := make([]uint8, len(row))
	b.SetBytes(int64(len(row)))
	for b.Loop() {
		QuantizeF8Row(q, row)
	}
}

// refF8Bits is the plain statement of f8Bits (frexp and ldexp), which the
// bit-level rounding must match on every input.
func refF8Bits(a float64) uint8 {
	if a != a {
		return 0x7f
	}
	var sign uint8
	if math.Signbit(a) {
		sign, a = 0x80, -a
	}
	if a >= F8Max {
		return sign | 0x7e
	}
	if a < 0x1p-6 {
		return sign | uint8(math.RoundToEven(a/0x1p-9))
	}
	_, e := math.Frexp(a)
	exp := e - 1
	m := math.RoundToEven(math.Ldexp(a, 3-exp))
	if m == 16 {
		exp, m = exp+1, 8
	}
	return sign | uint8(exp+7)<<3 | uint8(m-8)
}

// TestF8BitsMatchesReference: every E4M3 value, its neighbours in float64
// and the midpoints between values with theirs, and a sweep of float32 bit
// patterns over the whole range round as the reference does.
func TestF8BitsMatchesReference(t *testing.T) {
	var in []float64
	for i := range 256 {
		v := float64(F8Value(uint8(i)))
		w := float64(F8Value(uint8(i + 1)))
		in = append(in, v, math.Nextafter(v, 0), math.Nextafter(v, 1000))
		if mid := (v + w) / 2; mid == mid {
			in = append(in, mid, math.Nextafter(mid, 0), math.Nextafter(mid, 1000))
		}
	}
	in = append(in, 0, math.Inf(1), math.Inf(-1), math.NaN(), 447.99, 464, 480, 1e-30, 0x1p-6, 0x1p-10)
	for u := uint64(0); u < 1<<32; u += 1<<32/2_000_003 + 1 {
		in = append(in, float64(math.Float32frombits(uint32(u))))
	}
	for _, a := range in {
		for _, v := range []float64{a, -a} {
			if got, want := f8Bits(v), refF8Bits(v); got != want {
				t.Errorf("f8Bits(%v) = %#x, want %#x", v, got, want)
			}
		}
	}
}
