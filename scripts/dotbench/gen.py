# Writes dot_amd64.s: the loops main.go times (python3 gen.py).
def dpbf16ps(dst, src1, src2):
    """VDPBF16PS zmm_dst, zmm_src1, zmm_src2 (registers 0-15), EVEX-encoded:
    Go's assembler has no AVX512_BF16 mnemonics."""
    R = 0 if dst >= 8 else 1
    B = 0 if src2 >= 8 else 1
    p0 = (R << 7) | (1 << 6) | (B << 5) | (1 << 4) | 0b10  # 0F38 map
    p1 = (((~src1) & 0xF) << 3) | (1 << 2) | 0b10          # W0, vvvv, F3
    p2 = (0b10 << 5) | (1 << 3)                              # 512-bit
    modrm = 0xC0 | ((dst & 7) << 3) | (src2 & 7)
    return "\tBYTE $0x62; BYTE $0x%02X; BYTE $0x%02X; BYTE $0x%02X; BYTE $0x52; BYTE $0x%02X\n" % (p0, p1, p2, modrm)

def fn(name, body):
    # Every register starts as bf16 pairs of 1.0 (as f32: ~1.0), never
    # denormal: denormal f32 operands take slow microcode paths.
    s = "TEXT ·%s(SB), NOSPLIT, $0-8\n\tMOVQ n+0(FP), CX\n\tMOVL $0x3f803f80, AX\n" % name
    s += "".join("\tVPBROADCASTD AX, Z%d\n" % i for i in range(16))
    return s + "loop:\n" + body + "\tDECQ CX\n\tJNZ loop\n\tVZEROUPPER\n\tRET\n\n"

out = '#include "textflag.h"\n\n'
# One 4-token x 2-row tile step over 32 bf16 weights per row, as a GEMM
# tile runs it. Weights in Z8, Z9; tokens' activations in Z10-Z13;
# accumulators Z0-Z7.
dp = ""
for r in range(2):
    for t in range(4):
        dp += dpbf16ps(r * 4 + t, 10 + t, 8 + r)
out += fn("dpTile", dp)
# The same with activations split into bf16 hi and lo halves: twice the
# dot products (hi in Z10-Z13, lo reusing them: the cost is the count).
out += fn("dpSplitTile", dp + dp)
# f32 FMA tile: widen each row's 32 bf16 weights into two f32 vectors
# (shift and mask), then 2 FMAs per token and row.
fma = ""
for r in range(2):
    fma += "\tVPSLLD $16, Z%d, Z14\n\tVPANDD Z15, Z%d, Z%d\n" % (8 + r, 8 + r, 16 + r)
    for t in range(4):
        fma += "\tVFMADD231PS Z14, Z%d, Z%d\n\tVFMADD231PS Z%d, Z%d, Z%d\n" % (10 + t, r * 4 + t, 16 + r, 10 + t, r * 4 + t)
out += fn("fmaTile", fma)
open("dot_amd64.s", "w").write(out)
