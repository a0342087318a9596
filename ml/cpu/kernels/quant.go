package kernels

import (
	"fmt"
	"math"
)

// Int8 activations for int8 weights, the scheme of llama.cpp's Q8_0: each
// activation row is cut into blocks of q8Block columns, and each block is
// stored as int8 values q with one float32 scale d (x ≈ d·q, d = max|x|/127).
// A product with a per-row-scaled int8 weight row is then
//
//	scale[n] · Σ_blocks d_b · Σ_{k in b} q[k]·w[n,k]
//
// with the inner sums exact in int32, which CPUs with an int8 dot product
// (AVX512-VNNI VPDPBUSD) compute four products per lane per instruction.

// q8Block is the number of consecutive activations of a row sharing a scale.
const q8Block = 32

// q8Step is the columns the SIMD tiles consume per step: one 64-byte vector
// of int8, i.e. two blocks.
const q8Step = 64

// Q8Acts holds rows of activations quantized to int8 for GemmI8Q8. Reset
// sizes it (growing its buffers only when a call is larger than any
// before), QuantizeRows fills rows; both are cheap to reuse per matmul.
type Q8Acts struct {
	T, K int
	// ld is the row stride of q in bytes (K rounded up to q8Step, zero
	// padded) and of lanes in 4-byte floats, so the tiles step through
	// both with one stride.
	ld int
	q  []int8
	// scales holds each row's ceil(K/q8Block) block scales.
	scales []float32
	// lanes holds, per row and 64-column step, the scale of each of the
	// step's 16 int32 lanes (eight lanes per block): the tiles scale a
	// step's lane sums with one multiply.
	lanes []float32
	// corr is per row 128·Σ d_b·Σ q over the whole steps: the tiles treat
	// the weights as unsigned (w+128, as VPDPBUSD wants one unsigned
	// operand) and subtract this once per output.
	corr []float32
}

// Reset sizes a for T rows of K columns.
func (a *Q8Acts) Reset(T, K int) {
	if T < 0 || K < 0 {
		panic(fmt.Sprintf("kernels: Q8Acts.Reset(%d, %d)", T, K))
	}
	a.T, a.K = T, K
	a.ld = (K + q8Step - 1) &^ (q8Step - 1)
	nb := (K + q8Block - 1) / q8Block
	a.q = grow(a.q, T*a.ld)
	a.scales = grow(a.scales, T*nb)
	a.lanes = grow(a.lanes, T*a.ld/4)
	a.corr = grow(a.corr, T)
}

func grow[E any](s []E, n int) []E {
	if cap(s) < n {
		return make([]E, n)
	}
	return s[:n]
}

// QuantizeRows quantizes rows [t0, t1) of x (T rows of K, as given to
// Reset) into a. Calls on disjoint row ranges may run concurrently.
func (a *Q8Acts) QuantizeRows(x []float32, t0, t1 int) {
	K := a.K
	if t0 < 0 || t1 > a.T || t0 > t1 || len(x) < a.T*K {
		panic(fmt.Sprintf("kernels: QuantizeRows [%d,%d) of %d rows of %d, len(x)=%d", t0, t1, a.T, K, len(x)))
	}
	nb := (K + q8Block - 1) / q8Block
	kmain := K &^ (q8Step - 1)
	for t := t0; t < t1; t++ {
		q := a.q[t*a.ld : (t+1)*a.ld]
		scales := a.scales[t*nb : (t+1)*nb]
		lanes := a.lanes[t*a.ld/4 : (t+1)*a.ld/4]
		// Blocks within whole steps also get lane scales and enter corr.
		nfull := kmain / q8Block
		corr := active.quantizeQ8(q, scales, lanes, x[t*K:t*K+kmain], nfull)
		for b := nfull; b < nb; b++ {
			k0, k1 := b*q8Block, min(K, (b+1)*q8Block)
			scales[b], _ = quantizeBlock(q[k0:k1], x[t*K+k0:t*K+k1])
		}
		clear(q[K:])
		clear(lanes[kmain/4:])
		a.corr[t] = float32(128 * corr)
	}
}

// quantizeQ8Generic quantizes nblocks whole blocks of x into q, their
// scales and lane scales (eight lanes per block), and returns Σ d·Σq over
// them, summed in block order.
func quantizeQ8Generic(q []int8, scales, lanes, x []float32, nblocks int) float64 {
	var corr float64
	for b := range nblocks {
		k0, k1 := b*q8Block, (b+1)*q8Block
		d, sum := quantizeBlock(q[k0:k1], x[k0:k1])
		scales[b] = d
		corr += float64(d) * float64(sum)
		l := lanes[k0/4 : k1/4]
		for i := range l {
			l[i] = d
		}
	}
	return corr
}

// quantizeBlock rounds x/d to the nearest integer (ties to even, as the
// SIMD conversion does) with d = max|x|/127, and returns d and Σq.
func quantizeBlock(q []int8, x []float32) (d float32, sum int32) {
	var amax float32
	for _, v := range x {
		amax = max(amax, math.Float32frombits(math.Float32bits(v)&0x7fffffff))
	}
	d = amax / 127
	var id float32
	if d != 0 {
		id = 1 / d
	}
	for i, v := range x {
		// The product is rounded to float32 first, as the SIMD multiply does.
		r := int32(math.RoundToEven(float64(float32(v * id))))
		r = max(-127, min(127, r))
		q[i] = int8(r)
		sum += r
	}
	return d, sum
}

// Quantize is Reset followed by QuantizeRows over all rows.
func (a *Q8Acts) Quantize(x []float32, T, K int) {
	a.Reset(T, K)
	a.QuantizeRows(x, 0, T)
}

// HasInt8Dot reports whether the selected implementation multiplies int8
// activations with int8 weights natively; elsewhere GemmI8Q8 works but
// GemmI8 on f32 activations is faster (and exact in the activations).
func HasInt8Dot() bool { return active.gemmI8Q8 != nil && active.int8Dot }

// GemmI8Q8 is GemmI8 with activations quantized by a: rows [t0, t1) of a
// times N int8 weight rows of a.K columns with one scale per row:
// dst[(t-t0)*ldd+n] = scales[n] · Σ_b d[t,b] · Σ_{k in b} q[t,k]·w[n*K+k].
func GemmI8Q8(dst []float32, ldd int, a *Q8Acts, t0, t1 int, w []int8, scales []float32, N int) {
	if t0 < 0 || t1 > a.T || t0 > t1 {
		panic(fmt.Sprintf("kernels: GemmI8Q8 rows [%d,%d) of %d", t0, t1, a.T))
	}
	T, K := t1-t0, a.K
	// x's length is checked by the quantizer; pass what checkGemm expects.
	if checkGemm(len(dst), ldd, T*K, len(w), T, N, K) {
		if len(scales) < N {
			panic(fmt.Sprintf("kernels: GemmI8Q8 len(scales)=%d < N=%d", len(scales), N))
		}
		active.gemmI8Q8(dst, ldd, a, t0, t1, w, scales, N)
	}
}

func gemmI8Q8Generic(dst []float32, ldd int, a *Q8Acts, t0, t1 int, w []int8, scales []float32, N int) {
	K := a.K
	nb := (K + q8Block - 1) / q8Block
	for t := t0; t < t1; t++ {
		q := a.q[t*a.ld : t*a.ld+K]
		xs := a.scales[t*nb : (t+1)*nb]
		d := dst[(t-t0)*ldd : (t-t0)*ldd+N]
		for n := range d {
			d[n] = scales[n] * dotQ8Range(q, xs, w[n*K:n*K+K], 0, K)
		}
	}
}

// dotQ8Range is Σ_b d_b·Σ q[k]·w[k] over columns [k0, k1), the blocks cut
// at multiples of q8Block.
func dotQ8Range(q []int8, xs []float32, w []int8, k0, k1 int) float32 {
	var s float32
	for k := k0; k < k1; {
		b := k / q8Block
		e := min(k1, (b+1)*q8Block)
		var isum int32
		for ; k < e; k++ {
			isum += int32(q[k]) * int32(w[k])
		}
		s += xs[b] * float32(isum)
	}
	return s
}
