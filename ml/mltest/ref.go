package mltest

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/llmserve/llmserve/ml"
)

// This file holds the float64 reference implementations and the host-side
// encoding helpers the conformance suite compares backends against. They are
// exported so model tests can build their own naive reference forward.

// BF16Bits rounds f to the nearest bfloat16 (ties to even).
func BF16Bits(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// BF16Value widens a bfloat16.
func BF16Value(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F16Bits rounds f to the nearest IEEE half (ties to even). It is written
// with float64 arithmetic, independently of any backend's bit tricks.
func F16Bits(f float32) uint16 {
	if f != f {
		return 0x7e00
	}
	var sign uint16
	v := float64(f)
	if math.Signbit(v) {
		sign, v = 0x8000, -v
	}
	if v >= 65520 {
		return sign | 0x7c00
	}
	if v < math.Ldexp(1, -14) { // subnormal: multiples of 2^-24
		m := math.RoundToEven(v * (1 << 24))
		return sign | uint16(m)
	}
	frac, exp := math.Frexp(v) // v = frac * 2^exp, frac in [0.5,1)
	m := math.RoundToEven(frac * 2048)
	if m == 2048 {
		m, exp = 1024, exp+1
	}
	if exp+14 >= 31 {
		return sign | 0x7c00
	}
	return sign | uint16(exp+14)<<10 | uint16(m-1024)
}

// F16Value widens an IEEE half.
func F16Value(h uint16) float32 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e := int(h>>10) & 0x1f
	m := float64(h & 0x3ff)
	switch e {
	case 0:
		return float32(sign * math.Ldexp(m, -24))
	case 31:
		if m != 0 {
			return float32(math.NaN())
		}
		return float32(sign * math.Inf(1))
	}
	return float32(sign * math.Ldexp(1+m/1024, e-15))
}

// Round returns v as stored in dtype dt (F32, F16 or BF16) and widened back.
func Round(dt ml.DType, v float32) float32 {
	switch dt {
	case ml.BF16:
		return BF16Value(BF16Bits(v))
	case ml.F16:
		return F16Value(F16Bits(v))
	case ml.F8:
		return float32(F8Round(float64(v)))
	}
	return v
}

// Encode returns vals little-endian in dt (F32, F16 or BF16).
func Encode(dt ml.DType, vals []float32) []byte {
	out := make([]byte, len(vals)*dt.Size())
	for i, v := range vals {
		switch dt {
		case ml.F32:
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(v))
		case ml.BF16:
			binary.LittleEndian.PutUint16(out[2*i:], BF16Bits(v))
		case ml.F16:
			binary.LittleEndian.PutUint16(out[2*i:], F16Bits(v))
		}
	}
	return out
}

// QuantizeI8 returns what symmetric per-row int8 storage of w (rows×cols)
// holds: scale = max|row|/127, q = round(w/scale), value = q*scale.
func QuantizeI8(w []float32, rows, cols int) []float32 {
	out := make([]float32, len(w))
	for r, s := range rowScales(w, rows, cols, 127) {
		if s == 0 {
			continue
		}
		for i, v := range w[r*cols : (r+1)*cols] {
			out[r*cols+i] = float32(math.Round(float64(v)/s) * s)
		}
	}
	return out
}

// rowScales is max|row|/qmax of each row of w (rows×cols), 0 for a zero row.
func rowScales(w []float32, rows, cols int, qmax float64) []float64 {
	s := make([]float64, rows)
	for r := range rows {
		for _, v := range w[r*cols : (r+1)*cols] {
			s[r] = math.Max(s[r], math.Abs(float64(v))/qmax)
		}
	}
	return s
}

// f8Values are the positive finite FP8 E4M3 values in code order (code i
// is i), from the format's definition: subnormals m·2^-9, then
// (8+m)·2^(e-10) for exponents e = 1..15 (e = 15, m = 7 is NaN).
var f8Values = func() []float64 {
	var v []float64
	for code := range 0x7f {
		e, m := code>>3, float64(code&7)
		if e == 0 {
			v = append(v, math.Ldexp(m, -9))
		} else {
			v = append(v, math.Ldexp(8+m, e-10))
		}
	}
	return v
}()

// F8Round rounds x to the nearest FP8 E4M3 value (ties to the even code),
// saturating at ±448.
func F8Round(x float64) float64 {
	a := math.Abs(x)
	i := sort.SearchFloat64s(f8Values, a) // f8Values[i-1] < a <= f8Values[i]
	var r float64
	switch {
	case i == len(f8Values):
		r = f8Values[i-1]
	case i == 0 || f8Values[i] == a:
		r = f8Values[i]
	default:
		lo, hi := f8Values[i-1], f8Values[i]
		switch {
		case a-lo < hi-a:
			r = lo
		case hi-a < a-lo:
			r = hi
		case (i-1)%2 == 0:
			r = lo
		default:
			r = hi
		}
	}
	return math.Copysign(r, x)
}

// QuantizeF8 returns what per-row FP8 E4M3 storage of w (rows×cols)
// holds: scale = max|row|/448, value = F8Round(w/scale)·scale.
func QuantizeF8(w []float32, rows, cols int) []float32 {
	out := make([]float32, len(w))
	for r, s := range rowScales(w, rows, cols, 448) {
		if s == 0 {
			continue
		}
		for i, v := range w[r*cols : (r+1)*cols] {
			out[r*cols+i] = float32(F8Round(float64(v)/s)) * float32(s)
		}
	}
	return out
}

// RandF32 returns n values uniform in [-a, a).
func RandF32(r *rand.Rand, n int, a float32) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = (r.Float32()*2 - 1) * a
	}
	return out
}

// RandI8Exact returns rows×cols values that int8 per-row storage represents
// exactly: q*s with integer q in [-127,127], |q|=127 somewhere in each row,
// and s a power of two per row (so q*s, max/127 and w/scale are exact in f32,
// leaving no rounding ties to decide differently).
func RandI8Exact(r *rand.Rand, rows, cols int) []float32 {
	out := make([]float32, rows*cols)
	for i := range rows {
		s := float32(math.Ldexp(1, -7-r.IntN(3)))
		for j := range cols {
			out[i*cols+j] = float32(r.IntN(255)-127) * s
		}
		out[i*cols+r.IntN(cols)] = 127 * s
	}
	return out
}

// RefRMSNorm returns x[i]/rms(x[i])*w for rows×cols x.
func RefRMSNorm(x, w []float32, rows, cols int, eps float64) []float64 {
	out := make([]float64, rows*cols)
	for r := range rows {
		var ss float64
		for c := range cols {
			v := float64(x[r*cols+c])
			ss += v * v
		}
		inv := 1 / math.Sqrt(ss/float64(cols)+eps)
		for c := range cols {
			out[r*cols+c] = float64(x[r*cols+c]) * inv * float64(w[c])
		}
	}
	return out
}

// RefQuantizeQ8 returns x[T,K] as a backend quantizing int8-matmul
// activations sees it: each row cut into blocks of 32 columns, each block
// rounded to int8 multiples of d = max|x|/127 (ties to even), in float32
// arithmetic as llama.cpp's Q8_0 quantizer does.
func RefQuantizeQ8(x []float32, T, K int) []float32 {
	const block = 32
	out := make([]float32, T*K)
	for t := range T {
		for k0 := 0; k0 < K; k0 += block {
			xs := x[t*K+k0 : t*K+min(K, k0+block)]
			var amax float32
			for _, v := range xs {
				amax = max(amax, float32(math.Abs(float64(v))))
			}
			d := amax / 127
			if d == 0 {
				continue
			}
			id := 1 / d
			for i, v := range xs {
				out[t*K+k0+i] = d * float32(math.RoundToEven(float64(float32(v*id))))
			}
		}
	}
	return out
}

// RefMatMul returns x[T,K]·w[N,K]ᵀ (+bias).
func RefMatMul(x, w, bias []float32, T, N, K int) []float64 {
	out := make([]float64, T*N)
	for t := range T {
		for n := range N {
			var s float64
			for k := range K {
				s += float64(x[t*K+k]) * float64(w[n*K+k])
			}
			if bias != nil {
				s += float64(bias[n])
			}
			out[t*N+n] = s
		}
	}
	return out
}

// RefRoPE returns x[T, heads*hd] rotated in HF rotate_half layout.
func RefRoPE(x []float32, pos []int32, invFreq []float32, T, heads, hd int) []float64 {
	out := make([]float64, len(x))
	half := hd / 2
	for t := range T {
		for h := range heads {
			base := t*heads*hd + h*hd
			for i := range half {
				a := float64(pos[t]) * float64(invFreq[i])
				c, s := math.Cos(a), math.Sin(a)
				x1, x2 := float64(x[base+i]), float64(x[base+half+i])
				out[base+i] = x1*c - x2*s
				out[base+half+i] = x2*c + x1*s
			}
		}
	}
	return out
}

// RefAttention computes one token's attention output for all heads: q is
// [heads*hd]; keys/vals(j) give position j's [kvHeads*hd] key and value
// (already rounded to the KV dtype), for j in 0..n-1.
func RefAttention(q []float32, n int, keys, vals func(j int) []float32, heads, kvHeads, hd int, scale float64) []float64 {
	out := make([]float64, heads*hd)
	group := heads / kvHeads
	sc := make([]float64, n)
	for h := range heads {
		g := h / group
		mx := math.Inf(-1)
		for j := range n {
			k := keys(j)[g*hd : (g+1)*hd]
			var s float64
			for d := range hd {
				s += float64(q[h*hd+d]) * float64(k[d])
			}
			sc[j] = s * scale
			mx = math.Max(mx, sc[j])
		}
		var sum float64
		for j := range n {
			sc[j] = math.Exp(sc[j] - mx)
			sum += sc[j]
		}
		for j := range n {
			v := vals(j)[g*hd : (g+1)*hd]
			p := sc[j] / sum
			for d := range hd {
				out[h*hd+d] += p * float64(v[d])
			}
		}
	}
	return out
}

// SiLU is x*sigmoid(x).
func SiLU(x float64) float64 { return x / (1 + math.Exp(-x)) }

// RefRMSNormHeads returns x[T, n*hd] with each hd-wide head normalized by
// its own rms and scaled by w[hd].
func RefRMSNormHeads(x, w []float32, T, hd int, eps float64) []float64 {
	return RefRMSNorm(x, w, len(x)/hd, hd, eps)
}

// RefTopKSoftmax returns, for each row of logits[T, E], the k largest
// softmax probabilities (largest first, the lower index on ties) and their
// experts; normalize divides the k by their sum.
func RefTopKSoftmax(logits []float32, T, E, k int, normalize bool) ([]float64, []int32) {
	ws, ids := make([]float64, 0, T*k), make([]int32, 0, T*k)
	p := make([]float64, E)
	for t := range T {
		row := logits[t*E : (t+1)*E]
		mx := math.Inf(-1)
		for _, v := range row {
			mx = math.Max(mx, float64(v))
		}
		var sum float64
		for i, v := range row {
			p[i] = math.Exp(float64(v) - mx)
			sum += p[i]
		}
		taken := make([]bool, E)
		var sel []float64
		var tot float64
		for range k {
			best := -1
			for i := range p {
				if !taken[i] && (best < 0 || p[i] > p[best]) {
					best = i
				}
			}
			taken[best] = true
			ids = append(ids, int32(best))
			sel = append(sel, p[best]/sum)
			tot += p[best] / sum
		}
		for _, v := range sel {
			if normalize {
				v /= tot
			}
			ws = append(ws, v)
		}
	}
	return ws, ids
}

// RefMatMulExperts returns dst[R, N] with row r = x[r/f]·w[experts[r]]ᵀ,
// w being E stacked [N, K] matrices and f = R/(len(x)/K).
func RefMatMulExperts(x, w []float32, experts []int32, N, K int) []float64 {
	R := len(experts)
	f := R / (len(x) / K)
	out := make([]float64, 0, R*N)
	for r, e := range experts {
		xr := x[(r/f)*K : (r/f+1)*K]
		out = append(out, RefMatMul(xr, w[int(e)*N*K:int(e+1)*N*K], nil, 1, N, K)...)
	}
	return out
}

// RefScatterAdd returns dst[idx[i]] += scale[i]*src[i] (scale nil: 1) for
// rows of C values.
func RefScatterAdd(dst, src []float32, idx []int32, scale []float32, C int) []float64 {
	out := make([]float64, len(dst))
	for i, v := range dst {
		out[i] = float64(v)
	}
	for i, j := range idx {
		a := 1.0
		if scale != nil {
			a = float64(scale[i])
		}
		for c := range C {
			out[int(j)*C+c] += a * float64(src[i*C+c])
		}
	}
	return out
}
