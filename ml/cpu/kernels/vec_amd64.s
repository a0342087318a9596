//go:build amd64 && !purego

#include "textflag.h"

// Vector helpers. AVX-512 versions finish ragged ends with masked
// loads/stores (masked-off lanes never fault); AVX2 versions do multiples of
// 8 and leave the rest to Go.

// func dotAVX512(a, b *float32, n int) float32
TEXT ·dotAVX512(SB), NOSPLIT, $0-28
	MOVQ a+0(FP), SI
	MOVQ b+8(FP), DI
	MOVQ n+16(FP), CX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	MOVQ CX, AX
	SHRQ $6, AX
	JZ   dot16
dot64:
	VMOVUPS     (SI), Z4
	VFMADD231PS (DI), Z4, Z0
	VMOVUPS     64(SI), Z5
	VFMADD231PS 64(DI), Z5, Z1
	VMOVUPS     128(SI), Z6
	VFMADD231PS 128(DI), Z6, Z2
	VMOVUPS     192(SI), Z7
	VFMADD231PS 192(DI), Z7, Z3
	ADDQ        $256, SI
	ADDQ        $256, DI
	DECQ        AX
	JNZ         dot64
dot16:
	MOVQ CX, AX
	ANDQ $63, AX
	SHRQ $4, AX
	JZ   dotmask
dot16loop:
	VMOVUPS     (SI), Z4
	VFMADD231PS (DI), Z4, Z1
	ADDQ        $64, SI
	ADDQ        $64, DI
	DECQ        AX
	JNZ         dot16loop
dotmask:
	ANDQ $15, CX
	JZ   dotreduce
	MOVL $1, AX
	SHLL CX, AX
	DECL AX
	KMOVW AX, K1
	VMOVUPS.Z (SI), K1, Z4
	VMOVUPS.Z (DI), K1, Z5
	VFMADD231PS Z5, Z4, Z2
dotreduce:
	VADDPS        Z1, Z0, Z0
	VADDPS        Z3, Z2, Z2
	VADDPS        Z2, Z0, Z0
	VEXTRACTF64X4 $1, Z0, Y1
	VADDPS        Y1, Y0, Y0
	VEXTRACTF128  $1, Y0, X1
	VADDPS        X1, X0, X0
	VMOVHLPS      X0, X1, X1
	VADDPS        X1, X0, X0
	VMOVSHDUP     X0, X1
	VADDSS        X1, X0, X0
	VZEROUPPER
	MOVSS X0, ret+24(FP)
	RET

// func axpyAVX512(a float32, x, y *float32, n int)
TEXT ·axpyAVX512(SB), NOSPLIT, $0-32
	VBROADCASTSS a+0(FP), Z0
	MOVQ x+8(FP), SI
	MOVQ y+16(FP), DI
	MOVQ n+24(FP), CX
	MOVQ CX, AX
	SHRQ $6, AX
	JZ   axpy16
axpy64:
	VMOVUPS     (DI), Z1
	VMOVUPS     64(DI), Z2
	VMOVUPS     128(DI), Z3
	VMOVUPS     192(DI), Z4
	VFMADD231PS (SI), Z0, Z1
	VFMADD231PS 64(SI), Z0, Z2
	VFMADD231PS 128(SI), Z0, Z3
	VFMADD231PS 192(SI), Z0, Z4
	VMOVUPS     Z1, (DI)
	VMOVUPS     Z2, 64(DI)
	VMOVUPS     Z3, 128(DI)
	VMOVUPS     Z4, 192(DI)
	ADDQ        $256, SI
	ADDQ        $256, DI
	DECQ        AX
	JNZ         axpy64
axpy16:
	MOVQ CX, AX
	ANDQ $63, AX
	SHRQ $4, AX
	JZ   axpymask
axpy16loop:
	VMOVUPS     (DI), Z1
	VFMADD231PS (SI), Z0, Z1
	VMOVUPS     Z1, (DI)
	ADDQ        $64, SI
	ADDQ        $64, DI
	DECQ        AX
	JNZ         axpy16loop
axpymask:
	ANDQ $15, CX
	JZ   axpydone
	MOVL $1, AX
	SHLL CX, AX
	DECL AX
	KMOVW AX, K1
	VMOVUPS.Z   (DI), K1, Z1
	VMOVUPS.Z   (SI), K1, Z2
	VFMADD231PS Z2, Z0, Z1
	VMOVUPS     Z1, K1, (DI)
axpydone:
	VZEROUPPER
	RET

// func dotAVX2(a, b *float32, n int) float32
// n must be a multiple of 8.
TEXT ·dotAVX2(SB), NOSPLIT, $0-28
	MOVQ   a+0(FP), SI
	MOVQ   b+8(FP), DI
	MOVQ   n+16(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	MOVQ   CX, AX
	SHRQ   $5, AX
	JZ     dot8
dot32:
	VMOVUPS     (SI), Y4
	VFMADD231PS (DI), Y4, Y0
	VMOVUPS     32(SI), Y5
	VFMADD231PS 32(DI), Y5, Y1
	VMOVUPS     64(SI), Y6
	VFMADD231PS 64(DI), Y6, Y2
	VMOVUPS     96(SI), Y7
	VFMADD231PS 96(DI), Y7, Y3
	ADDQ        $128, SI
	ADDQ        $128, DI
	DECQ        AX
	JNZ         dot32
dot8:
	ANDQ $31, CX
	SHRQ $3, CX
	JZ   dotreduce
dot8loop:
	VMOVUPS     (SI), Y4
	VFMADD231PS (DI), Y4, Y1
	ADDQ        $32, SI
	ADDQ        $32, DI
	DECQ        CX
	JNZ         dot8loop
dotreduce:
	VADDPS       Y1, Y0, Y0
	VADDPS       Y3, Y2, Y2
	VADDPS       Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS       X1, X0, X0
	VMOVHLPS     X0, X1, X1
	VADDPS       X1, X0, X0
	VMOVSHDUP    X0, X1
	VADDSS       X1, X0, X0
	VZEROUPPER
	MOVSS X0, ret+24(FP)
	RET

// func axpyAVX2(a float32, x, y *float32, n int)
// n must be a multiple of 8.
TEXT ·axpyAVX2(SB), NOSPLIT, $0-32
	VBROADCASTSS a+0(FP), Y0
	MOVQ x+8(FP), SI
	MOVQ y+16(FP), DI
	MOVQ n+24(FP), CX
	SHRQ $3, CX
	JZ   axpydone
axpy8:
	VMOVUPS     (DI), Y1
	VFMADD231PS (SI), Y0, Y1
	VMOVUPS     Y1, (DI)
	ADDQ        $32, SI
	ADDQ        $32, DI
	DECQ        CX
	JNZ         axpy8
axpydone:
	VZEROUPPER
	RET

// Conversions: n must be a multiple of the vector length (16 for AVX-512,
// 8 for AVX2); Go converts the rest.

// func bf16ToF32AVX512(dst *float32, src *uint16, n int)
TEXT ·bf16ToF32AVX512(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $4, CX
	JZ   done
loop:
	VPMOVZXWD (SI), Z0
	VPSLLD    $16, Z0, Z0
	VMOVUPS   Z0, (DI)
	ADDQ      $32, SI
	ADDQ      $64, DI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

// func f16ToF32AVX512(dst *float32, src *uint16, n int)
TEXT ·f16ToF32AVX512(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $4, CX
	JZ   done
loop:
	VCVTPH2PS (SI), Z0
	VMOVUPS   Z0, (DI)
	ADDQ      $32, SI
	ADDQ      $64, DI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

// func f32ToF16AVX512(dst *uint16, src *float32, n int)
TEXT ·f32ToF16AVX512(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $4, CX
	JZ   done
loop:
	VMOVUPS   (SI), Z0
	VCVTPS2PH $0, Z0, Y1 // imm 0: round to nearest even
	VMOVDQU   Y1, (DI)
	ADDQ      $64, SI
	ADDQ      $32, DI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

// func f32ToBF16AVX512(dst *uint16, src *float32, n int)
// Round to nearest even on the bits: (b + 0x7fff + (b>>16 & 1)) >> 16;
// NaNs keep their top bits and get the quiet bit.
TEXT ·f32ToBF16AVX512(SB), NOSPLIT, $0-24
	MOVQ         dst+0(FP), DI
	MOVQ         src+8(FP), SI
	MOVQ         n+16(FP), CX
	MOVL         $0x7fff, AX
	VPBROADCASTD AX, Z10
	MOVL         $1, AX
	VPBROADCASTD AX, Z11
	MOVL         $0x40, AX
	VPBROADCASTD AX, Z12
	SHRQ         $4, CX
	JZ           done
loop:
	VMOVDQU32 (SI), Z0
	VPSRLD    $16, Z0, Z1
	VPANDD    Z11, Z1, Z1
	VPADDD    Z10, Z1, Z1
	VPADDD    Z0, Z1, Z1
	VPSRLD    $16, Z1, Z1
	VCMPPS    $3, Z0, Z0, K1 // unordered: NaN lanes
	VPSRLD    $16, Z0, K1, Z1
	VPORD     Z12, Z1, K1, Z1
	VPMOVDW   Z1, (DI)
	ADDQ      $64, SI
	ADDQ      $32, DI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

// func bf16ToF32AVX2(dst *float32, src *uint16, n int)
TEXT ·bf16ToF32AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $3, CX
	JZ   done
loop:
	VPMOVZXWD (SI), Y0
	VPSLLD    $16, Y0, Y0
	VMOVUPS   Y0, (DI)
	ADDQ      $16, SI
	ADDQ      $32, DI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

// func f16ToF32AVX2(dst *float32, src *uint16, n int)
TEXT ·f16ToF32AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $3, CX
	JZ   done
loop:
	VCVTPH2PS (SI), Y0
	VMOVUPS   Y0, (DI)
	ADDQ      $16, SI
	ADDQ      $32, DI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

// func f32ToF16AVX2(dst *uint16, src *float32, n int)
TEXT ·f32ToF16AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $3, CX
	JZ   done
loop:
	VMOVUPS   (SI), Y0
	VCVTPS2PH $0, Y0, X1
	VMOVDQU   X1, (DI)
	ADDQ      $32, SI
	ADDQ      $16, DI
	DECQ      CX
	JNZ       loop
done:
	VZEROUPPER
	RET

// func prefetchL2(p unsafe.Pointer, n int)
// Prefetches [p, p+n) into L2, one cache line at a time.
TEXT ·prefetchL2(SB), NOSPLIT, $0-16
	MOVQ p+0(FP), SI
	MOVQ n+8(FP), CX
	ADDQ $63, CX
	SHRQ $6, CX
	JZ   done
loop:
	PREFETCHT1 (SI)
	ADDQ       $64, SI
	DECQ       CX
	JNZ        loop
done:
	RET

// func quantizeQ8AVX512(q *int8, scales *float32, lanes *float32, x *float32, nblocks int) float64
// Quantizes nblocks blocks of 32 floats as quantizeQ8Generic does: d =
// max|x|/127 (0 stays 0), q = x·(1/d) rounded to nearest even, and returns
// Σ d·Σq accumulated in float64 in block order.
TEXT ·quantizeQ8AVX512(SB), NOSPLIT, $0-48
	MOVQ q+0(FP), DI
	MOVQ scales+8(FP), DX
	MOVQ lanes+16(FP), R8
	MOVQ x+24(FP), SI
	MOVQ nblocks+32(FP), CX
	MOVL $0x7fffffff, AX
	VPBROADCASTD AX, Z31
	MOVL $0x42fe0000, AX // 127
	VMOVD AX, X13
	MOVL $0x3f800000, AX // 1
	VMOVD AX, X14
	VXORPS X11, X11, X11 // zero
	VXORPD X12, X12, X12 // Σ d·Σq
	TESTQ CX, CX
	JZ   qdone
qloop:
	VMOVUPS (SI), Z0
	VMOVUPS 64(SI), Z1
	VPANDD  Z31, Z0, Z2
	VPANDD  Z31, Z1, Z3
	VMAXPS  Z3, Z2, Z2
	VEXTRACTF64X4 $1, Z2, Y3
	VMAXPS  Y3, Y2, Y2
	VEXTRACTF128 $1, Y2, X3
	VMAXPS  X3, X2, X2
	VPERMILPS $0x4e, X2, X3
	VMAXPS  X3, X2, X2
	VPERMILPS $0xb1, X2, X3
	VMAXPS  X3, X2, X2
	VDIVSS  X13, X2, X4     // d = amax/127
	VDIVSS  X4, X14, X5     // 1/d
	VCMPSS  $4, X11, X4, X6 // d != 0
	VANDPS  X6, X5, X5
	VBROADCASTSS X5, Z5
	VMULPS  Z5, Z0, Z0
	VMULPS  Z5, Z1, Z1
	VCVTPS2DQ Z0, Z0
	VCVTPS2DQ Z1, Z1
	VPADDD  Z1, Z0, Z7
	VPMOVSDB Z0, X0
	VPMOVSDB Z1, X1
	VMOVDQU X0, (DI)
	VMOVDQU X1, 16(DI)
	VMOVSS  X4, (DX)
	VBROADCASTSS X4, Y8
	VMOVUPS Y8, (R8)
	VEXTRACTI64X4 $1, Z7, Y8
	VPADDD  Y8, Y7, Y7
	VEXTRACTI128 $1, Y7, X8
	VPADDD  X8, X7, X7
	VPSHUFD $0x4e, X7, X8
	VPADDD  X8, X7, X7
	VPSHUFD $0xb1, X7, X8
	VPADDD  X8, X7, X7
	VCVTSS2SD X4, X9, X9
	VCVTDQ2PD X7, X10
	VMULSD  X10, X9, X9
	VADDSD  X9, X12, X12
	ADDQ $128, SI
	ADDQ $32, DI
	ADDQ $4, DX
	ADDQ $32, R8
	DECQ CX
	JNZ  qloop
qdone:
	VMOVSD X12, ret+40(FP)
	VZEROUPPER
	RET

// FP8 E4M3 codes become float32 through IEEE half: a code's low 7 bits em
// (exponent, mantissa) shifted left 7 are the half with exponent field e
// and mantissa m, whose value is the code's times 2^-8 for every code,
// subnormals and zero included (half's bias 15 is E4M3's 7 plus 8); the
// sign moves from bit 14 to 15 by adding bit 14 to itself. VCVTPH2PS then
// widens exactly, and the 2^8 goes into the scale. NaN codes (0x7f, 0xff)
// come out as ±480: a checkpoint or our quantizer never holds them.

// F8CVT widens the 16 FP8 codes at mem into Z5 (times 2^-8; scratch Y6,
// 0x40004000 in Y14).
#define F8CVT(mem) \
	VPMOVZXBW mem, Y6 \
	VPSLLW    $7, Y6, Y6 \
	VPAND     Y14, Y6, Y5 \
	VPADDW    Y5, Y6, Y6 \
	VCVTPH2PS Y6, Z5

// F8CONST loads F8CVT's constant (Y14) and 2^8 (Z13), the factor its
// values owe.
#define F8CONST \
	MOVL         $0x40004000, AX \
	VPBROADCASTD AX, Y14 \
	MOVL         $0x43800000, AX \
	VPBROADCASTD AX, Z13

// func f8ToF32AVX512(dst *float32, src *uint8, n int, scale float32)
// dst[i] = scale·value(src[i]), 16 values per step.
TEXT ·f8ToF32AVX512(SB), NOSPLIT, $0-28
	MOVQ         dst+0(FP), DI
	MOVQ         src+8(FP), SI
	MOVQ         n+16(FP), CX
	F8CONST
	VBROADCASTSS scale+24(FP), Z15
	VMULPS       Z13, Z15, Z15
	SHRQ         $4, CX
	JZ           done
loop:
	F8CVT((SI))
	VMULPS  Z15, Z5, Z5
	VMOVUPS Z5, (DI)
	ADDQ    $16, SI
	ADDQ    $64, DI
	DECQ    CX
	JNZ     loop
done:
	VZEROUPPER
	RET

// HSUMSCALE stores 2^8·scale·(sum of Zr's lanes) at dst (Yr, Xr: its
// halves; 2^8 in X13).
#define HSUMSCALE(Zr, Yr, Xr, scale, dst) \
	VEXTRACTF64X4 $1, Zr, Y6 \
	VADDPS        Y6, Yr, Yr \
	VEXTRACTF128  $1, Yr, X6 \
	VADDPS        X6, Xr, Xr \
	VHADDPS       Xr, Xr, Xr \
	VHADDPS       Xr, Xr, Xr \
	VMULSS        X13, Xr, Xr \
	VMULSS        scale, Xr, Xr \
	VMOVSS        Xr, dst

// func matvecF8AVX512(dst *float32, x *float32, w *uint8, scales *float32, n, k int)
// dst[r] = scales[r]·Σ_i value(w[r·k+i])·x[i] for r < n (a multiple of 4)
// and i < k (a multiple of 16): four rows share each load of x, and the
// weights are widened in registers, so memory sees one byte per weight.
TEXT ·matvecF8AVX512(SB), NOSPLIT, $0-48
	MOVQ         dst+0(FP), DI
	MOVQ         x+8(FP), SI
	MOVQ         w+16(FP), R8
	MOVQ         scales+24(FP), R9
	MOVQ         n+32(FP), R10
	MOVQ         k+40(FP), R11
	F8CONST
	SHRQ         $2, R10
	JZ           mvdone
mvrows:
	LEAQ   (R8)(R11*1), R12
	LEAQ   (R8)(R11*2), R13
	LEAQ   (R12)(R11*2), R14
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	VPXORD Z4, Z4, Z4
	MOVQ   R11, CX
	SHRQ   $4, CX
	JZ     mvreduce
	XORQ   AX, AX
	MOVQ   SI, BX
mvloop:
	VMOVUPS     (BX), Z0
	F8CVT((R8)(AX*1))
	VFMADD231PS Z5, Z0, Z1
	F8CVT((R12)(AX*1))
	VFMADD231PS Z5, Z0, Z2
	F8CVT((R13)(AX*1))
	VFMADD231PS Z5, Z0, Z3
	F8CVT((R14)(AX*1))
	VFMADD231PS Z5, Z0, Z4
	ADDQ        $16, AX
	ADDQ        $64, BX
	DECQ        CX
	JNZ         mvloop
mvreduce:
	HSUMSCALE(Z1, Y1, X1, (R9), (DI))
	HSUMSCALE(Z2, Y2, X2, 4(R9), 4(DI))
	HSUMSCALE(Z3, Y3, X3, 8(R9), 8(DI))
	HSUMSCALE(Z4, Y4, X4, 12(R9), 12(DI))
	LEAQ (R8)(R11*4), R8
	ADDQ $16, R9
	ADDQ $16, DI
	DECQ R10
	JNZ  mvrows
mvdone:
	VZEROUPPER
	RET
