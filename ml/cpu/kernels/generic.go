package kernels

import "math"

// Portable Go kernels: always compiled, used when the CPU lacks the SIMD
// features (or with the purego tag) and as the tested fallback.

var genericImpl = impl{
	name:       "generic",
	gemmF32:    gemmF32Generic,
	gemmBF16:   gemmBF16Generic,
	gemmF16:    gemmF16Generic,
	gemmI8:     gemmI8Generic,
	gemmI8Q8:   gemmI8Q8Generic,
	quantizeQ8: quantizeQ8Generic,
	dot:        dotGeneric,
	axpy:       axpyGeneric,
	bf16ToF32:  bf16ToF32Generic,
	f8ToF32:    f8ToF32Generic,
	matvecF8:   matvecF8Generic,
	f16ToF32:   f16ToF32Generic,
	f32ToBF16:  f32ToBF16Generic,
	f32ToF16:   f32ToF16Generic,
}

func gemmF32Generic(dst []float32, ldd int, x []float32, w []float32, T, N, K int) {
	for t := 0; t < T; t++ {
		xt := x[t*K : t*K+K]
		d := dst[t*ldd : t*ldd+N]
		for n := range d {
			d[n] = dotGeneric(xt, w[n*K:n*K+K])
		}
	}
}

func gemmBF16Generic(dst []float32, ldd int, x []float32, w []uint16, T, N, K int) {
	for t := 0; t < T; t++ {
		xt := x[t*K : t*K+K]
		d := dst[t*ldd : t*ldd+N]
		for n := range d {
			d[n] = dotBF16Generic(xt, w[n*K:n*K+K])
		}
	}
}

func gemmF16Generic(dst []float32, ldd int, x []float32, w []uint16, T, N, K int) {
	for t := 0; t < T; t++ {
		xt := x[t*K : t*K+K]
		d := dst[t*ldd : t*ldd+N]
		for n := range d {
			d[n] = dotF16Generic(xt, w[n*K:n*K+K])
		}
	}
}

func gemmI8Generic(dst []float32, ldd int, x []float32, w []int8, scales []float32, T, N, K int) {
	for t := 0; t < T; t++ {
		xt := x[t*K : t*K+K]
		d := dst[t*ldd : t*ldd+N]
		for n := range d {
			d[n] = scales[n] * dotI8Generic(xt, w[n*K:n*K+K])
		}
	}
}

// The dot loops keep four partial sums so the additions pipeline.

func dotGeneric(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

func dotBF16Generic(a []float32, b []uint16) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * bf16(b[i])
		s1 += a[i+1] * bf16(b[i+1])
		s2 += a[i+2] * bf16(b[i+2])
		s3 += a[i+3] * bf16(b[i+3])
	}
	for ; i < len(a); i++ {
		s0 += a[i] * bf16(b[i])
	}
	return (s0 + s1) + (s2 + s3)
}

func dotF16Generic(a []float32, b []uint16) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * f16(b[i])
		s1 += a[i+1] * f16(b[i+1])
		s2 += a[i+2] * f16(b[i+2])
		s3 += a[i+3] * f16(b[i+3])
	}
	for ; i < len(a); i++ {
		s0 += a[i] * f16(b[i])
	}
	return (s0 + s1) + (s2 + s3)
}

func dotI8Generic(a []float32, b []int8) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * float32(b[i])
		s1 += a[i+1] * float32(b[i+1])
		s2 += a[i+2] * float32(b[i+2])
		s3 += a[i+3] * float32(b[i+3])
	}
	for ; i < len(a); i++ {
		s0 += a[i] * float32(b[i])
	}
	return (s0 + s1) + (s2 + s3)
}

func axpyGeneric(a float32, x, y []float32) {
	y = y[:len(x)]
	for i, v := range x {
		y[i] += a * v
	}
}

func bf16(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// f16 converts IEEE half bits to float32 exactly.
func f16(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f && man == 0: // Inf
		return math.Float32frombits(sign | 0x7f800000)
	case exp == 0x1f: // NaN: keep the payload, quiet it as F16C does
		return math.Float32frombits(sign | 0x7fc00000 | man<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
	case man == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal half: value = man * 2^-24, exact in float32.
	v := float32(man) * (1.0 / (1 << 24))
	return math.Float32frombits(sign | math.Float32bits(v))
}

func toBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: keep sign and payload top, force quiet
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// toF16 rounds float32 to IEEE half, to nearest even.
func toF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	a := b & 0x7fffffff
	switch {
	case a > 0x7f800000: // NaN: quiet, keep top payload bits
		return sign | 0x7e00 | uint16(a>>13)&0x3ff
	case a >= 0x477ff000: // rounds to >= 65520: overflow to Inf
		return sign | 0x7c00
	case a >= 0x38800000: // normal half range (>= 2^-14)
		// Rebias exponent (127-15=112) and round the 13 dropped bits.
		r := a - 112<<23
		r += 0xfff + (r>>13)&1
		return sign | uint16(r>>13)
	case a < 0x33000000: // < 2^-25: rounds to zero (2^-25 itself ties to even 0)
		return sign
	}
	// Subnormal half: shift the full mantissa so the result is in units of 2^-24.
	e := a >> 23 // 102..112
	m := a&0x7fffff | 0x800000
	shift := 126 - e // value = m * 2^(e-150); in units 2^-24 -> m >> (126-e)
	q := m >> shift
	rem := m & (1<<shift - 1)
	half := uint32(1) << (shift - 1)
	if rem > half || rem == half && q&1 == 1 {
		q++
	}
	return sign | uint16(q)
}

func bf16ToF32Generic(dst []float32, src []uint16) {
	dst = dst[:len(src)]
	for i, h := range src {
		dst[i] = bf16(h)
	}
}

func f16ToF32Generic(dst []float32, src []uint16) {
	dst = dst[:len(src)]
	for i, h := range src {
		dst[i] = f16(h)
	}
}

func f32ToBF16Generic(dst []uint16, src []float32) {
	dst = dst[:len(src)]
	for i, f := range src {
		dst[i] = toBF16(f)
	}
}

func f32ToF16Generic(dst []uint16, src []float32) {
	dst = dst[:len(src)]
	for i, f := range src {
		dst[i] = toF16(f)
	}
}

// f8Values are the E4M3 codes' values (NaN codes as the vector kernel
// gives them, ±480).
var f8Values = func() (t [256]float32) {
	for i := range t {
		em := i & 0x7f
		v := float32(math.Ldexp(float64(em), -9)) // subnormal: m·2^-9
		if em >= 8 {
			v = float32(math.Ldexp(float64(8+em&7), em>>3-10))
		}
		if i&0x80 != 0 {
			v = -v
		}
		t[i] = v
	}
	return t
}()

func f8ToF32Generic(dst []float32, src []uint8, scale float32) {
	for i, q := range src {
		dst[i] = scale * f8Values[q]
	}
}

func matvecF8Generic(dst, x []float32, w []uint8, scales []float32, N, K int) {
	for r := range N {
		var sum float32
		for i, q := range w[r*K : (r+1)*K] {
			sum += f8Values[q] * x[i]
		}
		dst[r] = scales[r] * sum
	}
}
