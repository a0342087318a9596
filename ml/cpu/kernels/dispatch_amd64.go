//go:build amd64 && !purego

package kernels

import "golang.org/x/sys/cpu"

func hasAVX512() bool {
	x := cpu.X86
	return x.HasAVX512F && x.HasAVX512VL && x.HasAVX512BW && x.HasAVX2 && x.HasFMA && x.HasF16C
}

func hasAVX2() bool {
	x := cpu.X86
	return x.HasAVX2 && x.HasFMA && x.HasF16C
}

// simdImpl assembles an impl from one ISA's tile table.
func simdImpl(name string, tiles *[4][5][9]tileFn, vl, tt, rr, rr1 int) impl {
	mk := func(d, esz int) *tiler {
		return &tiler{tiles: &tiles[d], vl: vl, esz: esz, tt: tt, rr: rr, rr1: rr1}
	}
	im := genericImpl
	im.name = name
	im.gemmF32 = mk(dF32, 4).gemmF32
	im.gemmBF16 = mk(dBF16, 2).gemmBF16
	im.gemmF16 = mk(dF16, 2).gemmF16
	im.gemmI8 = mk(dI8, 1).gemmI8
	return im
}

func avx512Impl() impl {
	im := simdImpl("avx512", &tiles_avx512, 16, 4, 4, 8)
	im.dot = dotAVX512Go
	im.axpy = axpyAVX512Go
	im.bf16ToF32 = convHalf(16, bf16ToF32AVX512, bf16ToF32Generic)
	im.f16ToF32 = convHalf(16, f16ToF32AVX512, f16ToF32Generic)
	im.f32ToF16 = convF32(16, f32ToF16AVX512, f32ToF16Generic)
	im.f32ToBF16 = convF32(16, f32ToBF16AVX512, f32ToBF16Generic)
	im.f8ToF32 = f8ToF32Vec
	im.matvecF8 = matvecF8Vec
	return im
}

// hasVNNI: the int8 dot product VPDPBUSD on 512-bit vectors.
func hasVNNI() bool { return hasAVX512() && cpu.X86.HasAVX512VNNI }

// avx512VNNIImpl is avx512Impl with int8 weights multiplied by int8
// activations (GemmI8Q8) in integer dot products.
func avx512VNNIImpl() impl {
	im := avx512Impl()
	im.name = "avx512+vnni"
	im.gemmI8Q8 = (&q8Tiler{tiles: &tilesI8Q8_avx512vnni, tt: 4, rr: 4, rr1: 8}).gemmI8Q8
	im.int8Dot = true
	im.quantizeQ8 = quantizeQ8AVX512Go
	return im
}

func avx2Impl() impl {
	im := simdImpl("avx2+fma", &tiles_avx2, 8, 4, 2, 4)
	im.dot = dotAVX2Go
	im.axpy = axpyAVX2Go
	im.bf16ToF32 = convHalf(8, bf16ToF32AVX2, bf16ToF32Generic)
	im.f16ToF32 = convHalf(8, f16ToF32AVX2, f16ToF32Generic)
	im.f32ToF16 = convF32(8, f32ToF16AVX2, f32ToF16Generic)
	return im
}

func selectImpl() impl {
	switch {
	case hasVNNI():
		return avx512VNNIImpl()
	case hasAVX512():
		return avx512Impl()
	case hasAVX2():
		return avx2Impl()
	}
	return genericImpl
}

// impls lists every implementation usable on this machine, for tests.
func impls() []impl {
	l := []impl{genericImpl}
	if hasAVX2() {
		l = append(l, avx2Impl())
	}
	if hasAVX512() {
		l = append(l, avx512Impl())
	}
	if hasVNNI() {
		l = append(l, avx512VNNIImpl())
	}
	return l
}
