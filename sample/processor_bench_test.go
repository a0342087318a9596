package sample

import (
	"math/rand/v2"
	"testing"
)

// densityMatcher allows a fixed random fraction of the vocabulary.
type densityMatcher struct{ mask []uint64 }

func (m *densityMatcher) FillMask(allowed []uint64) { copy(allowed, m.mask) }
func (m *densityMatcher) Accept(int) error          { return nil }
func (m *densityMatcher) CanEnd() bool              { return false }

// BenchmarkMaskProcessor is the engine-side cost of a grammar mask per
// token on Qwen's 151,936 logits: Process (apply the mask) plus Accept
// (start the next mask in the background, here a copy), for a mask that
// allows few tokens (inside JSON structure), most (inside a string) or all.
func BenchmarkMaskProcessor(b *testing.B) {
	const vocab = 151936
	rng := rand.New(rand.NewPCG(1, 2))
	logits := randLogits(rng, vocab)
	work := make([]float32, vocab)
	for _, tc := range []struct {
		name    string
		density float64
	}{{"allow=0.01%", 0.0001}, {"allow=90%", 0.9}, {"allow=all", 1}} {
		b.Run(tc.name, func(b *testing.B) {
			m := &densityMatcher{mask: make([]uint64, (vocab+63)/64)}
			for i := range vocab {
				if rng.Float64() < tc.density {
					m.mask[i>>6] |= 1 << (i & 63)
				}
			}
			p := NewMaskProcessor(m, vocab, []int{151645}, nil)
			b.ReportAllocs()
			for b.Loop() {
				copy(work, logits)
				p.Process(work)
				p.Accept(0)
			}
		})
	}
}

// Process forbids exactly the tokens the mask leaves out (and every id
// past the vocabulary), whatever the vocabulary's size and mask's density.
func TestMaskProcessorMatchesBits(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for run := range 300 {
		vocab := 1 + rng.IntN(300)
		n := vocab + rng.IntN(3)*rng.IntN(70) // logits may be longer than the vocabulary
		density := []float64{0, 0.02, 0.5, 0.98, 1}[run%5]
		m := &densityMatcher{mask: make([]uint64, (vocab+63)/64)}
		for i := range vocab {
			if rng.Float64() < density {
				m.mask[i>>6] |= 1 << (i & 63)
			}
		}
		p := NewMaskProcessor(m, vocab, nil, nil)
		l := make([]float32, n)
		p.Process(l)
		for i, v := range l {
			allowed := i < vocab && m.mask[i>>6]&(1<<(i&63)) != 0
			if allowed != (v == 0) {
				t.Fatalf("vocab %d, logits %d: token %d allowed %v, logit %v", vocab, n, i, allowed, v)
			}
		}
	}
}
