package sample

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llmserve/llmserve/sample/sampletest"
)

func TestMaskProcessorForcesScript(t *testing.T) {
	const vocab, eos = 200, 199
	script := []int{7, 130, 64, 63}
	for _, temp := range []float64{0, 1.5} {
		p := Defaults()
		p.Temperature = temp
		p.MaxTokens = 10
		p.Processors = func() []LogitsProcessor {
			return []LogitsProcessor{NewMaskProcessor(&sampletest.ScriptMatcher{Script: script}, vocab, []int{eos}, nil)}
		}
		st := NewState(&p, 3, nil, []int{eos})
		s := NewSampler(vocab)
		logits := make([]float32, vocab)
		for i := range logits {
			logits[i] = float32(i % 17) // the script's tokens are never the argmax on their own
		}
		var got []int
		for range 6 {
			tok := s.Sample(st, logits)
			got = append(got, tok)
			st.Accept(tok)
			if tok == eos {
				break
			}
		}
		want := append(append([]int(nil), script...), eos)
		if len(got) != len(want) {
			t.Fatalf("temperature %v: got %v, want %v", temp, got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("temperature %v: got %v, want %v", temp, got, want)
			}
		}
	}
}

func TestMaskProcessorEOSOnlyWhenComplete(t *testing.T) {
	const vocab = 70
	eos := []int{68, 69}
	mp := NewMaskProcessor(&sampletest.ScriptMatcher{Script: []int{3}}, vocab, eos, nil)
	logits := make([]float32, vocab)
	for i := range logits {
		logits[i] = 1
	}
	mp.Process(logits)
	for i, v := range logits {
		if want := i == 3; (v == 1) != want {
			t.Fatalf("before the script is done: logit %d = %v", i, v)
		}
	}
	mp.Accept(3)
	for i := range logits {
		logits[i] = float32(i)
	}
	mp.Process(logits)
	for i, v := range logits {
		isEOS := i == 68 || i == 69
		if isEOS && v != float32(i) || !isEOS && !math.IsInf(float64(v), -1) {
			t.Fatalf("after the script: logit %d = %v (EOS keeps its logit, the rest -Inf)", i, v)
		}
	}
	if mp.Err() != nil {
		t.Fatal(mp.Err())
	}
}

func TestMaskProcessorActivatesAfterReasoning(t *testing.T) {
	const vocab, endThink = 50, 40
	mp := NewMaskProcessor(&sampletest.ScriptMatcher{Script: []int{5}}, vocab, []int{49}, []int{endThink})
	logits := make([]float32, vocab)
	mp.Process(logits)
	for i, v := range logits {
		if v != 0 {
			t.Fatalf("inside reasoning: logit %d masked", i)
		}
	}
	mp.Accept(12)
	mp.Accept(endThink)
	mp.Process(logits)
	for i, v := range logits {
		if (i == 5) != !math.IsInf(float64(v), -1) {
			t.Fatalf("after reasoning: logit %d = %v", i, v)
		}
	}
}

func TestMaskProcessorRefusedTokenEnds(t *testing.T) {
	mp := NewMaskProcessor(&sampletest.ScriptMatcher{Script: []int{1, 2}}, 10, []int{9}, nil)
	mp.Accept(4) // not allowed: a sampler never does this, but the state must stay sane
	if mp.Err() == nil {
		t.Fatal("refused token not reported")
	}
	logits := make([]float32, 10)
	mp.Process(logits)
	for i, v := range logits {
		if (i == 9) != !math.IsInf(float64(v), -1) {
			t.Fatalf("after a refused token only EOS is allowed: logit %d = %v", i, v)
		}
	}
}

// randomMatcher allows a fixed random set of tokens (bits past the
// vocabulary included, as a sloppy matcher might set) and may end or not.
type randomMatcher struct {
	allowed []uint64
	canEnd  bool
	refuse  bool
}

func (m *randomMatcher) FillMask(allowed []uint64) { copy(allowed, m.allowed) }
func (m *randomMatcher) Accept(int) error {
	if m.refuse {
		return errors.New("refused")
	}
	return nil
}
func (m *randomMatcher) CanEnd() bool { return m.canEnd }

// TestMaskProcessorAllowedTokensMatchesProcess: the bitset a GPU's greedy
// argmax applies is exactly the set of logits Process leaves finite, for
// sparse, empty and full masks, partial last words, logits longer than the
// matcher's vocabulary, more EOS ids than it treats as such, before the
// reasoning ends and after a refused token.
func TestMaskProcessorAllowedTokensMatchesProcess(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 300 {
		vocab := 1 + r.IntN(300)
		n := vocab + r.IntN(3)*r.IntN(70) // the model's rows may be longer
		m := &randomMatcher{allowed: make([]uint64, (vocab+63)/64), canEnd: r.IntN(2) == 0, refuse: trial%7 == 0}
		switch trial % 5 {
		case 0: // nothing allowed
		case 1:
			for i := range m.allowed {
				m.allowed[i] = ^uint64(0)
			}
		default:
			for i := range m.allowed {
				m.allowed[i] = r.Uint64() & r.Uint64() & r.Uint64()
			}
		}
		var eos []int
		for range r.IntN(6) {
			eos = append(eos, r.IntN(n+2)-1) // out-of-range ids too
		}
		var think []int
		if trial%11 == 0 {
			think = []int{3}
		}
		mp := NewMaskProcessor(m, vocab, eos, think)
		if trial%7 == 0 {
			mp.Accept(1) // refused: only EOS from now on
		}
		logits := make([]float32, n)
		for i := range logits {
			logits[i] = float32(i)
		}
		mp.Process(logits)
		words := make([]uint32, (n+31)/32)
		for i := range words {
			words[i] = 0xdeadbeef // AllowedTokens must write every word when it constrains
		}
		constrains := mp.AllowedTokens(words, n)
		if len(think) > 0 {
			if constrains {
				t.Fatalf("trial %d: constrains inside reasoning", trial)
			}
			continue
		}
		if !constrains {
			t.Fatalf("trial %d: an active processor reports no constraint", trial)
		}
		for i, v := range logits {
			finite := !math.IsInf(float64(v), -1)
			if bit := words[i/32]>>(i%32)&1 == 1; bit != finite {
				t.Fatalf("trial %d (vocab %d, n %d, eos %v, canEnd %v): token %d: bit %v, Process left it finite %v",
					trial, vocab, n, eos, m.canEnd, i, bit, finite)
			}
		}
	}
}
