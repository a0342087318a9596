package kernels

import (
	"fmt"
	"math"
	"unsafe"
)

// The kernels of the CPU's flash attention (ml/cpu/flash.go): both of its
// products are broadcast GEMMs (GemmNN) without horizontal sums, against
// the cache's transposed keys (keys in the lanes) and value rows (head
// dims in the lanes); the online softmax runs row by row (RowMax, ExpSum).

// flashImpl is one set of flash kernels; the exported functions check
// their arguments and call the selected one.
type flashImpl struct {
	name    string
	gemmNN  func(dst []float32, ldd int, a []float32, lda int, b []float32, ldb int, R, N, K int, acc bool)
	expSum  func(x []float32, m float32) float32
	rowMax  func(x []float32, m float32) float32
	siluMul func(dst, g, u []float32)
}

var activeFlash = selectFlash()

var genericFlash = flashImpl{
	name:    "generic",
	gemmNN:  gemmNNGeneric,
	expSum:  expSumGeneric,
	rowMax:  rowMaxGeneric,
	siluMul: siluMulGeneric,
}

// GemmNN computes dst[r*ldd+n] = sum_k a[r*lda+k] * b[k*ldb+n] for r < R,
// n < N (acc: dst += instead). b is row-major K×N (not transposed, unlike
// the Gemm* kernels' weights), and every output is one FMA chain over k in
// order: a row's result does not depend on R or on the other rows.
func GemmNN(dst []float32, ldd int, a []float32, lda int, b []float32, ldb int, R, N, K int, acc bool) {
	if R < 0 || N < 0 || K < 0 {
		panic(fmt.Sprintf("kernels: GemmNN negative shape R=%d N=%d K=%d", R, N, K))
	}
	if R == 0 || N == 0 {
		return
	}
	if ldd < N || len(dst) < (R-1)*ldd+N {
		panic(fmt.Sprintf("kernels: GemmNN R=%d N=%d ldd=%d does not fit len(dst)=%d", R, N, ldd, len(dst)))
	}
	if K > 0 && (lda < K || len(a) < (R-1)*lda+K || ldb < N || len(b) < (K-1)*ldb+N) {
		panic(fmt.Sprintf("kernels: GemmNN R=%d N=%d K=%d lda=%d ldb=%d does not fit len(a)=%d len(b)=%d",
			R, N, K, lda, ldb, len(a), len(b)))
	}
	activeFlash.gemmNN(dst, ldd, a, lda, b, ldb, R, N, K, acc)
}

// ExpSum sets x[i] = e^(x[i]-m) and returns the sum: a softmax row's
// exponentials (m its max). The relative error is below 2e-7 where e^t is
// a normal float32 (t = x[i]-m in float32 down to -87.33); smaller results
// (-Inf included) are exactly 0, t above 88 saturates at e^88, NaN stays
// NaN. m = -Inf counts as 0, so an all -Inf row comes out all 0.
func ExpSum(x []float32, m float32) float32 { return activeFlash.expSum(x, m) }

// Prefetch asks for the cache lines of x to be brought into L2 ahead of use: a hint, nothing where the
// CPU has no such instruction.
func Prefetch[T float32 | uint16 | uint8](x []T) {
	if len(x) > 0 {
		prefetch(unsafe.Pointer(unsafe.SliceData(x)), len(x)*int(unsafe.Sizeof(x[0])))
	}
}

// RowMax returns the largest of m and x's elements (a softmax row's
// running max). NaNs are not ordered: whether one wins depends on where it
// lies, and a row that holds one comes out NaN through ExpSum anyway.
func RowMax(x []float32, m float32) float32 { return activeFlash.rowMax(x, m) }

// SiLUMul sets dst[i] = silu(g[i]) * u[i] = g[i] / (1 + e^-g[i]) * u[i]
// over len(dst) elements (ExpSum's exp).
func SiLUMul(dst, g, u []float32) {
	if len(g) < len(dst) || len(u) < len(dst) {
		panic(fmt.Sprintf("kernels: SiLUMul len(dst)=%d len(g)=%d len(u)=%d", len(dst), len(g), len(u)))
	}
	activeFlash.siluMul(dst, g[:len(dst)], u[:len(dst)])
}

// Constants of the exp (Cephes expf's reduction and polynomial).
const (
	expHi    = 88
	expLo    = -87.33654475 // ln(2^-126): below it e^x is not a normal float32
	expLog2e = 1.44269504088896341
	expLn2Hi = 0.693359375 // ln2 split: n*expLn2Hi is exact
	expLn2Lo = -2.12194440e-4
	expP0    = 1.9875691500e-4
	expP1    = 1.3981999507e-3
	expP2    = 8.3334519073e-3
	expP3    = 4.1665795894e-2
	expP4    = 1.6666665459e-1
	expP5    = 5.0000001201e-1
)

// Exp is the scalar e^x of the vector kernels (ExpSum's accuracy and edges).
func Exp(x float32) float32 {
	if x < expLo { // -Inf too; NaN goes on and stays NaN
		return 0
	}
	x = min(x, expHi)
	const round = 0x1.8p23 // adding it rounds a float32 in ±2^22 to an integer
	kf := x*expLog2e + round
	n := int32(math.Float32bits(kf)&0x7fffff) - 0x400000
	fn := kf - round
	r := x - fn*expLn2Hi
	r -= fn * expLn2Lo
	p := float32(expP0)
	p = p*r + expP1
	p = p*r + expP2
	p = p*r + expP3
	p = p*r + expP4
	p = p*r + expP5
	p = p*r + 1
	p = p*r + 1
	return p * math.Float32frombits(uint32(n+127)<<23)
}

// nnEmptyK handles K == 0 (dst = 0, or unchanged) for every implementation.
func nnEmptyK(dst []float32, ldd, R, N int, acc bool) {
	if !acc {
		for r := range R {
			clear(dst[r*ldd : r*ldd+N])
		}
	}
}

func gemmNNGeneric(dst []float32, ldd int, a []float32, lda int, b []float32, ldb int, R, N, K int, acc bool) {
	if K == 0 {
		nnEmptyK(dst, ldd, R, N, acc)
		return
	}
	for r := range R {
		d := dst[r*ldd : r*ldd+N]
		if !acc {
			clear(d)
		}
		ar := a[r*lda : r*lda+K]
		for k, x := range ar {
			br := b[k*ldb : k*ldb+N]
			for n, y := range br {
				d[n] += x * y
			}
		}
	}
}

func expSumGeneric(x []float32, m float32) float32 {
	if math.IsInf(float64(m), -1) {
		m = 0
	}
	var s float32
	for i, v := range x {
		e := Exp(v - m)
		x[i] = e
		s += e
	}
	return s
}

func rowMaxGeneric(x []float32, m float32) float32 {
	for _, v := range x {
		if v > m {
			m = v
		}
	}
	return m
}

func siluMulGeneric(dst, g, u []float32) {
	for i, x := range g {
		dst[i] = x / (1 + Exp(-x)) * u[i]
	}
}
