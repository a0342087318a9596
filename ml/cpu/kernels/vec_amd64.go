//go:build amd64 && !purego

package kernels

import "unsafe"

//go:noescape
func dotAVX512(a, b *float32, n int) float32

//go:noescape
func axpyAVX512(a float32, x, y *float32, n int)

//go:noescape
func dotAVX2(a, b *float32, n int) float32

//go:noescape
func axpyAVX2(a float32, x, y *float32, n int)

//go:noescape
func bf16ToF32AVX512(dst *float32, src *uint16, n int)

//go:noescape
func f16ToF32AVX512(dst *float32, src *uint16, n int)

//go:noescape
func f32ToF16AVX512(dst *uint16, src *float32, n int)

//go:noescape
func f32ToBF16AVX512(dst *uint16, src *float32, n int)

//go:noescape
func f8ToF32AVX512(dst *float32, src *uint8, n int, scale float32)

//go:noescape
func matvecF8AVX512(dst *float32, x *float32, w *uint8, scales *float32, n, k int)

// matvecF8Vec runs matvecF8AVX512 on the rows in fours when K is a
// multiple of 16 (model widths are), and Go on the rest.
func matvecF8Vec(dst, x []float32, w []uint8, scales []float32, N, K int) {
	n4 := 0
	if K%16 == 0 && K > 0 {
		n4 = N &^ 3
		if n4 > 0 {
			matvecF8AVX512(unsafe.SliceData(dst), unsafe.SliceData(x), unsafe.SliceData(w), unsafe.SliceData(scales), n4, K)
		}
	}
	matvecF8Generic(dst[n4:], x, w[n4*K:], scales[n4:], N-n4, K)
}

// f8ToF32Vec is f8ToF32AVX512 on the multiple of 16 it takes, and Go on the
// rest.
func f8ToF32Vec(dst []float32, src []uint8, scale float32) {
	m := len(src) &^ 15
	if m > 0 {
		f8ToF32AVX512(unsafe.SliceData(dst), unsafe.SliceData(src), m, scale)
	}
	f8ToF32Generic(dst[m:], src[m:], scale)
}

//go:noescape
func bf16ToF32AVX2(dst *float32, src *uint16, n int)

//go:noescape
func f16ToF32AVX2(dst *float32, src *uint16, n int)

//go:noescape
func f32ToF16AVX2(dst *uint16, src *float32, n int)

// Go wrappers: slices were length-checked by the exported functions.

func dotAVX512Go(a, b []float32) float32 {
	if len(a) == 0 {
		return 0
	}
	return dotAVX512(unsafe.SliceData(a), unsafe.SliceData(b), len(a))
}

func axpyAVX512Go(a float32, x, y []float32) {
	if len(x) > 0 {
		axpyAVX512(a, unsafe.SliceData(x), unsafe.SliceData(y), len(x))
	}
}

func dotAVX2Go(a, b []float32) float32 {
	m := len(a) &^ 7
	var s float32
	if m > 0 {
		s = dotAVX2(unsafe.SliceData(a), unsafe.SliceData(b), m)
	}
	for i := m; i < len(a); i++ {
		s += a[i] * b[i]
	}
	return s
}

func axpyAVX2Go(a float32, x, y []float32) {
	m := len(x) &^ 7
	if m > 0 {
		axpyAVX2(a, unsafe.SliceData(x), unsafe.SliceData(y), m)
	}
	for i := m; i < len(x); i++ {
		y[i] += a * x[i]
	}
}

// convHalf wraps a vector conversion kernel working on multiples of vl.
func convHalf(vl int, k func(*float32, *uint16, int), tail func([]float32, []uint16)) func([]float32, []uint16) {
	return func(dst []float32, src []uint16) {
		m := len(src) &^ (vl - 1)
		if m > 0 {
			k(unsafe.SliceData(dst), unsafe.SliceData(src), m)
		}
		tail(dst[m:], src[m:])
	}
}

func convF32(vl int, k func(*uint16, *float32, int), tail func([]uint16, []float32)) func([]uint16, []float32) {
	return func(dst []uint16, src []float32) {
		m := len(src) &^ (vl - 1)
		if m > 0 {
			k(unsafe.SliceData(dst), unsafe.SliceData(src), m)
		}
		tail(dst[m:], src[m:])
	}
}

//go:noescape
func quantizeQ8AVX512(q *int8, scales, lanes, x *float32, nblocks int) float64

func quantizeQ8AVX512Go(q []int8, scales, lanes, x []float32, nblocks int) float64 {
	if nblocks == 0 {
		return 0
	}
	_, _, _, _ = q[nblocks*q8Block-1], scales[nblocks-1], lanes[nblocks*q8Block/4-1], x[nblocks*q8Block-1]
	return quantizeQ8AVX512(unsafe.SliceData(q), unsafe.SliceData(scales), unsafe.SliceData(lanes), unsafe.SliceData(x), nblocks)
}

//go:noescape
func prefetchL2(p unsafe.Pointer, n int)
