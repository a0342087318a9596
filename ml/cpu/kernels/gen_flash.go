//go:build ignore

// gen_flash writes flash_amd64.s and flash_tiles_amd64.go: the kernels of
// the CPU's flash attention (ml/cpu/flash.go) for AVX-512 and AVX2+FMA.
//
//	go run gen_flash.go
//
// Tiles of the broadcast ("NN") product: for r < R rows and n < NV vectors,
//
//	dst[r*ldd+n] (= or +=) sum_{k<kn} a[r*lda+k] * b[k*ldb+n]
//
// each k step loads NV vectors of b, broadcasts R elements of a and issues
// R*NV FMAs into R*NV vector accumulators: no horizontal sums, so a k of 16
// costs no more per FMA than a k of 1,000. Attention keeps its query rows
// in the vector lanes (b is Qᵀ or Pᵀ) and broadcasts keys and values from
// the cache's rows (a).
//
// The exp kernels (expSum, softmaxCols) share one vector e^t: t clamped to
// [-87.3365, 88], n = round(t·log2e) (magic add), r = t - n·ln2 (two-part ln2, FMA),
// Cephes' degree-6 polynomial, times 2^n; lanes below -87.3365 (whose e^t
// is not a normal float32, -Inf included) come out exactly 0.
package main

import (
	"bytes"
	"fmt"
	"go/format"
	"math"
	"os"
)

type isa struct {
	name  string
	vl    int    // f32 lanes
	reg   string // vector register prefix
	nregs int
	// rmax[nv] is the largest tile of nv vectors.
	rmax []int
}

var isas = []isa{
	{"avx512", 16, "Z", 32, []int{0, 16, 12, 8, 6}},
	{"avx2", 8, "Y", 16, []int{0, 12, 6, 4}},
}

type gen struct {
	b bytes.Buffer
}

func (g *gen) p(format string, args ...any) { fmt.Fprintf(&g.b, "\t"+format+"\n", args...) }
func (g *gen) label(l string)               { fmt.Fprintf(&g.b, "%s:\n", l) }

func tileName(is isa, R, NV int) string { return fmt.Sprintf("nnTile_%dx%d_%s", R, NV, is.name) }

// rowAddr addresses row i (0..15) of a matrix with one base register per
// four rows, a stride register l and its triple l3, plus a displacement.
func rowAddr(bases []string, l, l3 string, i, disp int) string {
	b := bases[i/4]
	d := ""
	if disp != 0 {
		d = fmt.Sprint(disp)
	}
	switch i % 4 {
	case 0:
		return fmt.Sprintf("%s(%s)", d, b)
	case 1:
		return fmt.Sprintf("%s(%s)(%s*1)", d, b, l)
	case 2:
		return fmt.Sprintf("%s(%s)(%s*2)", d, b, l)
	}
	return fmt.Sprintf("%s(%s)(%s*1)", d, b, l3)
}

// nnTile writes one R×NV tile kernel:
//
//	func(dst *float32, ldd int, a *float32, lda int, b *float32, ldb int, kn int, acc int)
func (g *gen) nnTile(is isa, R, NV int) {
	v := func(i int) string { return fmt.Sprintf("%s%d", is.reg, i) }
	acc := func(r, n int) string { return v(r*NV + n) }
	bReg := func(n int) string { return v(R*NV + n) }
	bc := v(R*NV + NV) // broadcast register
	if R*NV+NV+1 > is.nregs {
		panic("too many registers")
	}
	name := tileName(is, R, NV)
	fmt.Fprintf(&g.b, "\n// func %s(dst *float32, ldd int, a *float32, lda int, b *float32, ldb int, kn int, acc int)\n", name)
	fmt.Fprintf(&g.b, "TEXT ·%s(SB), NOSPLIT, $0-64\n", name)
	vb := is.vl * 4 // bytes per vector
	groups := (R + 3) / 4
	// dst rows: DX base, SI = ldd bytes, R11 = 3*ldd bytes, DI = group base.
	dstRows := func(f func(addr string, r, n int)) {
		for gi := 0; gi < groups; gi++ {
			base := "DX"
			if gi > 0 {
				g.p("LEAQ (DX)(SI*4), DI")
				if gi > 1 {
					for j := 1; j < gi; j++ {
						g.p("LEAQ (DI)(SI*4), DI")
					}
				}
				base = "DI"
			}
			for r := gi * 4; r < min(R, gi*4+4); r++ {
				for n := 0; n < NV; n++ {
					bases := make([]string, 4)
					bases[r/4] = base
					f(rowAddr(bases, "SI", "R11", r, n*vb), r, n)
				}
			}
		}
	}
	g.p("MOVQ dst+0(FP), DX")
	g.p("MOVQ ldd+8(FP), SI")
	g.p("SHLQ $2, SI")
	g.p("LEAQ (SI)(SI*2), R11")
	g.p("MOVQ acc+56(FP), CX")
	g.p("TESTQ CX, CX")
	g.p("JZ zero")
	dstRows(func(addr string, r, n int) { g.p("VMOVUPS %s, %s", addr, acc(r, n)) })
	g.p("JMP setup")
	g.label("zero")
	for r := 0; r < R; r++ {
		for n := 0; n < NV; n++ {
			g.zero(is, acc(r, n))
		}
	}
	g.label("setup")
	// a rows: bases DI, R8, R9, R10 (4 rows each), SI = lda bytes, R11 = 3*lda.
	// b rows: AX, BX = ldb bytes, R12 = 3*ldb bytes. CX counts k.
	aBases := []string{"DI", "R8", "R9", "R10"}[:groups]
	g.p("MOVQ a+16(FP), DI")
	g.p("MOVQ lda+24(FP), SI")
	g.p("SHLQ $2, SI")
	g.p("LEAQ (SI)(SI*2), R11")
	for gi := 1; gi < groups; gi++ {
		g.p("LEAQ (%s)(SI*4), %s", aBases[gi-1], aBases[gi])
	}
	g.p("MOVQ b+32(FP), AX")
	g.p("MOVQ ldb+40(FP), BX")
	g.p("SHLQ $2, BX")
	g.p("LEAQ (BX)(BX*2), R12")
	g.p("MOVQ kn+48(FP), CX")
	step := func(u int) {
		for n := 0; n < NV; n++ {
			g.p("VMOVUPS %s, %s", rowAddr([]string{"AX"}, "BX", "R12", u, n*vb), bReg(n))
		}
		for r := 0; r < R; r++ {
			aa := rowAddr(aBases, "SI", "R11", r, 4*u)
			if NV == 1 && is.reg == "Z" {
				g.p("VFMADD231PS.BCST %s, %s, %s", aa, bReg(0), acc(r, 0))
				continue
			}
			g.p("VBROADCASTSS %s, %s", aa, bc)
			for n := 0; n < NV; n++ {
				g.p("VFMADD231PS %s, %s, %s", bReg(n), bc, acc(r, n))
			}
		}
	}
	// Four k steps per iteration, then single steps.
	g.p("SHRQ $2, CX")
	g.p("JZ tail")
	g.label("loop4")
	for u := 0; u < 4; u++ {
		step(u)
	}
	for _, b := range aBases {
		g.p("ADDQ $16, %s", b)
	}
	g.p("LEAQ (AX)(BX*4), AX")
	g.p("DECQ CX")
	g.p("JNZ loop4")
	g.label("tail")
	g.p("MOVQ kn+48(FP), CX")
	g.p("ANDQ $3, CX")
	g.p("JZ store")
	g.label("loop1")
	step(0)
	for _, b := range aBases {
		g.p("ADDQ $4, %s", b)
	}
	g.p("ADDQ BX, AX")
	g.p("DECQ CX")
	g.p("JNZ loop1")
	g.label("store")
	g.p("MOVQ ldd+8(FP), SI")
	g.p("SHLQ $2, SI")
	g.p("LEAQ (SI)(SI*2), R11")
	dstRows(func(addr string, r, n int) { g.p("VMOVUPS %s, %s", acc(r, n), addr) })
	g.p("VZEROUPPER")
	g.p("RET")
}

// The exp constants, 16 copies each (64 bytes: a full vector operand for
// both ISAs).
var expConsts = []struct {
	name string
	val  float64
}{
	{"expHi", 88},
	{"expLo", -87.33654475},
	{"expLog2e", 1.44269504088896341},
	{"expMagic", 0x1.8p23},
	{"expLn2Hi", 0.693359375},
	{"expLn2Lo", -2.12194440e-4},
	{"expP0", 1.9875691500e-4},
	{"expP1", 1.3981999507e-3},
	{"expP2", 8.3334519073e-3},
	{"expP3", 4.1665795894e-2},
	{"expP4", 1.6666665459e-1},
	{"expP5", 5.0000001201e-1},
	{"expOne", 1},
	{"expNegInf", math.Inf(-1)},
}

// expRegs are the registers the exp sequence uses besides its argument.
type expRegs struct {
	hi, lo string // clamp bounds (registers: min/max must see x second)
	t1, t2 string // temporaries
	t3     string // AVX2: temporary (the zero mask)
	k      string // AVX-512: mask register
}

func (g *gen) loadExpConsts(e expRegs) {
	g.p("VBROADCASTSS expHi<>(SB), %s", e.hi)
	g.p("VBROADCASTSS expLo<>(SB), %s", e.lo)
}

// exp replaces the vector x with e^x (see the file comment).
func (g *gen) exp(is isa, e expRegs, x string) {
	if is.reg == "Z" {
		g.p("VCMPPS $0x15, %s, %s, %s", e.lo, x, e.k) // keep: !(x < lo), NaN kept
	} else {
		g.p("VCMPPS $1, %s, %s, %s", e.lo, x, e.t3) // zero: x < lo (ordered)
	}
	g.p("VMINPS %s, %s, %s", x, e.hi, x) // a NaN x stays (second source)
	g.p("VMAXPS %s, %s, %s", x, e.lo, x)
	// n = round(x·log2e) by the magic add: t1 = x·log2e + 1.5·2^23 holds n
	// in its low mantissa bits.
	g.p("VMOVUPS expMagic<>(SB), %s", e.t1)
	g.p("VFMADD231PS expLog2e<>(SB), %s, %s", x, e.t1)
	if is.reg == "Y" {
		// 2^n from the bits: (bits(t1) << 23) + bits(1.0) (the magic's
		// own bits shift out), n in [-126, 127].
		g.p("VPSLLD $23, %s, %s", e.t1, e.t2)
		g.p("VPADDD expOne<>(SB), %s, %s", e.t2, e.t2)
	}
	g.p("VSUBPS expMagic<>(SB), %s, %s", e.t1, e.t1)    // n
	g.p("VFNMADD231PS expLn2Hi<>(SB), %s, %s", e.t1, x) // r = x - n·ln2
	g.p("VFNMADD231PS expLn2Lo<>(SB), %s, %s", e.t1, x)
	p := e.t2 // the polynomial's register
	if is.reg == "Y" {
		p = e.t1
	}
	g.p("VMOVUPS expP0<>(SB), %s", p)
	for _, c := range []string{"expP1", "expP2", "expP3", "expP4", "expP5", "expOne", "expOne"} {
		g.p("VFMADD213PS %s<>(SB), %s, %s", c, x, p) // p = p·r + c
	}
	if is.reg == "Z" {
		g.p("VSCALEFPS %s, %s, %s", e.t1, e.t2, e.t2) // · 2^n
		g.p("VMOVAPS.Z %s, %s, %s", e.t2, e.k, x)
		return
	}
	g.p("VMULPS %s, %s, %s", e.t1, e.t2, x)
	g.p("VANDNPS %s, %s, %s", x, e.t3, x) // x &^ zero-mask
}

// expSum writes func expSum_isa(x *float32, n int, m float32) float32:
// x[i] = e^(x[i]-m) over n (a multiple of the vector length) elements,
// returning their sum. m = -Inf counts as 0 (an all-masked row gives zeros).
func (g *gen) expSum(is isa) {
	v := func(i int) string { return fmt.Sprintf("%s%d", is.reg, i) }
	name := "expSum_" + is.name
	fmt.Fprintf(&g.b, "\n// func %s(x *float32, n int, m float32) float32\n", name)
	fmt.Fprintf(&g.b, "TEXT ·%s(SB), NOSPLIT, $0-28\n", name)
	e := expRegs{hi: v(8), lo: v(9), t1: v(10), t2: v(11), t3: v(12), k: "K1"}
	g.loadExpConsts(e)
	g.p("MOVQ x+0(FP), SI")
	g.p("MOVQ n+8(FP), CX")
	g.p("VBROADCASTSS m+16(FP), %s", v(0))
	g.mInfToZero(is, v(0), v(1))
	g.zero(is, v(2))
	g.p("SHRQ $%d, CX", log2(is.vl))
	g.p("JZ done")
	g.label("loop")
	g.p("VMOVUPS (SI), %s", v(4))
	g.p("VSUBPS %s, %s, %s", v(0), v(4), v(4))
	g.exp(is, e, v(4))
	g.p("VMOVUPS %s, (SI)", v(4))
	g.p("VADDPS %s, %s, %s", v(4), v(2), v(2))
	g.p("ADDQ $%d, SI", is.vl*4)
	g.p("DECQ CX")
	g.p("JNZ loop")
	g.label("done")
	g.hsum(is, v(2), v(3))
	g.p("VMOVSS X2, ret+24(FP)")
	g.p("VZEROUPPER")
	g.p("RET")
}

// mInfToZero sets lanes of m that are -Inf to 0 (tmp is clobbered).
func (g *gen) mInfToZero(is isa, m, tmp string) {
	if is.reg == "Z" {
		g.p("VCMPPS $4, expNegInf<>(SB), %s, K2", m) // m != -Inf (NEQ_UQ)
		g.p("VMOVAPS.Z %s, K2, %s", m, m)
		return
	}
	g.p("VCMPPS $4, expNegInf<>(SB), %s, %s", m, tmp)
	g.p("VANDPS %s, %s, %s", tmp, m, m)
}

// hsum leaves the sum of x's lanes in the low lane of x (as X register).
func (g *gen) hsum(is isa, x, tmp string) { g.hfold(is, "ADD", x, tmp) }

// hfold folds x's lanes with op (ADD or MAX): halves, then pairs, then
// neighbours, leaving the result in the low lane of x (as X register).
func (g *gen) hfold(is isa, op, x, tmp string) {
	xn := "X" + x[1:]
	tn := "X" + tmp[1:]
	yn := "Y" + x[1:]
	ytn := "Y" + tmp[1:]
	if is.reg == "Z" {
		g.p("VEXTRACTF64X4 $1, %s, %s", x, ytn)
		g.p("V%sPS %s, %s, %s", op, ytn, yn, yn)
	}
	g.p("VEXTRACTF128 $1, %s, %s", yn, tn)
	g.p("V%sPS %s, %s, %s", op, tn, xn, xn)
	g.p("VMOVHLPS %s, %s, %s", xn, tn, tn)
	g.p("V%sPS %s, %s, %s", op, tn, xn, xn)
	g.p("VMOVSHDUP %s, %s", xn, tn)
	g.p("V%sSS %s, %s, %s", op, tn, xn, xn)
}

// rowMax writes func rowMax_isa(x *float32, n int, m float32) float32:
// the max of m and x's n elements (a multiple of the vector length).
func (g *gen) rowMax(is isa) {
	v := func(i int) string { return fmt.Sprintf("%s%d", is.reg, i) }
	name := "rowMax_" + is.name
	fmt.Fprintf(&g.b, "\n// func %s(x *float32, n int, m float32) float32\n", name)
	fmt.Fprintf(&g.b, "TEXT ·%s(SB), NOSPLIT, $0-28\n", name)
	g.p("MOVQ x+0(FP), SI")
	g.p("MOVQ n+8(FP), CX")
	g.p("VBROADCASTSS m+16(FP), %s", v(0))
	g.p("SHRQ $%d, CX", log2(is.vl))
	g.p("JZ done")
	g.label("loop")
	g.p("VMAXPS (SI), %s, %s", v(0), v(0))
	g.p("ADDQ $%d, SI", is.vl*4)
	g.p("DECQ CX")
	g.p("JNZ loop")
	g.label("done")
	g.hfold(is, "MAX", v(0), v(1))
	g.p("VMOVSS X0, ret+24(FP)")
	g.p("VZEROUPPER")
	g.p("RET")
}

// siluMul writes func siluMul_isa(dst, g, u *float32, n int):
// dst[i] = g[i] / (1 + e^-g[i]) * u[i] over n (a multiple of the vector
// length) elements.
func (g *gen) siluMul(is isa) {
	v := func(i int) string { return fmt.Sprintf("%s%d", is.reg, i) }
	name := "siluMul_" + is.name
	fmt.Fprintf(&g.b, "\n// func %s(dst, gate, u *float32, n int)\n", name)
	fmt.Fprintf(&g.b, "TEXT ·%s(SB), NOSPLIT, $0-32\n", name)
	e := expRegs{hi: v(8), lo: v(9), t1: v(10), t2: v(11), t3: v(12), k: "K1"}
	g.loadExpConsts(e)
	g.p("MOVQ dst+0(FP), DI")
	g.p("MOVQ gate+8(FP), SI")
	g.p("MOVQ u+16(FP), DX")
	g.p("MOVQ n+24(FP), CX")
	g.p("SHRQ $%d, CX", log2(is.vl))
	g.p("JZ done")
	g.zero(is, v(0))
	g.label("loop")
	g.p("VMOVUPS (SI), %s", v(1))
	g.p("VSUBPS %s, %s, %s", v(1), v(0), v(2)) // -g
	g.exp(is, e, v(2))
	g.p("VADDPS expOne<>(SB), %s, %s", v(2), v(2))
	g.p("VDIVPS %s, %s, %s", v(2), v(1), v(1)) // g / (1 + e^-g)
	g.p("VMULPS (DX), %s, %s", v(1), v(1))
	g.p("VMOVUPS %s, (DI)", v(1))
	for _, r := range []string{"DI", "SI", "DX"} {
		g.p("ADDQ $%d, %s", is.vl*4, r)
	}
	g.p("DECQ CX")
	g.p("JNZ loop")
	g.label("done")
	g.p("VZEROUPPER")
	g.p("RET")
}

func (g *gen) zero(is isa, x string) {
	if is.reg == "Z" {
		g.p("VPXORD %s, %s, %s", x, x, x)
	} else {
		g.p("VXORPS %s, %s, %s", x, x, x)
	}
}

func log2(n int) int {
	l := 0
	for 1<<l < n {
		l++
	}
	return l
}

func main() {
	var s gen
	s.b.WriteString("// Code generated by gen_flash.go; DO NOT EDIT.\n\n//go:build amd64 && !purego\n\n#include \"textflag.h\"\n")
	for _, c := range expConsts {
		s.b.WriteString("\n")
		bits := math.Float32bits(float32(c.val))
		for j := 0; j < 16; j++ {
			fmt.Fprintf(&s.b, "DATA %s<>+%d(SB)/4, $0x%08x\n", c.name, 4*j, bits)
		}
		fmt.Fprintf(&s.b, "GLOBL %s<>(SB), RODATA|NOPTR, $64\n", c.name)
	}
	var gob bytes.Buffer
	gob.WriteString("// Code generated by gen_flash.go; DO NOT EDIT.\n\n//go:build amd64 && !purego\n\npackage kernels\n\n")
	for _, is := range isas {
		s.expSum(is)
		s.rowMax(is)
		s.siluMul(is)
		fmt.Fprintf(&gob, "//go:noescape\nfunc expSum_%s(x *float32, n int, m float32) float32\n\n", is.name)
		fmt.Fprintf(&gob, "//go:noescape\nfunc rowMax_%s(x *float32, n int, m float32) float32\n\n", is.name)
		fmt.Fprintf(&gob, "//go:noescape\nfunc siluMul_%s(dst, gate, u *float32, n int)\n\n", is.name)
		for nv := 1; nv < len(is.rmax); nv++ {
			for r := 1; r <= is.rmax[nv]; r++ {
				s.nnTile(is, r, nv)
				fmt.Fprintf(&gob, "//go:noescape\nfunc %s(dst *float32, ldd int, a *float32, lda int, b *float32, ldb int, kn int, acc int)\n\n", tileName(is, r, nv))
			}
		}
	}
	for _, is := range isas {
		fmt.Fprintf(&gob, "// nnTiles_%s holds the %s NN tile kernels by vectors and rows.\n", is.name, is.name)
		fmt.Fprintf(&gob, "var nnTiles_%s = [%d][17]nnTileFn{\n", is.name, len(is.rmax))
		for nv := 1; nv < len(is.rmax); nv++ {
			fmt.Fprintf(&gob, "\t%d: {", nv)
			for r := 1; r <= is.rmax[nv]; r++ {
				fmt.Fprintf(&gob, "%d: %s, ", r, tileName(is, r, nv))
			}
			gob.WriteString("},\n")
		}
		gob.WriteString("}\n\n")
	}
	if err := os.WriteFile("flash_amd64.s", s.b.Bytes(), 0o644); err != nil {
		panic(err)
	}
	src, err := format.Source(gob.Bytes())
	if err != nil {
		os.WriteFile("flash_tiles_amd64.go", gob.Bytes(), 0o644)
		panic(err)
	}
	if err := os.WriteFile("flash_tiles_amd64.go", src, 0o644); err != nil {
		panic(err)
	}
}
