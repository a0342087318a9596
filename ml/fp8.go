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

// f8Bits is F8Bits of a float64, rounded once, on the bits (f8Normal):
// loading --quantization fp8 runs it on every weight.
func f8Bits(a float64) uint8 {
	if a != a {
		return 0x7f
	}
	bits := math.Float64bits(a)
	sign := uint8(bits>>56) & 0x80
	bits &^= 1 << 63
	a = math.Float64frombits(bits)
	if a >= F8Max {
		return sign | 0x7e
	}
	if a < 0x1p-6 { // subnormal: multiples of 2^-9 (8 of them is the smallest normal, 0x08)
		return sign | uint8(math.RoundToEven(a*0x1p9))
	}
	return f8Normal(math.Float64bits(a)) | sign
}

// Float64 bits of E4M3's normal range [2^-6, 448).
const f8MinNormalBits, f8MaxBits = 0x3f90000000000000, 0x407c000000000000

// f8Normal rounds a float64, given by its bits, whose magnitude is in E4M3's
// normal range (ties to even). It keeps 3 of the 52 mantissa bits by the
// add-half-minus-one-plus-lsb carry; a carry out of the mantissa bumps the
// exponent, which is the right result (m = 16 is 8 at exp+1). Small enough
// to inline into QuantizeF8Row's loop, the load's hot spot.
func f8Normal(bits uint64) uint8 {
	mag := bits &^ (1 << 63)
	mag += 1<<48 - 1 + (mag>>49)&1
	return uint8(bits>>56)&0x80 | uint8((mag>>52)-1016)<<3 | uint8(mag>>49)&7
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
		x := float64(v) / s
		if mag := math.Float64bits(x) &^ (1 << 63); mag >= f8MinNormalBits && mag < f8MaxBits {
			q[i] = f8Normal(math.Float64bits(x))
			continue
		}
		q[i] = f8Bits(x)
	}
	return float32(s)
}

// MaxAbs is the largest magnitude in row (the per-row quantizers' range),
// NaN if row holds one. It compares the bits: for magnitudes (sign
// cleared) their order as integers is the floats' order, with NaNs above
// the infinities.
func MaxAbs(row []float32) float64 {
	var m uint32
	for _, v := range row {
		m = max(m, math.Float32bits(v)&0x7fffffff)
	}
	return float64(math.Float32frombits(m))
}
