//go:build ignore

// gen_asm writes gemm_amd64.s and gemm_tiles_amd64.go: the register-blocked
// GEMM tile kernels for every weight dtype, tile shape and ISA.
//
//	go run gen_asm.go
//
// A tile kernel computes, for t < T tokens and r < R weight rows,
//
//	dst[t*ldd+r] (=|+=) scale[r] * sum_{k<kn} x[t*ldx+k] * w[r*ldw+k]
//
// with kn a multiple of the vector length. Each k step loads T activation
// vectors and R weight vectors (upcast in registers) and issues T*R FMAs
// into T*R vector accumulators, reduced horizontally once at the end.
package main

import (
	"bytes"
	"fmt"
	"go/format"
	"os"
)

type isa struct {
	name string
	vl   int    // f32 lanes
	reg  string // vector register prefix
	// tiles lists the (T, R) shapes generated.
	tiles [][2]int
}

type dtype struct {
	name  string // Go name part
	esz   int    // bytes per weight
	shift int    // log2(esz)
}

var isas = []isa{
	{"avx512", 16, "Z", [][2]int{{1, 1}, {2, 1}, {3, 1}, {4, 1}, {1, 4}, {2, 4}, {3, 4}, {4, 4}, {1, 8}}},
	{"avx2", 8, "Y", [][2]int{{1, 1}, {2, 1}, {3, 1}, {4, 1}, {1, 2}, {2, 2}, {3, 2}, {4, 2}, {1, 4}}},
}

var dtypes = []dtype{{"F32", 4, 2}, {"BF16", 2, 1}, {"F16", 2, 1}, {"I8", 1, 0}}

type gen struct {
	b bytes.Buffer
}

func (g *gen) p(format string, args ...any) { fmt.Fprintf(&g.b, "\t"+format+"\n", args...) }
func (g *gen) label(l string)               { fmt.Fprintf(&g.b, "%s:\n", l) }

// prefetchSplit emits a tile's K loops twice when it prefetches (pfOK):
// once prefetching the weights of the next block (the prefetch base is
// the argument pfArg, zero meaning none) and once without, both ending at
// the label reduce.
func (g *gen) prefetchSplit(pfOK bool, pfArg string, R int, pfRegs []string, loops func(prefix string, pf bool)) {
	if pfOK {
		g.p("MOVQ %s, %s", pfArg, pfRegs[0])
		g.p("TESTQ %s, %s", pfRegs[0], pfRegs[0])
		g.p("JZ nopf")
		g.p("ADDQ DI, %s", pfRegs[0])
		if R > 4 {
			g.p("LEAQ (%s)(R10*4), %s", pfRegs[0], pfRegs[1])
		}
		loops("pf", true)
		g.p("JMP reduce")
		g.label("nopf")
	}
	loops("", false)
	g.label("reduce")
}

func funcName(d dtype, is isa, T, R int) string {
	return fmt.Sprintf("tile%s_%dx%d_%s", d.name, T, R, is.name)
}

// rowAddr addresses row i (0..7) of a matrix with group bases (rows 0-3 and
// 4-7), a stride register l and its triple l3.
func rowAddr(bases []string, l, l3 string, i int) string {
	b := bases[i/4]
	switch i % 4 {
	case 0:
		return fmt.Sprintf("(%s)", b)
	case 1:
		return fmt.Sprintf("(%s)(%s*1)", b, l)
	case 2:
		return fmt.Sprintf("(%s)(%s*2)", b, l)
	}
	return fmt.Sprintf("(%s)(%s*1)", b, l3)
}

func (g *gen) tile(d dtype, is isa, T, R int) {
	v := func(i int) string { return fmt.Sprintf("%s%d", is.reg, i) }
	y := func(i int) string { return fmt.Sprintf("Y%d", i) }
	x := func(i int) string { return fmt.Sprintf("X%d", i) }
	acc := func(t, r int) int { return t*R + r }
	nacc := T * R
	xr := func(t int) int { return nacc + t }
	wr := func(r int) int { return nacc + T + r }
	if nacc > 16 || nacc+T+R > map[string]int{"Z": 32, "Y": 16}[is.reg] {
		panic("too many registers")
	}
	fmt.Fprintf(&g.b, "\n// func %s(dst *float32, ldd int, x *float32, ldx int, w unsafe.Pointer, ldw int, kn int, scales *float32, flags int, pf int)\n", funcName(d, is, T, R))
	fmt.Fprintf(&g.b, "TEXT ·%s(SB), NOSPLIT, $0-80\n", funcName(d, is, T, R))
	g.p("MOVQ dst+0(FP), DX")
	g.p("MOVQ ldd+8(FP), BX")
	g.p("SHLQ $2, BX")
	g.p("LEAQ (BX)(BX*2), R12")
	g.p("MOVQ x+16(FP), SI")
	g.p("MOVQ ldx+24(FP), R8")
	g.p("SHLQ $2, R8")
	g.p("LEAQ (R8)(R8*2), R9")
	g.p("MOVQ w+32(FP), DI")
	g.p("MOVQ ldw+40(FP), R10")
	if d.shift > 0 {
		g.p("SHLQ $%d, R10", d.shift)
	}
	g.p("LEAQ (R10)(R10*2), R11")
	wb := []string{"DI"}
	if R > 4 {
		g.p("LEAQ (DI)(R10*4), R13")
		wb = append(wb, "R13")
	}
	g.p("MOVQ kn+48(FP), CX")
	g.p("SHRQ $%d, CX", log2(is.vl))
	if d.name == "I8" {
		g.p("MOVQ scales+56(FP), AX")
	}
	for i := 0; i < nacc; i++ {
		if is.reg == "Z" {
			g.p("VPXORD %s, %s, %s", v(i), v(i), v(i))
		} else {
			g.p("VXORPS %s, %s, %s", v(i), v(i), v(i))
		}
	}
	// Single-token tiles stream weights from memory: unroll so each
	// iteration consumes a 64-byte line per row, and prefetch the same
	// line of the next tile's rows (R rows further on).
	U := 1
	if unroll {
		U = max(1, 64/(is.vl*d.esz))
	}
	// Weight prefetch pointers: single-token tiles have the x stride
	// registers free, others use R13 (free when R <= 4).
	pfRegs := []string{"R13"}
	if T == 1 {
		pfRegs = []string{"R8", "R9"}
	}
	pfOK := prefetch != "" && R >= 2 && (T == 1 || R <= 4)
	// Single-token bf16 tiles on AVX-512 avoid the VPMOVZXWD shuffle (and its
	// half-line loads, which stream from DRAM measurably slower): a whole
	// 64-byte line of 32 weights splits into even (shift) and odd (mask)
	// elements, and x is split the same way with two permutes per step.
	evenOdd := d.name == "BF16" && is.reg == "Z" && T == 1 && R <= 8
	if evenOdd {
		U = 2
		g.p("VMOVDQU32 bf16EvenIdx<>(SB), Z30")
		g.p("VMOVDQU32 bf16OddIdx<>(SB), Z29")
		g.p("MOVL $0xffff0000, AX")
		g.p("VPBROADCASTD AX, Z28")
	}
	body := func(u int, pfNow bool) {
		off := func(a string, o int) string {
			if o == 0 {
				return a
			}
			return fmt.Sprintf("%d%s", o, a)
		}
		xo, wo := u*is.vl*4, u*is.vl*d.esz
		for t := 0; t < T; t++ {
			g.p("VMOVUPS %s, %s", off(rowAddr([]string{"SI"}, "R8", "R9", t), xo), v(xr(t)))
		}
		for r := 0; r < R; r++ {
			if pfNow {
				g.p("%s %s", prefetch, rowAddr(pfRegs, "R10", "R11", r))
			}
			m := off(rowAddr(wb, "R10", "R11", r), wo)
			// f32 weights with one token: FMA straight from memory.
			if d.name == "F32" && T == 1 {
				g.p("VFMADD231PS %s, %s, %s", m, v(xr(0)), v(acc(0, r)))
				continue
			}
			w := v(wr(r))
			switch d.name {
			case "F32":
				g.p("VMOVUPS %s, %s", m, w)
			case "BF16":
				g.p("VPMOVZXWD %s, %s", m, w)
				g.p("VPSLLD $16, %s, %s", w, w)
			case "F16":
				g.p("VCVTPH2PS %s, %s", m, w)
			case "I8":
				g.p("VPMOVSXBD %s, %s", m, w)
				g.p("VCVTDQ2PS %s, %s", w, w)
			}
			for t := 0; t < T; t++ {
				g.p("VFMADD231PS %s, %s, %s", v(xr(t)), w, v(acc(t, r)))
			}
		}
	}
	advance := func(steps int, pfNow bool) {
		g.p("ADDQ $%d, SI", steps*is.vl*4)
		for _, b := range wb {
			g.p("ADDQ $%d, %s", steps*is.vl*d.esz, b)
		}
		if pfNow {
			for i := 0; i < (R+3)/4; i++ {
				g.p("ADDQ $%d, %s", steps*is.vl*d.esz, pfRegs[i])
			}
		}
	}
	bodyEO := func(pfNow bool) {
		xe, xo := v(xr(0)), v(31)
		g.p("VMOVUPS (SI), %s", xe)
		g.p("VPERMT2PS 64(SI), Z30, %s", xe)
		g.p("VMOVUPS (SI), %s", xo)
		g.p("VPERMT2PS 64(SI), Z29, %s", xo)
		for r := 0; r < R; r++ {
			if pfNow {
				g.p("%s %s", prefetch, rowAddr(pfRegs, "R10", "R11", r))
			}
			w, lo := v(wr(r)), v(wr(r)+R)
			g.p("VMOVDQU32 %s, %s", rowAddr(wb, "R10", "R11", r), w)
			g.p("VPSLLD $16, %s, %s", w, lo)
			g.p("VPANDD Z28, %s, %s", w, w)
			g.p("VFMADD231PS %s, %s, %s", xe, lo, v(acc(0, r)))
			g.p("VFMADD231PS %s, %s, %s", xo, w, v(acc(0, r)))
		}
	}
	loops := func(lp string, pf bool) {
		if U > 1 {
			g.p("SHRQ $%d, CX", log2(U))
			g.p("JZ %stail", lp)
			g.label(lp + "loop")
			if evenOdd {
				bodyEO(pf)
			} else {
				for u := 0; u < U; u++ {
					body(u, pf && u == 0)
				}
			}
			advance(U, pf)
			g.p("DECQ CX")
			g.p("JNZ %sloop", lp)
			g.label(lp + "tail")
			g.p("MOVQ kn+48(FP), CX")
			g.p("SHRQ $%d, CX", log2(is.vl))
			g.p("ANDQ $%d, CX", U-1)
			g.p("JZ reduce")
			g.label(lp + "loop1")
			body(0, false)
			advance(1, false)
			g.p("DECQ CX")
			g.p("JNZ %sloop1", lp)
		} else {
			g.p("TESTQ CX, CX")
			g.p("JZ reduce")
			g.label(lp + "loop")
			body(0, pf)
			advance(1, pf)
			g.p("DECQ CX")
			g.p("JNZ %sloop", lp)
		}
	}
	g.prefetchSplit(pfOK, "pf+72(FP)", R, pfRegs, loops)
	// Fold 512 -> 256 bits.
	if is.reg == "Z" {
		for i := 0; i < nacc; i++ {
			tmp := 16 + i%16
			g.p("VEXTRACTF64X4 $1, %s, %s", v(i), y(tmp))
			g.p("VADDPS %s, %s, %s", y(tmp), y(i), y(i))
		}
	}
	dstAddr := func(t, r int) string {
		b := rowAddr([]string{"DX"}, "BX", "R12", t)
		if r == 0 {
			return b
		}
		return fmt.Sprintf("%d%s", 4*r, b)
	}
	type result struct {
		reg  int  // X register holding the result(s)
		t, r int  // first output
		quad bool // four consecutive rows, else one scalar
	}
	var res []result
	if R%4 == 0 {
		// Four rows at once: [sum a, sum b, sum c, sum d] via horizontal adds.
		for t := 0; t < T; t++ {
			for r := 0; r < R; r += 4 {
				a, b, c, e := acc(t, r), acc(t, r+1), acc(t, r+2), acc(t, r+3)
				g.p("VHADDPS %s, %s, %s", y(b), y(a), y(a))
				g.p("VHADDPS %s, %s, %s", y(e), y(c), y(c))
				g.p("VHADDPS %s, %s, %s", y(c), y(a), y(a))
				g.p("VEXTRACTF128 $1, %s, %s", y(a), x(b))
				g.p("VADDPS %s, %s, %s", x(b), x(a), x(a))
				if d.name == "I8" {
					g.p("VMULPS %d(AX), %s, %s", 4*r, x(a), x(a))
				}
				res = append(res, result{a, t, r, true})
			}
		}
	} else {
		tmp := nacc // first free register below 16
		for t := 0; t < T; t++ {
			for r := 0; r < R; r++ {
				a := acc(t, r)
				g.p("VEXTRACTF128 $1, %s, %s", y(a), x(tmp))
				g.p("VADDPS %s, %s, %s", x(tmp), x(a), x(a))
				g.p("VMOVHLPS %s, %s, %s", x(a), x(tmp), x(tmp))
				g.p("VADDPS %s, %s, %s", x(tmp), x(a), x(a))
				g.p("VMOVSHDUP %s, %s", x(a), x(tmp))
				g.p("VADDSS %s, %s, %s", x(tmp), x(a), x(a))
				if d.name == "I8" {
					g.p("VMULSS %d(AX), %s, %s", 4*r, x(a), x(a))
				}
				res = append(res, result{a, t, r, false})
			}
		}
	}
	g.p("MOVQ flags+64(FP), CX")
	g.p("TESTQ CX, CX")
	g.p("JZ store")
	for _, q := range res {
		if q.quad {
			g.p("VADDPS %s, %s, %s", dstAddr(q.t, q.r), x(q.reg), x(q.reg))
		} else {
			g.p("VADDSS %s, %s, %s", dstAddr(q.t, q.r), x(q.reg), x(q.reg))
		}
	}
	g.label("store")
	for _, q := range res {
		if q.quad {
			g.p("VMOVUPS %s, %s", x(q.reg), dstAddr(q.t, q.r))
		} else {
			g.p("VMOVSS %s, %s", x(q.reg), dstAddr(q.t, q.r))
		}
	}
	g.p("VZEROUPPER")
	g.p("RET")
}

// tileI8Q8 writes a tile kernel of int8 weights times int8 activations
// (see quant.go) for AVX512-VNNI. Each 64-column step loads T activation
// vectors and their lane scales and R weight vectors, flips the weights'
// sign bits (w+128: VPDPBUSD multiplies unsigned by signed bytes), and per
// token and row sums four products per int32 lane with VPDPBUSD, converts
// the lanes to float and accumulates them times their block scales. The
// reduction subtracts the per-token offset corr (the +128) once, unless
// flags accumulates into dst, and applies the weight row scale.
//
//	dst[t*ldd+r] (=|+=) scales[r] * (sum_{k<kn} lanes·(q[t,k]·(w[r,k]+128)) - corr[t])
func (g *gen) tileI8Q8(is isa, T, R int) {
	z := func(i int) string { return fmt.Sprintf("Z%d", i) }
	y := func(i int) string { return fmt.Sprintf("Y%d", i) }
	x := func(i int) string { return fmt.Sprintf("X%d", i) }
	acc := func(t, r int) int { return t*R + r }
	nacc := T * R
	xr := func(t int) int { return 16 + t }
	sr := func(t int) int { return 20 + t }
	const wreg, c80 = 24, 31
	tmp := func(t int) int { return 25 + t }
	if nacc > 16 || T > 4 {
		panic("too many registers")
	}
	name := q8FuncName(is, T, R)
	fmt.Fprintf(&g.b, "\n// func %s%s\n", name, q8Sig)
	fmt.Fprintf(&g.b, "TEXT ·%s(SB), NOSPLIT, $0-96\n", name)
	g.p("MOVQ dst+0(FP), DX")
	g.p("MOVQ ldd+8(FP), BX")
	g.p("SHLQ $2, BX")
	g.p("LEAQ (BX)(BX*2), R12")
	g.p("MOVQ x+16(FP), SI")
	g.p("MOVQ ldx+24(FP), R8")
	g.p("LEAQ (R8)(R8*2), R9")
	g.p("MOVQ lanes+64(FP), AX")
	g.p("MOVQ w+32(FP), DI")
	g.p("MOVQ ldw+40(FP), R10")
	g.p("LEAQ (R10)(R10*2), R11")
	wb := []string{"DI"}
	if R > 4 {
		g.p("LEAQ (DI)(R10*4), R13")
		wb = append(wb, "R13")
	}
	g.p("MOVL $0x80808080, CX")
	g.p("VPBROADCASTD CX, %s", z(c80))
	g.p("MOVQ kn+48(FP), CX")
	g.p("SHRQ $6, CX")
	for i := 0; i < nacc; i++ {
		g.p("VPXORD %s, %s, %s", z(i), z(i), z(i))
	}
	pfRegs := []string{"R13"}
	if T == 1 {
		pfRegs = []string{"R8", "R9"}
	}
	pfOK := R >= 2 && (T == 1 || R <= 4)
	body := func(pfNow bool) {
		for t := 0; t < T; t++ {
			g.p("VMOVDQU64 %s, %s", rowAddr([]string{"SI"}, "R8", "R9", t), z(xr(t)))
			g.p("VMOVUPS %s, %s", rowAddr([]string{"AX"}, "R8", "R9", t), z(sr(t)))
		}
		for r := 0; r < R; r++ {
			if pfNow {
				g.p("%s %s", prefetch, rowAddr(pfRegs, "R10", "R11", r))
			}
			g.p("VPXORD %s, %s, %s", rowAddr(wb, "R10", "R11", r), z(c80), z(wreg))
			for t := 0; t < T; t++ {
				v := z(tmp(t))
				g.p("VPXORD %s, %s, %s", v, v, v)
				g.p("VPDPBUSD %s, %s, %s", z(xr(t)), z(wreg), v)
				g.p("VCVTDQ2PS %s, %s", v, v)
				g.p("VFMADD231PS %s, %s, %s", z(sr(t)), v, z(acc(t, r)))
			}
		}
		g.p("ADDQ $64, SI")
		g.p("ADDQ $64, AX")
		for _, b := range wb {
			g.p("ADDQ $64, %s", b)
		}
		if pfNow {
			for i := 0; i < (R+3)/4; i++ {
				g.p("ADDQ $64, %s", pfRegs[i])
			}
		}
	}
	loop := func(lp string, pf bool) {
		g.p("TESTQ CX, CX")
		g.p("JZ reduce")
		g.label(lp + "loop")
		body(pf)
		g.p("DECQ CX")
		g.p("JNZ %sloop", lp)
	}
	g.prefetchSplit(pfOK, "pf+88(FP)", R, pfRegs, loop)
	g.p("MOVQ scales+56(FP), AX")
	g.p("MOVQ corr+72(FP), SI")
	for i := 0; i < nacc; i++ {
		t := 16 + i%16
		g.p("VEXTRACTF64X4 $1, %s, %s", z(i), y(t))
		g.p("VADDPS %s, %s, %s", y(t), y(i), y(i))
	}
	type result struct {
		reg, t, r int
		quad      bool
	}
	var res []result
	if R%4 == 0 {
		for t := 0; t < T; t++ {
			for r := 0; r < R; r += 4 {
				a, b, c, e := acc(t, r), acc(t, r+1), acc(t, r+2), acc(t, r+3)
				g.p("VHADDPS %s, %s, %s", y(b), y(a), y(a))
				g.p("VHADDPS %s, %s, %s", y(e), y(c), y(c))
				g.p("VHADDPS %s, %s, %s", y(c), y(a), y(a))
				g.p("VEXTRACTF128 $1, %s, %s", y(a), x(b))
				g.p("VADDPS %s, %s, %s", x(b), x(a), x(a))
				res = append(res, result{a, t, r, true})
			}
		}
	} else {
		tr := nacc
		for t := 0; t < T; t++ {
			for r := 0; r < R; r++ {
				a := acc(t, r)
				g.p("VEXTRACTF128 $1, %s, %s", y(a), x(tr))
				g.p("VADDPS %s, %s, %s", x(tr), x(a), x(a))
				g.p("VMOVHLPS %s, %s, %s", x(a), x(tr), x(tr))
				g.p("VADDPS %s, %s, %s", x(tr), x(a), x(a))
				g.p("VMOVSHDUP %s, %s", x(a), x(tr))
				g.p("VADDSS %s, %s, %s", x(tr), x(a), x(a))
				res = append(res, result{a, t, r, false})
			}
		}
	}
	dstAddr := func(t, r int) string {
		b := rowAddr([]string{"DX"}, "BX", "R12", t)
		if r == 0 {
			return b
		}
		return fmt.Sprintf("%d%s", 4*r, b)
	}
	g.p("MOVQ flags+80(FP), CX")
	g.p("TESTQ CX, CX")
	g.p("JNZ accumulate")
	for _, q := range res {
		if q.quad {
			g.p("VBROADCASTSS %d(SI), X30", 4*q.t)
			g.p("VSUBPS X30, %s, %s", x(q.reg), x(q.reg))
			g.p("VMULPS %d(AX), %s, %s", 4*q.r, x(q.reg), x(q.reg))
			g.p("VMOVUPS %s, %s", x(q.reg), dstAddr(q.t, q.r))
		} else {
			g.p("VSUBSS %d(SI), %s, %s", 4*q.t, x(q.reg), x(q.reg))
			g.p("VMULSS %d(AX), %s, %s", 4*q.r, x(q.reg), x(q.reg))
			g.p("VMOVSS %s, %s", x(q.reg), dstAddr(q.t, q.r))
		}
	}
	g.p("VZEROUPPER")
	g.p("RET")
	g.label("accumulate")
	for _, q := range res {
		if q.quad {
			g.p("VMULPS %d(AX), %s, %s", 4*q.r, x(q.reg), x(q.reg))
			g.p("VADDPS %s, %s, %s", dstAddr(q.t, q.r), x(q.reg), x(q.reg))
			g.p("VMOVUPS %s, %s", x(q.reg), dstAddr(q.t, q.r))
		} else {
			g.p("VMULSS %d(AX), %s, %s", 4*q.r, x(q.reg), x(q.reg))
			g.p("VADDSS %s, %s, %s", dstAddr(q.t, q.r), x(q.reg), x(q.reg))
			g.p("VMOVSS %s, %s", x(q.reg), dstAddr(q.t, q.r))
		}
	}
	g.p("VZEROUPPER")
	g.p("RET")
}

// q8Sig is the Go signature of the int8-activation tiles; ldx is in bytes
// and strides both x (int8) and lanes (float32).
const q8Sig = "(dst *float32, ldd int, x *int8, ldx int, w unsafe.Pointer, ldw int, kn int, scales *float32, lanes *float32, corr *float32, flags int, pf int)"

func q8FuncName(is isa, T, R int) string {
	return fmt.Sprintf("tileI8Q8_%dx%d_%svnni", T, R, is.name)
}

func log2(n int) int {
	l := 0
	for 1<<l < n {
		l++
	}
	return l
}

// Tuning switches for the single-token (matvec) tiles; the prefetch
// distance (pf, bytes ahead of w) is chosen at run time.
var (
	unroll   = true
	prefetch = "PREFETCHT1"
)

func main() {
	var s gen
	s.b.WriteString("// Code generated by gen_asm.go; DO NOT EDIT.\n\n//go:build amd64 && !purego\n\n#include \"textflag.h\"\n")
	// VPERMT2PS indices gathering the even / odd elements of 32 floats.
	for i, name := range []string{"bf16EvenIdx", "bf16OddIdx"} {
		s.b.WriteString("\n")
		for j := 0; j < 16; j++ {
			fmt.Fprintf(&s.b, "DATA %s<>+%d(SB)/4, $%d\n", name, 4*j, 2*j+i)
		}
		fmt.Fprintf(&s.b, "GLOBL %s<>(SB), RODATA|NOPTR, $64\n", name)
	}
	var gob bytes.Buffer
	gob.WriteString("// Code generated by gen_asm.go; DO NOT EDIT.\n\n//go:build amd64 && !purego\n\npackage kernels\n\nimport \"unsafe\"\n\n")
	for _, is := range isas {
		for _, d := range dtypes {
			for _, tr := range is.tiles {
				s.tile(d, is, tr[0], tr[1])
				fmt.Fprintf(&gob, "//go:noescape\nfunc %s(dst *float32, ldd int, x *float32, ldx int, w unsafe.Pointer, ldw int, kn int, scales *float32, flags int, pf int)\n\n", funcName(d, is, tr[0], tr[1]))
			}
		}
	}
	// Int8-activation tiles need AVX512-VNNI.
	q8 := isas[0]
	for _, tr := range q8.tiles {
		s.tileI8Q8(q8, tr[0], tr[1])
		fmt.Fprintf(&gob, "//go:noescape\nfunc %s%s\n\n", q8FuncName(q8, tr[0], tr[1]), q8Sig)
	}
	// Tables of tiles: [dtype][T][R].
	for _, is := range isas {
		fmt.Fprintf(&gob, "// tiles_%s holds the %s tile kernels by dtype (F32, BF16, F16, I8), tokens and rows.\n", is.name, is.name)
		fmt.Fprintf(&gob, "var tiles_%s = [4][5][9]tileFn{\n", is.name)
		for _, d := range dtypes {
			gob.WriteString("\t{\n")
			for T := 1; T <= 4; T++ {
				fmt.Fprintf(&gob, "\t\t%d: {", T)
				for _, tr := range is.tiles {
					if tr[0] == T {
						fmt.Fprintf(&gob, "%d: %s, ", tr[1], funcName(d, is, tr[0], tr[1]))
					}
				}
				gob.WriteString("},\n")
			}
			gob.WriteString("\t},\n")
		}
		gob.WriteString("}\n\n")
	}
	fmt.Fprintf(&gob, "// tilesI8Q8_%svnni holds the int8-activation tile kernels by tokens and rows.\n", q8.name)
	fmt.Fprintf(&gob, "var tilesI8Q8_%svnni = [5][9]tileQ8Fn{\n", q8.name)
	for T := 1; T <= 4; T++ {
		fmt.Fprintf(&gob, "\t%d: {", T)
		for _, tr := range q8.tiles {
			if tr[0] == T {
				fmt.Fprintf(&gob, "%d: %s, ", tr[1], q8FuncName(q8, tr[0], tr[1]))
			}
		}
		gob.WriteString("},\n")
	}
	gob.WriteString("}\n")
	if err := os.WriteFile("gemm_amd64.s", s.b.Bytes(), 0o644); err != nil {
		panic(err)
	}
	src, err := format.Source(gob.Bytes())
	if err != nil {
		os.WriteFile("gemm_tiles_amd64.go", gob.Bytes(), 0o644)
		panic(err)
	}
	if err := os.WriteFile("gemm_tiles_amd64.go", src, 0o644); err != nil {
		panic(err)
	}
}
