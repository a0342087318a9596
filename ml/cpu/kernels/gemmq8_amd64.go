//go:build amd64 && !purego

package kernels

import "unsafe"

// tileQ8Fn is the signature of the generated int8-activation tiles (see
// tileI8Q8 in gen_asm.go): kn is a multiple of q8Step, ldx strides both the
// int8 rows x and their lane scales, flags&1 accumulates into dst.
type tileQ8Fn func(dst *float32, ldd int, x *int8, ldx int, w unsafe.Pointer, ldw int, kn int, scales *float32, lanes *float32, corr *float32, flags int, pf int)

// q8Tiler drives the int8-activation tiles over a full GEMM, blocked like
// tiler.run.
type q8Tiler struct {
	tiles *[5][9]tileQ8Fn // [tokens][rows]
	tt    int             // tokens per full tile
	rr    int             // rows per full tile when T > 1
	rr1   int             // rows per tile for a single token
}

// kcQ8 is the K block of multi-token GEMMs: int8 activation rows are a
// quarter of f32 ones, so four times kcMax columns stay as L1-resident.
const kcQ8 = 4 * kcMax

func (tl *q8Tiler) gemmI8Q8(dst []float32, ldd int, a *Q8Acts, t0, t1 int, w []int8, scales []float32, N int) {
	T, K := t1-t0, a.K
	kmain := K &^ (q8Step - 1)
	if kmain > 0 {
		tl.run(dst, ldd, a, t0, T, w, scales, N, kmain)
	}
	if kmain == K && K > 0 { // K == 0 falls through to write dst = 0
		return
	}
	nb := (K + q8Block - 1) / q8Block
	for t := t0; t < t1; t++ {
		q := a.q[t*a.ld : t*a.ld+K]
		xs := a.scales[t*nb : (t+1)*nb]
		for n := range N {
			addTail(&dst[(t-t0)*ldd+n], kmain, scales[n]*dotQ8Range(q, xs, w[n*K:n*K+K], kmain, K))
		}
	}
}

// run computes the first kmain columns (a multiple of q8Step) into dst,
// overwriting it.
func (tl *q8Tiler) run(dst []float32, ldd int, a *Q8Acts, t0, T int, w []int8, scales []float32, N, kmain int) {
	K, ld := a.K, a.ld
	dp, wp, sp := unsafe.SliceData(dst), unsafe.Pointer(unsafe.SliceData(w)), unsafe.SliceData(scales)
	xp := unsafe.Pointer(&a.q[t0*ld])
	lp := unsafe.Pointer(&a.lanes[t0*ld/4])
	cp := &a.corr[t0]
	if T == 1 {
		tl.rows(dp, ldd, xp, lp, cp, ld, wp, sp, 1, N, K, 0, kmain, 0, tl.rr1, true)
		return
	}
	kc, nb := kmain, N
	if T > tl.tt {
		kc, nb = min(kmain, kcQ8), nbMax
	}
	for k0 := 0; k0 < kmain; k0 += kc {
		kn := min(kc, kmain-k0)
		flags := 0
		if k0 > 0 {
			flags = 1
		}
		for n0 := 0; n0 < N; n0 += nb {
			nn := min(nb, N-n0)
			for tt0 := 0; tt0 < T; tt0 += tl.tt {
				tt := min(tl.tt, T-tt0)
				tl.rows(ptrAdd(dp, tt0*ldd+n0, 4), ldd, unsafe.Add(xp, tt0*ld), unsafe.Add(lp, tt0*ld), ptrAdd(cp, tt0, 4), ld,
					unsafe.Add(wp, n0*K), ptrAdd(sp, n0, 4), tt, nn, K, k0, kn, flags, tl.rr, tt0 == 0)
			}
		}
	}
}

// rows runs tiles of tt tokens over nn weight rows (rr at a time, then
// single rows) over columns [k0, k0+kn); stream prefetches the weights.
func (tl *q8Tiler) rows(dp *float32, ldd int, xp, lp unsafe.Pointer, cp *float32, ld int, w unsafe.Pointer, sp *float32, tt, nn, ldw, k0, kn, flags, rr int, stream bool) {
	full := tl.tiles[tt][rr]
	one := tl.tiles[tt][1]
	tileBytes := rr * ldw
	pf := 0
	if stream {
		pf = (pfBytes + tileBytes - 1) / tileBytes * tileBytes
		prefetchL2(unsafe.Add(w, k0), min(pf, nn*ldw))
	}
	xk, lk, wk := (*int8)(unsafe.Add(xp, k0)), (*float32)(unsafe.Add(lp, k0)), unsafe.Add(w, k0)
	n := 0
	for ; n+rr <= nn; n += rr {
		full(ptrAdd(dp, n, 4), ldd, xk, ld, unsafe.Add(wk, n*ldw), ldw, kn, ptrAdd(sp, n, 4), lk, cp, flags, pf)
	}
	for ; n < nn; n++ {
		one(ptrAdd(dp, n, 4), ldd, xk, ld, unsafe.Add(wk, n*ldw), ldw, kn, ptrAdd(sp, n, 4), lk, cp, flags, 0)
	}
}
