package sample

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func randLogits(rng *rand.Rand, n int) []float32 {
	l := make([]float32, n)
	for i := range l {
		l[i] = float32(rng.NormFloat64() * 2)
	}
	return l
}

func params(mod func(*Params)) *Params {
	p := Defaults()
	p.MaxTokens = 100
	if mod != nil {
		mod(&p)
	}
	return &p
}

func TestGreedyIsArgmax(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	s := NewSampler(100)
	p := params(func(p *Params) { p.Temperature = 0 })
	st := NewState(p, 0, nil, nil)
	for range 50 {
		l := randLogits(rng, 100)
		want := slices.Index(l, slices.Max(l))
		if got := s.Sample(st, l); got != want {
			t.Fatalf("greedy %d want %d", got, want)
		}
	}
}

func TestSampleLeavesLogitsUnchanged(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := NewSampler(50)
	p := params(func(p *Params) {
		p.TopK, p.TopP, p.MinP, p.RepetitionPenalty, p.FrequencyPenalty = 10, 0.9, 0.01, 1.3, 0.5
		p.LogitBias = map[int]float64{3: 5}
	})
	st := NewState(p, 7, []int{1, 2, 3}, []int{0})
	l := randLogits(rng, 50)
	orig := slices.Clone(l)
	for range 20 {
		st.Accept(s.Sample(st, l))
	}
	if !slices.Equal(l, orig) {
		t.Fatal("Sample modified its input")
	}
}

func TestSeededReproducible(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	var logits [][]float32
	for range 40 {
		logits = append(logits, randLogits(rng, 200))
	}
	run := func(seed uint64, other bool) []int {
		s := NewSampler(200)
		p := params(func(p *Params) { p.Temperature = 0.9; p.TopP = 0.95; p.TopK = 50 })
		st := NewState(p, seed, nil, nil)
		// Another sequence sampled in between must not disturb this one.
		ost := NewState(p, 99, nil, nil)
		var out []int
		for _, l := range logits {
			if other {
				s.Sample(ost, logits[0])
			}
			tok := s.Sample(st, l)
			st.Accept(tok)
			out = append(out, tok)
		}
		return out
	}
	a, b, c := run(42, false), run(42, true), run(43, false)
	if !slices.Equal(a, b) {
		t.Fatalf("same seed differs with another sequence interleaved:\n%v\n%v", a, b)
	}
	if slices.Equal(a, c) {
		t.Fatal("different seeds gave identical 40-token samples")
	}
}

// TestDistribution checks plain temperature sampling against softmax(l/T).
func TestDistribution(t *testing.T) {
	l := []float32{1, 2, 0.5, -1, 1.5}
	const temp = 0.7
	want := softmax(l, temp)
	s := NewSampler(len(l))
	st := NewState(params(func(p *Params) { p.Temperature = temp }), 5, nil, nil)
	const n = 200000
	counts := make([]int, len(l))
	for range n {
		counts[s.Sample(st, l)]++
	}
	for i, c := range counts {
		got := float64(c) / n
		sd := math.Sqrt(want[i] * (1 - want[i]) / n)
		if math.Abs(got-want[i]) > 5*sd {
			t.Errorf("token %d: freq %.4f want %.4f", i, got, want[i])
		}
	}
}

func softmax(l []float32, temp float64) []float64 {
	mx := float64(slices.Max(l))
	var sum float64
	p := make([]float64, len(l))
	for i, x := range l {
		p[i] = math.Exp((float64(x) - mx) / temp)
		sum += p[i]
	}
	for i := range p {
		p[i] /= sum
	}
	return p
}

// TestFilters checks which tokens each filter allows by sampling many times.
func TestFilters(t *testing.T) {
	l := []float32{3, 2.9, 1, 0, -1, 2} // probs at T=1: 0.38 0.35 0.06 0.02 0.01 0.14
	tests := []struct {
		name    string
		mod     func(*Params)
		allowed []int
	}{
		{"top_k=1", func(p *Params) { p.TopK = 1 }, []int{0}},
		{"top_k=3", func(p *Params) { p.TopK = 3 }, []int{0, 1, 5}},
		{"top_p=0.5", func(p *Params) { p.TopP = 0.5 }, []int{0, 1}},
		{"top_p=0.8", func(p *Params) { p.TopP = 0.8 }, []int{0, 1, 5}},
		{"top_p=0.1", func(p *Params) { p.TopP = 0.1 }, []int{0}},
		{"min_p=0.3", func(p *Params) { p.MinP = 0.3 }, []int{0, 1, 5}},
		{"min_p=1", func(p *Params) { p.MinP = 1 }, []int{0}},
		{"top_k=2,top_p=0.4", func(p *Params) { p.TopK = 2; p.TopP = 0.4 }, []int{0}},
		{"bias", func(p *Params) { p.LogitBias = map[int]float64{4: 100} }, []int{4}},
		{"ban", func(p *Params) { p.LogitBias = map[int]float64{0: -1000, 1: -1000}; p.TopK = 1 }, []int{5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSampler(len(l))
			st := NewState(params(tc.mod), 1, nil, nil)
			seen := map[int]bool{}
			for range 3000 {
				seen[s.Sample(st, l)] = true
			}
			for tok := range seen {
				if !slices.Contains(tc.allowed, tok) {
					t.Errorf("sampled %d, allowed %v", tok, tc.allowed)
				}
			}
			for _, tok := range tc.allowed {
				if !seen[tok] {
					t.Errorf("never sampled allowed token %d", tok)
				}
			}
		})
	}
}

func TestPenalties(t *testing.T) {
	s := NewSampler(4)
	greedy := func(mod func(*Params), prompt, out []int, l []float32) int {
		p := params(func(p *Params) { p.Temperature = 0; mod(p) })
		st := NewState(p, 0, prompt, []int{3})
		for _, o := range out {
			st.Accept(o)
		}
		return s.Sample(st, l)
	}
	l := []float32{2, 1.5, -1, 1.9}
	// Repetition 2 on token 0 (prompt): 2/2 = 1 < 1.5.
	if got := greedy(func(p *Params) { p.RepetitionPenalty = 2 }, []int{0}, nil, l); got != 3 {
		t.Errorf("repetition: %d", got)
	}
	// Negative logits are multiplied: token 2 stays last even when it is the only allowed candidate change.
	if got := greedy(func(p *Params) { p.RepetitionPenalty = 2 }, nil, []int{0, 3}, l); got != 1 {
		t.Errorf("repetition on output: %d", got)
	}
	// Frequency counts occurrences (output only): 2-0.6 = 1.4 and 1.9-0.6 = 1.3 < 1.5.
	if got := greedy(func(p *Params) { p.FrequencyPenalty = 0.3 }, []int{1}, []int{0, 0, 3, 3}, l); got != 1 {
		t.Errorf("frequency: %d", got)
	}
	// Presence is flat: 2 - 0.3 = 1.7 > 1.5 but 1.9 - 0.3 ... token 3 not present.
	if got := greedy(func(p *Params) { p.PresencePenalty = 0.3 }, nil, []int{0, 0}, l); got != 3 {
		t.Errorf("presence: %d", got)
	}
	// Prompt tokens don't count for frequency/presence.
	if got := greedy(func(p *Params) { p.PresencePenalty = 2 }, []int{0}, nil, l); got != 0 {
		t.Errorf("presence on prompt: %d", got)
	}
	// min_tokens masks EOS (3) and stop ids until reached.
	eosFirst := []float32{0, 0, 0, 5}
	if got := greedy(func(p *Params) { p.MinTokens = 2 }, nil, []int{1}, eosFirst); got == 3 {
		t.Error("EOS not suppressed before min_tokens")
	}
	if got := greedy(func(p *Params) { p.MinTokens = 2 }, nil, []int{1, 1}, eosFirst); got != 3 {
		t.Error("EOS suppressed after min_tokens")
	}
	if got := greedy(func(p *Params) { p.MinTokens = 2; p.IgnoreEOS = true }, nil, nil, eosFirst); got != 3 {
		t.Error("ignore_eos: EOS is a normal token")
	}
	if got := greedy(func(p *Params) { p.MinTokens = 1; p.StopTokenIDs = []int{0} }, nil, nil, []float32{9, 0, 0, 0}); got == 0 {
		t.Error("stop token not suppressed before min_tokens")
	}
}

func TestLogprobs(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	l := randLogits(rng, 300)
	s := NewSampler(300)
	lp, top := s.Logprobs(l, 17, 5, nil)
	want := logSoftmax(l)
	if math.Abs(float64(lp)-want[17]) > 1e-5 {
		t.Fatalf("logprob %v want %v", lp, want[17])
	}
	if len(top) != 5 {
		t.Fatalf("top %d", len(top))
	}
	order := make([]int, len(l))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return -cmpF(want[a], want[b]) })
	for i, tl := range top {
		if tl.TokenID != order[i] || math.Abs(float64(tl.Logprob)-want[order[i]]) > 1e-5 {
			t.Fatalf("top[%d] = %+v, want %d %v", i, tl, order[i], want[order[i]])
		}
	}
	if _, top := s.Logprobs(l, 0, 0, nil); len(top) != 0 {
		t.Fatal("top for k=0")
	}
}

func cmpF(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func logSoftmax(l []float32) []float64 {
	mx := float64(slices.Max(l))
	var sum float64
	for _, x := range l {
		sum += math.Exp(float64(x) - mx)
	}
	out := make([]float64, len(l))
	for i, x := range l {
		out[i] = float64(x) - mx - math.Log(sum)
	}
	return out
}

// TestTopPCutMatchesSort compares the linear-time cut with sorting.
func TestTopPCutMatchesSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	for trial := range 500 {
		n := 1 + rng.IntN(300)
		probs := make([]float64, n)
		var total float64
		for i := range probs {
			if trial%3 == 0 {
				probs[i] = float64(rng.IntN(4) + 1) // many ties
			} else {
				probs[i] = rng.ExpFloat64()
			}
			total += probs[i]
		}
		p := rng.Float64()*0.99 + 0.01
		idx := make([]cand, n)
		for i := range idx {
			idx[i] = cand{float32(probs[i]), int32(i)}
			probs[i] = float64(idx[i].v)
		}
		total = 0
		for _, x := range probs {
			total += x
		}
		got := topPCut(idx, p*total)
		sorted := slices.Clone(probs)
		slices.Sort(sorted)
		slices.Reverse(sorted)
		want, acc := 0, 0.0
		for acc < p*total && want < n {
			acc += sorted[want]
			want++
		}
		if got != want {
			t.Fatalf("trial %d: cut %d want %d", trial, got, want)
		}
		// idx[:got] must be top values.
		var mass float64
		minIn := math.Inf(1)
		for _, c := range idx[:got] {
			mass += float64(c.v)
			minIn = min(minIn, float64(c.v))
		}
		for _, c := range idx[got:] {
			if float64(c.v) > minIn {
				t.Fatalf("trial %d: excluded %v > included %v", trial, c.v, minIn)
			}
		}
		if mass < p*total*(1-1e-12) {
			t.Fatalf("trial %d: mass %v < %v", trial, mass, p*total)
		}
	}
}

func TestSelectTop(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for range 300 {
		n := 1 + rng.IntN(200)
		keys := make([]float64, n)
		for i := range keys {
			keys[i] = float64(rng.IntN(20))
		}
		idx := make([]cand, n)
		for i := range idx {
			idx[i] = cand{float32(keys[i]), int32(i)}
		}
		k := 1 + rng.IntN(n)
		selectTop(idx, k)
		sorted := slices.Clone(keys)
		slices.Sort(sorted)
		kth := float32(sorted[n-k])
		for _, c := range idx[:k] {
			if c.v < kth {
				t.Fatalf("selected %v below k-th %v", c.v, kth)
			}
		}
		for _, c := range idx[k:] {
			if c.v > kth {
				t.Fatalf("left out %v above k-th %v", c.v, kth)
			}
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Defaults()
	if err := ok.Validate(100, 20); err != nil {
		t.Fatal(err)
	}
	bad := []func(*Params){
		func(p *Params) { p.N = 0 },
		func(p *Params) { p.MaxTokens = 0 },
		func(p *Params) { p.MinTokens = 17 },
		func(p *Params) { p.Temperature = -1 },
		func(p *Params) { p.Temperature = math.NaN() },
		func(p *Params) { p.TopP = 0 },
		func(p *Params) { p.TopP = 1.5 },
		func(p *Params) { p.TopK = -2 },
		func(p *Params) { p.MinP = 2 },
		func(p *Params) { p.PresencePenalty = 3 },
		func(p *Params) { p.FrequencyPenalty = -3 },
		func(p *Params) { p.RepetitionPenalty = 0 },
		func(p *Params) { p.RepetitionPenalty = MaxRepetitionPenalty * 2 },
		func(p *Params) { p.RepetitionPenalty = 1e-300 },
		func(p *Params) { p.Temperature = MaxTemperature + 1 },
		func(p *Params) { p.Temperature = math.Inf(1) },
		func(p *Params) { p.LogitBias = map[int]float64{1: math.Inf(-1)} },
		func(p *Params) { p.PresencePenalty = math.NaN() },
		func(p *Params) { p.Logprobs = 21 },
		func(p *Params) { p.LogitBias = map[int]float64{100: 1} },
		func(p *Params) { p.StopTokenIDs = []int{-1} },
		func(p *Params) { p.Stop = []string{""} },
	}
	for i, mod := range bad {
		p := Defaults()
		mod(&p)
		if err := p.Validate(100, 20); !errors.Is(err, ErrInvalidParams) {
			t.Errorf("case %d: err %v", i, err)
		}
	}
	var z Params
	z.MaxTokens = 1
	z.Normalize()
	if err := z.Validate(100, 20); err != nil {
		t.Errorf("normalized zero params: %v", err)
	}
}

func TestArgmax(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	for n := 1; n < 40; n++ {
		for range 50 {
			w := make([]float32, n)
			for i := range w {
				w[i] = float32(rng.IntN(5)) // many ties
			}
			if rng.IntN(5) == 0 {
				for i := range w {
					w[i] = float32(math.Inf(-1))
				}
			}
			want := 0
			for i, x := range w {
				if x > w[want] {
					want = i
				}
			}
			if got := argmax(w); got != want {
				t.Fatalf("argmax(%v) = %d, want %d", w, got, want)
			}
		}
	}
}

func TestExpNeg(t *testing.T) {
	for x := float32(0); x > -100; x -= 0.0137 {
		want := math.Exp(float64(x))
		got := float64(expNeg(x))
		if want < 1e-37 {
			continue
		}
		if math.Abs(got-want) > 3e-7*want {
			t.Fatalf("expNeg(%v) = %v want %v", x, got, want)
		}
	}
	if expNeg(-200) != 0 || expNeg(0) != 1 {
		t.Fatal("expNeg limits")
	}
}

func BenchmarkSample(b *testing.B) {
	const vocab = 151936
	rng := rand.New(rand.NewPCG(1, 1))
	l := randLogits(rng, vocab)
	for _, tc := range []struct {
		name string
		mod  func(*Params)
	}{
		{"greedy", func(p *Params) { p.Temperature = 0 }},
		{"temp", nil},
		{"top_p=0.9", func(p *Params) { p.TopP = 0.9 }},
		{"top_k=50", func(p *Params) { p.TopK = 50 }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := NewSampler(vocab)
			st := NewState(params(tc.mod), 1, nil, nil)
			b.ReportAllocs()
			for b.Loop() {
				s.Sample(st, l)
			}
		})
	}
}

// TestExtremesHonoured: every corner of the bounds Validate accepts samples
// a token of the vocabulary (no NaN path, no empty candidate set).
func TestExtremesHonoured(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	s := NewSampler(64)
	for _, temp := range []float64{0, greedyEps, 1e-4, 1, MaxTemperature} {
		for _, rp := range []float64{MinRepetitionPenalty, 1, MaxRepetitionPenalty} {
			for _, minP := range []float64{0, 1e-300, 0.5, 1} {
				for _, pen := range []float64{-MaxAbsPenalty, MaxAbsPenalty} {
					p := params(func(p *Params) {
						p.Temperature, p.RepetitionPenalty, p.MinP, p.TopK, p.TopP = temp, rp, minP, 1<<62, 1e-9
						p.PresencePenalty, p.FrequencyPenalty = pen, -pen
						p.LogitBias = map[int]float64{0: MaxAbsLogitBias, 1: -MaxAbsLogitBias}
					})
					if err := p.Validate(64, 20); err != nil {
						t.Fatal(err)
					}
					st := NewState(p, 1, []int{0, 1, 2}, nil)
					for range 5 {
						l := randLogits(rng, 64)
						l[5] = float32(math.Inf(-1))
						tok := s.Sample(st, l)
						if tok < 0 || tok >= 64 || tok == 5 {
							t.Fatalf("temp %v rp %v min_p %v: token %d", temp, rp, minP, tok)
						}
						st.Accept(tok)
					}
				}
			}
		}
	}
}

// TestNaNLogitsDoNotPanic: a model step that returns NaN logits must not
// take the engine loop down through the sampler.
func TestNaNLogitsDoNotPanic(t *testing.T) {
	const vocab = 64
	logits := make([]float32, vocab)
	for i := range logits {
		logits[i] = float32(math.NaN())
	}
	for _, mod := range []func(p *Params){
		func(p *Params) {},
		func(p *Params) { p.MinP = 0.1 },
		func(p *Params) { p.TopK, p.TopP = 5, 0.5 },
	} {
		p := Defaults()
		mod(&p)
		st := NewState(&p, 1, nil, nil)
		if tok := NewSampler(vocab).Sample(st, logits); tok < 0 || tok >= vocab {
			t.Fatalf("token %d out of the vocabulary", tok)
		}
	}
}
