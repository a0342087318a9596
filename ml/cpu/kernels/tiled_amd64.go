//go:build amd64 && !purego

package kernels

import "unsafe"

//go:generate go run gen_asm.go

// tileFn is the signature of every generated tile kernel (see gen_asm.go).
// Strides are in elements, kn is a multiple of the vector length, flags&1
// accumulates into dst instead of overwriting it.
// Single-token tiles prefetch the weights pf bytes ahead of w.
type tileFn func(dst *float32, ldd int, x *float32, ldx int, w unsafe.Pointer, ldw int, kn int, scales *float32, flags int, pf int)

// Dtype indices into the generated tile tables.
const (
	dF32 = iota
	dBF16
	dF16
	dI8
)

// tiler drives one ISA's tile kernels for one weight dtype over a full GEMM.
type tiler struct {
	tiles *[5][9]tileFn // [tokens][rows]
	vl    int           // k step of the kernels
	esz   int           // bytes per weight
	tt    int           // tokens per full tile
	rr    int           // rows per full tile when T > 1
	rr1   int           // rows per tile for a single token (matvec)
}

// Blocking for the multi-token case: a kc-long slice of tt activation rows
// (16 KiB at kc=1024) stays in L1 while an nb×kc block of weights (<=256 KiB
// in bf16) is reused from L2 by every token tile.
const (
	kcMax = 1024
	nbMax = 128
)

// pfBytes is how far ahead single-token tiles prefetch weights: whole tiles
// (rows × row bytes) covering at least this many bytes, which hides DRAM
// latency at full single-core bandwidth.
const pfBytes = 32 << 10

// run computes the first kmain = K rounded down to the vector length
// columns of the product into dst (overwriting it) and returns kmain. The
// caller adds the K tail. Slices were checked by the exported wrapper.
func (tl *tiler) run(dst []float32, ldd int, x []float32, w unsafe.Pointer, scales []float32, T, N, K int) int {
	kmain := K &^ (tl.vl - 1)
	if kmain == 0 {
		return 0
	}
	var sp *float32
	if scales != nil {
		sp = unsafe.SliceData(scales)
	}
	dp, xp := unsafe.SliceData(dst), unsafe.SliceData(x)
	if T == 1 {
		tl.rows(dp, ldd, xp, K, w, sp, 1, N, K, 0, kmain, 0, tl.rr1, true)
		return kmain
	}
	kc, nb := kmain, N
	if T > tl.tt {
		kc, nb = min(kmain, kcMax), nbMax
	}
	for k0 := 0; k0 < kmain; k0 += kc {
		kn := min(kc, kmain-k0)
		flags := 0
		if k0 > 0 {
			flags = 1
		}
		for n0 := 0; n0 < N; n0 += nb {
			nn := min(nb, N-n0)
			for t0 := 0; t0 < T; t0 += tl.tt {
				tt := min(tl.tt, T-t0)
				tl.rows(ptrAdd(dp, t0*ldd+n0, 4), ldd, ptrAdd(xp, t0*K, 4), K,
					unsafe.Add(w, n0*K*tl.esz), scaleAt(sp, n0), tt, nn, K, k0, kn, flags, tl.rr, t0 == 0)
			}
		}
	}
	return kmain
}

// rows runs tiles of tt tokens over nn weight rows, rr rows at a time and
// single rows for the remainder, over columns [k0, k0+kn). stream says the
// weights come from memory (first touch), so the tiles prefetch ahead.
func (tl *tiler) rows(dp *float32, ldd int, xp *float32, K int, w unsafe.Pointer, sp *float32, tt, nn, ldw, k0, kn, flags, rr int, stream bool) {
	full := tl.tiles[tt][rr]
	one := tl.tiles[tt][1]
	tileBytes := rr * ldw * tl.esz
	pf := 0
	if stream {
		pf = (pfBytes + tileBytes - 1) / tileBytes * tileBytes
		// The tiles prefetch pf bytes ahead of themselves; start the stream.
		prefetchL2(unsafe.Add(w, k0*tl.esz), min(pf, nn*ldw*tl.esz))
	}
	xk := ptrAdd(xp, k0, 4)
	wk := unsafe.Add(w, k0*tl.esz)
	n := 0
	for ; n+rr <= nn; n += rr {
		full(ptrAdd(dp, n, 4), ldd, xk, K, unsafe.Add(wk, n*ldw*tl.esz), ldw, kn, scaleAt(sp, n), flags, pf)
	}
	for ; n < nn; n++ {
		one(ptrAdd(dp, n, 4), ldd, xk, K, unsafe.Add(wk, n*ldw*tl.esz), ldw, kn, scaleAt(sp, n), flags, 0)
	}
}

func ptrAdd(p *float32, i, size int) *float32 {
	return (*float32)(unsafe.Add(unsafe.Pointer(p), i*size))
}

func scaleAt(sp *float32, n int) *float32 {
	if sp == nil {
		return nil
	}
	return ptrAdd(sp, n, 4)
}

// Typed entry points: the tile kernels do the vector-length multiple of K,
// portable Go adds the remaining columns.

func (tl *tiler) gemmF32(dst []float32, ldd int, x []float32, w []float32, T, N, K int) {
	km := tl.run(dst, ldd, x, unsafe.Pointer(unsafe.SliceData(w)), nil, T, N, K)
	if km < K || km == 0 { // km == 0 also covers K == 0: dst = 0
		for t := 0; t < T; t++ {
			for n := 0; n < N; n++ {
				addTail(&dst[t*ldd+n], km, dotGeneric(x[t*K+km:t*K+K], w[n*K+km:n*K+K]))
			}
		}
	}
}

func (tl *tiler) gemmBF16(dst []float32, ldd int, x []float32, w []uint16, T, N, K int) {
	km := tl.run(dst, ldd, x, unsafe.Pointer(unsafe.SliceData(w)), nil, T, N, K)
	if km < K || km == 0 { // km == 0 also covers K == 0: dst = 0
		for t := 0; t < T; t++ {
			for n := 0; n < N; n++ {
				addTail(&dst[t*ldd+n], km, dotBF16Generic(x[t*K+km:t*K+K], w[n*K+km:n*K+K]))
			}
		}
	}
}

func (tl *tiler) gemmF16(dst []float32, ldd int, x []float32, w []uint16, T, N, K int) {
	km := tl.run(dst, ldd, x, unsafe.Pointer(unsafe.SliceData(w)), nil, T, N, K)
	if km < K || km == 0 { // km == 0 also covers K == 0: dst = 0
		for t := 0; t < T; t++ {
			for n := 0; n < N; n++ {
				addTail(&dst[t*ldd+n], km, dotF16Generic(x[t*K+km:t*K+K], w[n*K+km:n*K+K]))
			}
		}
	}
}

func (tl *tiler) gemmI8(dst []float32, ldd int, x []float32, w []int8, scales []float32, T, N, K int) {
	km := tl.run(dst, ldd, x, unsafe.Pointer(unsafe.SliceData(w)), scales, T, N, K)
	if km < K || km == 0 { // km == 0 also covers K == 0: dst = 0
		for t := 0; t < T; t++ {
			for n := 0; n < N; n++ {
				addTail(&dst[t*ldd+n], km, scales[n]*dotI8Generic(x[t*K+km:t*K+K], w[n*K+km:n*K+K]))
			}
		}
	}
}

// addTail stores v when the kernels did not run (km == 0), else adds it.
func addTail(d *float32, km int, v float32) {
	if km == 0 {
		*d = v
	} else {
		*d += v
	}
}
