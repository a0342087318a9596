package ml

import "math"

// FP8 E4M3 ("e4m3fn", as torch.float8_e4m3fn and vLLM's fp8 store it): a
// sign, 4 exponent bits (bias 7) and 3 mantissa bits; no infinities, the
// largest finite value 448, NaN 0x7f/0xff. F8 weights hold one f32 scale
// per output row: w ≈ scale · value(q).

// F8Max is the largest finite E4M3 value.
const F8Max = 448

// F8Bits rounds f to the nearest E4M3 value (ties to even), saturating at
// ±F8Max as vLLM's fp8 quantization clamps.
func F8Bits(f float32) uint8 { return f8Bits(float64(f)) }

// f8Bits is F8Bits of a float64, rounded once.
func f8Bits(a float64) uint8 {
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
	if a < 0x1p-6 { // subnormal: multiples of 2^-9 (8 of them is the smallest normal, 0x08)
		return sign | uint8(math.RoundToEven(a/0x1p-9))
	}
	_, e := math.Frexp(a) // a = fr·2^e, fr in [0.5, 1)
	exp := e - 1          // a in [2^exp, 2^(exp+1))
	m := math.RoundToEven(math.Ldexp(a, 3-exp))
	if m == 16 {
		exp, m = exp+1, 8
	}
	return sign | uint8(exp+7)<<3 | uint8(m-8)
}

// F8Value widens an E4M3 value.
func F8Value(b uint8) float32 { return f8Table[b] }

var f8Table = func() (t [256]float32) {
	for i := range t {
		b := uint8(i)
		e, m := int(b>>3&15), float64(b&7)
		var v float64
		switch {
		case e == 15 && m == 7:
			v = math.NaN()
		case e == 0:
			v = math.Ldexp(m, -9)
		default:
			v = math.Ldexp(8+m, e-10)
		}
		if b&0x80 != 0 {
			v = -v
		}
		t[i] = float32(v)
	}
	return t
}()

// QuantizeF8Row quantizes row into q (same length) with one scale,
// max|row| / F8Max (0 for a zero row), and returns the scale.
func QuantizeF8Row(q []uint8, row []float32) float32 {
	m := MaxAbs(row)
	if m == 0 {
		clear(q)
		return 0
	}
	// Each value is rounded once, from float64: through float32 first, a
	// quotient just off a midpoint could land on it and round the other way.
	s := m / F8Max
	for i, v := range row {
		q[i] = f8Bits(float64(v) / s)
	}
	return float32(s)
}

// MaxAbs is the largest magnitude in row (the per-row quantizers' range).
func MaxAbs(row []float32) float64 {
	var m float64
	for _, v := range row {
		m = math.Max(m, math.Abs(float64(v)))
	}
	return m
}
