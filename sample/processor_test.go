package sample

import (
	"github.com/llmserve/llmserve/sample/sampletest"
	"math"
	"testing"
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
