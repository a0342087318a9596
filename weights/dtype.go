package weights

import (
	"encoding/binary"
	"math"

	"github.com/llmserve/llmserve/ml"
)

// BF16ToF32 widens a bfloat16 (exact).
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F32ToBF16 rounds to the nearest bfloat16, ties to even; NaN stays NaN.
func F32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: keep it quiet and non-zero
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// F16ToF32 widens an IEEE half (exact, including subnormals, Inf and NaN).
func F16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // Inf/NaN
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0:
		return math.Float32frombits(sign)
	}
	// subnormal: mant * 2^-24
	f := float32(mant) * (1.0 / (1 << 24))
	return math.Float32frombits(sign | math.Float32bits(f))
}

// F32ToF16 rounds to the nearest IEEE half, ties to even; overflow gives Inf.
func F32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	abs := b & 0x7fffffff
	switch {
	case abs > 0x7f800000: // NaN
		return sign | 0x7e00 | uint16(abs>>13)&0x3ff
	case abs >= 0x477ff000: // rounds to >= 65520: Inf
		return sign | 0x7c00
	case abs >= 0x38800000: // normal half (>= 2^-14)
		// Rebias exponent, round mantissa 23->10 bits to nearest even.
		v := abs - (112 << 23)
		v += 0xfff + (v>>13)&1
		return sign | uint16(v>>13)
	case abs < 0x33000000: // < 2^-25: rounds to zero
		return sign
	}
	// Subnormal half: value = m * 2^-24 with m < 1024.
	e := abs >> 23                   // 102..112
	m := abs&0x7fffff | 0x800000     // 24-bit significand
	shift := 126 - e                 // bits to drop: value = m * 2^(e-150); /2^-24 → m >> (126-e)
	r := m >> shift                  //
	rem := m & (1<<shift - 1)        //
	half := uint32(1) << (shift - 1) //
	if rem > half || (rem == half && r&1 == 1) {
		r++
	}
	return sign | uint16(r)
}

// ConvertToF32 decodes min(len(dst), len(src)/size) little-endian elements
// of dtype dt (F32, F16, BF16, or F8 without its scales) from src into dst
// and returns that count; for other dtypes it returns 0.
func ConvertToF32(dst []float32, src []byte, dt ml.DType) int {
	sz := dt.Size()
	if sz == 0 {
		return 0
	}
	n := min(len(dst), len(src)/sz)
	switch dt {
	case ml.F32:
		for i := range dst[:n] {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case ml.BF16:
		for i := range dst[:n] {
			dst[i] = BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case ml.F16:
		for i := range dst[:n] {
			dst[i] = F16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case ml.F8:
		for i := range dst[:n] {
			dst[i] = ml.F8Value(src[i])
		}
	default:
		return 0
	}
	return n
}

// ConvertFromF32 encodes min(len(src), len(dst)/size) values as dtype dt
// (F32, F16 or BF16, rounded to nearest even) and returns that count; for
// other dtypes it returns 0.
func ConvertFromF32(dst []byte, src []float32, dt ml.DType) int {
	sz := dt.Size()
	if sz == 0 {
		return 0
	}
	n := min(len(src), len(dst)/sz)
	switch dt {
	case ml.F32:
		for i, v := range src[:n] {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
		}
	case ml.BF16:
		for i, v := range src[:n] {
			binary.LittleEndian.PutUint16(dst[2*i:], F32ToBF16(v))
		}
	case ml.F16:
		for i, v := range src[:n] {
			binary.LittleEndian.PutUint16(dst[2*i:], F32ToF16(v))
		}
	default:
		return 0
	}
	return n
}

// ToF32 returns the tensor's values as a new []float32.
func (t *Tensor) ToF32() []float32 {
	out := make([]float32, len(t.Data)/max(t.DType.Size(), 1))
	ConvertToF32(out, t.Data, t.DType)
	return out
}
