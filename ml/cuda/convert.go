package cuda

import (
	"encoding/binary"
	"math"

	"github.com/llmserve/llmserve/ml"
)

// convertHost converts little-endian data of dtype src to dtype store on the
// host (the same slice when they match).
func convertHost(data []byte, src, store ml.DType) []byte {
	if src == store {
		return data
	}
	out := make([]byte, len(data)/src.Size()*store.Size())
	convertHostTo(out, data, src, store)
	return out
}

// convertHostTo is convertHost into out (len(data)/src.Size() values of store).
func convertHostTo(out, data []byte, src, store ml.DType) {
	n := len(data) / src.Size()
	for i := 0; i < n; i++ {
		var f float32
		switch src {
		case ml.F32:
			f = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		case ml.BF16:
			f = bf16ToF32(binary.LittleEndian.Uint16(data[2*i:]))
		case ml.F16:
			f = f16ToF32(binary.LittleEndian.Uint16(data[2*i:]))
		}
		switch store {
		case ml.F32:
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(f))
		case ml.BF16:
			binary.LittleEndian.PutUint16(out[2*i:], f32ToBF16(f))
		case ml.F16:
			binary.LittleEndian.PutUint16(out[2*i:], f32ToF16(f))
		}
	}
}

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// f32ToBF16 rounds to nearest even (NaN stays NaN).
func f32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

func f16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	man := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp == 0:
		if man == 0 {
			return math.Float32frombits(sign)
		}
		// subnormal: man * 2^-24
		f := float32(man) * (1.0 / (1 << 24))
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
}

// f32ToF16 rounds to nearest even, saturating to ±Inf.
func f32ToF16(f float32) uint16 {
	u := math.Float32bits(f)
	sign := uint16(u>>16) & 0x8000
	exp := int32(u>>23&0xff) - 127 + 15
	man := u & 0x7fffff
	if u&0x7fffffff > 0x7f800000 {
		return sign | 0x7e00
	}
	if u&0x7fffffff == 0x7f800000 || exp >= 0x1f {
		return sign | 0x7c00
	}
	if exp <= 0 {
		if exp < -10 {
			return sign
		}
		man |= 0x800000
		shift := uint32(14 - exp)
		half := uint32(1) << (shift - 1)
		r := man >> shift
		rem := man & (1<<shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(exp)<<10 | man>>13
	rem := man & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++
	}
	return sign | uint16(r)
}
