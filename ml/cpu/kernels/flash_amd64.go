//go:build amd64 && !purego

package kernels

import "unsafe"

//go:generate go run gen_flash.go

// nnTileFn is the signature of the generated NN tile kernels (gen_flash.go):
// an R×NV-vector block of dst from kn steps over k; acc != 0 adds to dst.
type nnTileFn func(dst *float32, ldd int, a *float32, lda int, b *float32, ldb int, kn int, acc int)

// nnDriver runs one ISA's NN tiles over a whole product.
type nnDriver struct {
	tiles [][17]nnTileFn // [nv][r]
	vl    int
	rmax  []int // [nv]
}

func (d *nnDriver) gemmNN(dst []float32, ldd int, a []float32, lda int, b []float32, ldb int, R, N, K int, acc bool) {
	if K == 0 {
		nnEmptyK(dst, ldd, R, N, acc)
		return
	}
	nvec := N / d.vl
	fl := 0
	if acc {
		fl = 1
	}
	dp, ap, bp := unsafe.SliceData(dst), unsafe.SliceData(a), unsafe.SliceData(b)
	nvMax := len(d.rmax) - 1
	if nvec > 0 {
		// Balanced splits: vectors into chunks of at most nvMax, rows into
		// tiles of at most rmax[nv].
		nch := (nvec + nvMax - 1) / nvMax
		v0 := 0
		for c := range nch {
			nv := nvec / nch
			if c < nvec%nch {
				nv++
			}
			rm := d.rmax[nv]
			rch := (R + rm - 1) / rm
			r0 := 0
			for i := range rch {
				r := R / rch
				if i < R%rch {
					r++
				}
				n0 := v0 * d.vl
				d.tiles[nv][r](ptrAdd(dp, r0*ldd+n0, 4), ldd, ptrAdd(ap, r0*lda, 4), lda, ptrAdd(bp, n0, 4), ldb, K, fl)
				r0 += r
			}
			v0 += nv
		}
	}
	if nm := nvec * d.vl; nm < N {
		gemmNNGeneric(dst[nm:], ldd, a, lda, b[nm:], ldb, R, N-nm, K, acc)
	}
}

func avx512Flash() flashImpl {
	d := &nnDriver{tiles: nnTiles_avx512[:], vl: 16, rmax: []int{0, 16, 12, 8, 6}}
	return flashImpl{
		name:   "avx512",
		gemmNN: d.gemmNN,
		expSum: func(x []float32, m float32) float32 {
			n := len(x) &^ 15
			var s float32
			if n > 0 {
				s = expSum_avx512(unsafe.SliceData(x), n, m)
			}
			if n < len(x) {
				s += expSumGeneric(x[n:], m)
			}
			return s
		},
		rowMax:  func(x []float32, m float32) float32 { return rowMaxVec(16, rowMax_avx512, x, m) },
		siluMul: func(dst, g, u []float32) { siluMulVec(16, siluMul_avx512, dst, g, u) },
	}
}

func avx2Flash() flashImpl {
	d := &nnDriver{tiles: nnTiles_avx2[:], vl: 8, rmax: []int{0, 12, 6, 4}}
	return flashImpl{
		name:   "avx2+fma",
		gemmNN: d.gemmNN,
		expSum: func(x []float32, m float32) float32 {
			n := len(x) &^ 7
			var s float32
			if n > 0 {
				s = expSum_avx2(unsafe.SliceData(x), n, m)
			}
			if n < len(x) {
				s += expSumGeneric(x[n:], m)
			}
			return s
		},
		rowMax:  func(x []float32, m float32) float32 { return rowMaxVec(8, rowMax_avx2, x, m) },
		siluMul: func(dst, g, u []float32) { siluMulVec(8, siluMul_avx2, dst, g, u) },
	}
}

func rowMaxVec(vl int, k func(x *float32, n int, m float32) float32, x []float32, m float32) float32 {
	nm := len(x) &^ (vl - 1)
	if nm > 0 {
		m = k(unsafe.SliceData(x), nm, m)
	}
	return rowMaxGeneric(x[nm:], m)
}

func siluMulVec(vl int, k func(dst, g, u *float32, n int), dst, g, u []float32) {
	nm := len(dst) &^ (vl - 1)
	if nm > 0 {
		k(unsafe.SliceData(dst), unsafe.SliceData(g), unsafe.SliceData(u), nm)
	}
	if nm < len(dst) {
		siluMulGeneric(dst[nm:], g[nm:], u[nm:])
	}
}

func selectFlash() flashImpl {
	switch {
	case hasAVX512():
		return avx512Flash()
	case hasAVX2():
		return avx2Flash()
	}
	return genericFlash
}

// flashImpls lists every flash implementation usable here, for tests.
func flashImpls() []flashImpl {
	l := []flashImpl{genericFlash}
	if hasAVX2() {
		l = append(l, avx2Flash())
	}
	if hasAVX512() {
		l = append(l, avx512Flash())
	}
	return l
}

func prefetch(p unsafe.Pointer, n int) { prefetchL2(p, n) }
