package kernels

import (
	"math/rand/v2"
	"testing"
)

// fuzzGemm turns fuzzer bytes into a bounded random shape (tails in T, N and
// K, ldd > N) and checks every implementation against the float64 reference.
func fuzzGemm(f *testing.F, kind wkind) {
	f.Add(uint64(1), uint8(1), uint8(1), uint16(1), uint8(0))
	f.Add(uint64(2), uint8(4), uint8(4), uint16(64), uint8(3))
	f.Add(uint64(3), uint8(5), uint8(9), uint16(127), uint8(1))
	f.Add(uint64(4), uint8(13), uint8(7), uint16(1000), uint8(2))
	f.Add(uint64(5), uint8(1), uint8(33), uint16(896), uint8(0))
	f.Fuzz(func(t *testing.T, seed uint64, t8, n8 uint8, k16 uint16, pad uint8) {
		T, N, K := 1+int(t8)%24, 1+int(n8)%48, int(k16)%1500
		ldd := N + int(pad)%5
		r := rand.New(rand.NewPCG(seed, uint64(kind)))
		c := newGemmCase(r, kind, T, N, K, ldd)
		for _, im := range impls() {
			c.check(t, c.run(im, kind))
		}
	})
}

func FuzzGemmF32(f *testing.F)  { fuzzGemm(f, kF32) }
func FuzzGemmBF16(f *testing.F) { fuzzGemm(f, kBF16) }
func FuzzGemmF16(f *testing.F)  { fuzzGemm(f, kF16) }
func FuzzGemmI8(f *testing.F)   { fuzzGemm(f, kI8) }

// FuzzConvert checks the fast conversions bit-for-bit against the portable ones.
func FuzzConvert(f *testing.F) {
	f.Add(uint64(1), uint16(100))
	f.Fuzz(func(t *testing.T, seed uint64, n uint16) {
		r := rand.New(rand.NewPCG(seed, 7))
		src := make([]float32, int(n)%2000)
		hs := make([]uint16, len(src))
		for i := range src {
			src[i] = float32FromBits(r.Uint32())
			hs[i] = uint16(r.Uint32())
		}
		want16 := make([]uint16, len(src))
		want32 := make([]float32, len(src))
		got16 := make([]uint16, len(src))
		got32 := make([]float32, len(src))
		for _, im := range impls() {
			for _, p := range []struct {
				name      string
				fast, gen func([]uint16, []float32)
			}{{"f32ToBF16", im.f32ToBF16, f32ToBF16Generic}, {"f32ToF16", im.f32ToF16, f32ToF16Generic}} {
				p.gen(want16, src)
				p.fast(got16, src)
				for i := range src {
					if got16[i] != want16[i] && !(isNaN32(src[i]) && got16[i]&0x7f00 == want16[i]&0x7f00) {
						t.Fatalf("%s %s(%#08x) = %#04x, want %#04x", im.name, p.name, float32Bits(src[i]), got16[i], want16[i])
					}
				}
			}
			for _, p := range []struct {
				name      string
				fast, gen func([]float32, []uint16)
			}{{"bf16ToF32", im.bf16ToF32, bf16ToF32Generic}, {"f16ToF32", im.f16ToF32, f16ToF32Generic}} {
				p.gen(want32, hs)
				p.fast(got32, hs)
				for i := range hs {
					if float32Bits(got32[i]) != float32Bits(want32[i]) {
						t.Fatalf("%s %s(%#04x) = %#08x, want %#08x", im.name, p.name, hs[i], float32Bits(got32[i]), float32Bits(want32[i]))
					}
				}
			}
		}
	})
}
