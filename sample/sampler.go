package sample

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// ErrInvalidParams is wrapped by Validate's errors.
var ErrInvalidParams = errors.New("sample: invalid params")

// greedyEps is vLLM's _SAMPLING_EPS: temperatures below it mean greedy.
const greedyEps = 1e-5

// Normalize replaces zero values that mean "off" or "default" by their
// canonical value (N 0 -> 1, TopP 0 -> 1, RepetitionPenalty 0 -> 1, TopK -1
// -> 0), so that a Params built field by field works.
func (p *Params) Normalize() {
	if p.N == 0 {
		p.N = 1
	}
	if p.TopP == 0 {
		p.TopP = 1
	}
	if p.RepetitionPenalty == 0 {
		p.RepetitionPenalty = 1
	}
	if p.TopK < 0 {
		p.TopK = 0
	}
}

// Greedy reports whether sampling is argmax.
func (p *Params) Greedy() bool { return p.Temperature < greedyEps }

// Validate checks p against the model's vocabulary size and the largest
// number of top logprobs allowed, with the bounds above. The server checks
// the same at the API edge, naming the request's fields; this is the
// engine's defensive copy.
func (p *Params) Validate(vocab, maxLogprobs int) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidParams, fmt.Sprintf(format, a...))
	}
	switch {
	case p.N < 1:
		return bad("n must be at least 1, got %d", p.N)
	case p.MaxTokens < 1:
		return bad("max_tokens must be at least 1, got %d", p.MaxTokens)
	case p.MinTokens < 0 || p.MinTokens > p.MaxTokens:
		return bad("min_tokens must be in [0, max_tokens=%d], got %d", p.MaxTokens, p.MinTokens)
	case !(p.Temperature >= 0 && p.Temperature <= MaxTemperature):
		return bad("temperature must be in [0, %v], got %v", MaxTemperature, p.Temperature)
	case !(p.TopP > 0 && p.TopP <= 1):
		return bad("top_p must be in (0, 1], got %v", p.TopP)
	case p.TopK < -1:
		return bad("top_k must be -1 (disable), 0 or at least 1, got %d", p.TopK)
	case !(p.MinP >= 0 && p.MinP <= 1):
		return bad("min_p must be in [0, 1], got %v", p.MinP)
	case !(math.Abs(p.PresencePenalty) <= MaxAbsPenalty):
		return bad("presence_penalty must be in [-2, 2], got %v", p.PresencePenalty)
	case !(math.Abs(p.FrequencyPenalty) <= MaxAbsPenalty):
		return bad("frequency_penalty must be in [-2, 2], got %v", p.FrequencyPenalty)
	case !(p.RepetitionPenalty >= MinRepetitionPenalty && p.RepetitionPenalty <= MaxRepetitionPenalty):
		return bad("repetition_penalty must be in [%v, %v], got %v", MinRepetitionPenalty, MaxRepetitionPenalty, p.RepetitionPenalty)
	case p.Logprobs < -1 || p.Logprobs > maxLogprobs:
		return bad("logprobs must be in [0, %d], got %d", maxLogprobs, p.Logprobs)
	}
	for t, b := range p.LogitBias {
		if t < 0 || t >= vocab {
			return bad("logit_bias token %d out of vocabulary (size %d)", t, vocab)
		}
		if !(math.Abs(b) <= MaxAbsLogitBias) {
			return bad("logit_bias of token %d must be in [-100, 100], got %v", t, b)
		}
	}
	for _, t := range p.StopTokenIDs {
		if t < 0 || t >= vocab {
			return bad("stop_token_ids: %d out of vocabulary (size %d)", t, vocab)
		}
	}
	for _, s := range p.Stop {
		if s == "" {
			return bad("stop strings must not be empty")
		}
	}
	return nil
}

// State is one sequence's sampling state: its RNG (so a seeded sequence
// draws the same numbers whatever else is in the batch) and the token counts
// the penalties need. It survives preemption.
type State struct {
	p       *Params
	greedy  bool
	rng     rand.PCG
	stopIDs []int // suppressed while fewer than MinTokens tokens are out
	numOut  int
	counts  map[int32]int32    // output token counts (frequency/presence penalties)
	seen    map[int32]struct{} // prompt and output tokens (repetition penalty)
	procs   []LogitsProcessor
	mask    []uint32 // AllowedTokens' result
	maskTmp []uint32 // and a second processor's mask
}

// NewState makes a sequence's state. p must stay unchanged while the state
// is used; eosIDs are the model's end-of-sequence ids (ignored when
// p.IgnoreEOS).
func NewState(p *Params, seed uint64, promptIDs, eosIDs []int) *State {
	st := &State{p: p, greedy: p.Greedy()}
	if p.Processors != nil {
		st.procs = p.Processors()
	}
	st.rng.Seed(seed, seed^0x9e3779b97f4a7c15)
	if p.MinTokens > 0 {
		st.stopIDs = append(st.stopIDs, p.StopTokenIDs...)
		if !p.IgnoreEOS {
			st.stopIDs = append(st.stopIDs, eosIDs...)
		}
	}
	if p.PresencePenalty != 0 || p.FrequencyPenalty != 0 {
		st.counts = make(map[int32]int32)
	}
	if p.RepetitionPenalty != 1 {
		st.seen = make(map[int32]struct{}, len(promptIDs))
		for _, t := range promptIDs {
			st.seen[int32(t)] = struct{}{}
		}
	}
	return st
}

// Accept records a token the sequence produced.
func (st *State) Accept(tok int) {
	for _, pr := range st.procs {
		pr.Accept(tok)
	}
	st.numOut++
	if st.counts != nil {
		st.counts[int32(tok)]++
	}
	if st.seen != nil {
		st.seen[int32(tok)] = struct{}{}
	}
}

// HasProcessors reports whether st has logits processors (a grammar's mask).
func (st *State) HasProcessors() bool { return len(st.procs) != 0 }

// Maskable reports whether every logits processor of st is a TokenMasker,
// so that the processed logits of a greedy sequence differ from the raw
// ones only by forbidden tokens (see AllowedTokens).
func (st *State) Maskable() bool {
	for _, pr := range st.procs {
		if _, ok := pr.(TokenMasker); !ok {
			return false
		}
	}
	return true
}

// AllowedTokens returns the tokens that st's processors (all TokenMaskers:
// see Maskable) allow next in logits of n entries, as a bitset (bit t%32
// of word t/32) that st owns until the next call, or nil when none is
// forbidden. A sequence without processors allocates nothing.
func (st *State) AllowedTokens(n int) []uint32 {
	if len(st.procs) == 0 {
		return nil
	}
	W := (n + 31) / 32
	st.mask = slices.Grow(st.mask[:0], W)[:W]
	constrained := false
	for _, pr := range st.procs {
		tm, ok := pr.(TokenMasker)
		if !ok {
			continue
		}
		if !constrained {
			constrained = tm.AllowedTokens(st.mask, n)
			continue
		}
		st.maskTmp = slices.Grow(st.maskTmp[:0], W)[:W]
		if tm.AllowedTokens(st.maskTmp, n) {
			for i, w := range st.maskTmp {
				st.mask[i] &= w
			}
		}
	}
	if !constrained {
		return nil
	}
	return st.mask
}

// NumOutput is the number of accepted tokens.
func (st *State) NumOutput() int { return st.numOut }

// processes reports whether the logits are changed before sampling.
func (st *State) processes() bool {
	return len(st.procs) != 0 || len(st.p.LogitBias) != 0 || st.counts != nil || st.seen != nil ||
		(st.numOut < st.p.MinTokens && len(st.stopIDs) != 0)
}

// Sampler holds scratch buffers sized to the vocabulary; one per goroutine
// that samples (it is not safe for concurrent use). Sampling allocates
// nothing.
type Sampler struct {
	vocab int
	work  []float32
	cands []cand
}

// NewSampler makes a sampler for a vocabulary of the given size.
func NewSampler(vocab int) *Sampler {
	return &Sampler{
		vocab: vocab,
		work:  make([]float32, vocab),
		cands: make([]cand, 0, vocab),
	}
}

// Sample picks the next token of st's sequence from its model logits
// (len vocab), which are left unchanged: vLLM's order, the request's own
// processors (grammar masks), logits processors (min_tokens, logit_bias), penalties (repetition, frequency, presence),
// then argmax when greedy, else temperature, min_p, top_k, top_p and a draw
// from st's RNG.
func (s *Sampler) Sample(st *State, logits []float32) int {
	logits = logits[:s.vocab]
	if st.greedy && !st.processes() {
		return argmax(logits)
	}
	w := s.work
	copy(w, logits)
	s.process(st, w)
	if st.greedy {
		return argmax(w)
	}
	p := st.p
	temp := float32(p.Temperature)
	mx := float32(math.Inf(-1))
	for _, x := range w {
		mx = max(mx, x)
	}
	if math.IsInf(float64(mx), -1) {
		return argmax(w) // everything masked: nothing to sample from
	}
	// min_p keeps tokens with prob >= min_p * max prob, i.e. with
	// logit >= max + T*ln(min_p).
	cut := float32(math.Inf(-1))
	if p.MinP > 0 {
		cut = mx + temp*float32(math.Log(p.MinP))
	}
	// Candidates carry their key next to their id: the filters below
	// partition them in place, and a compact array keeps that cache-friendly.
	cands := s.cands[:0]
	for i, x := range w {
		if x >= cut && !math.IsInf(float64(x), -1) {
			cands = append(cands, cand{x, int32(i)})
		}
	}
	if len(cands) == 0 {
		// Only NaN logits (a broken model step): nothing can be sampled, and
		// the engine loop must not panic over it.
		return argmax(w)
	}
	if p.TopK > 0 && p.TopK < len(cands) {
		selectTop(cands, p.TopK)
		cands = cands[:p.TopK]
	}
	inv := 1 / temp
	var total float64
	for j := range cands {
		e := expNeg((cands[j].v - mx) * inv)
		cands[j].v = e
		total += float64(e)
	}
	if p.TopP < 1 {
		cands = cands[:topPCut(cands, p.TopP*total)]
		total = 0
		for _, c := range cands {
			total += float64(c.v)
		}
	}
	s.cands = cands
	u := float64(st.rng.Uint64()>>11) * 0x1p-53 * total
	var acc float64
	for _, c := range cands {
		acc += float64(c.v)
		if u < acc {
			return int(c.id)
		}
	}
	return int(cands[len(cands)-1].id) // rounding left u at the very end
}

// cand is a candidate token and its key (logit, then probability).
type cand struct {
	v  float32
	id int32
}

// expNeg is e^x for x <= 0, to about 2e-7 relative error: range reduction
// to 2^n * e^r with |r| <= ln2/2 and a degree-6 Taylor polynomial. It is
// several times faster than math.Exp, and sampling runs it over the whole
// vocabulary for every token.
func expNeg(x float32) float32 {
	if x < -87 {
		return 0
	}
	t := x * 1.4426950408889634 // log2(e)
	n := int32(t - 0.5)         // round(t) for t <= 0.5
	// Cody-Waite: ln2 split in two so that x - n*ln2 is exact enough.
	r := (x - float32(n)*0.693359375) + float32(n)*2.12194440e-4
	p := 1 + r*(1+r*(1.0/2+r*(1.0/6+r*(1.0/24+r*(1.0/120+r*(1.0/720))))))
	return p * math.Float32frombits(uint32(127+n)<<23)
}

// process applies the logits processors and penalties in place.
func (s *Sampler) process(st *State, w []float32) {
	p := st.p
	for _, pr := range st.procs {
		pr.Process(w)
	}
	if st.numOut < p.MinTokens {
		for _, t := range st.stopIDs {
			if t >= 0 && t < len(w) {
				w[t] = float32(math.Inf(-1))
			}
		}
	}
	for t, b := range p.LogitBias {
		w[t] += float32(b)
	}
	if st.seen != nil {
		rp := float32(p.RepetitionPenalty)
		for t := range st.seen {
			if int(t) >= len(w) {
				continue
			}
			if w[t] > 0 {
				w[t] /= rp
			} else {
				w[t] *= rp
			}
		}
	}
	for t, c := range st.counts {
		if int(t) < len(w) {
			w[t] -= float32(p.FrequencyPenalty)*float32(c) + float32(p.PresencePenalty)
		}
	}
}

// TopLogprob is one candidate token and its logprob.
type TopLogprob struct {
	TokenID int
	Logprob float32
}

// Logprobs returns the logprob of tok under the model's raw logits
// (log-softmax before any processing: vLLM's default raw_logprobs mode)
// and, when k > 0, the k most likely tokens, appended to top.
func (s *Sampler) Logprobs(logits []float32, tok, k int, top []TopLogprob) (float32, []TopLogprob) {
	logits = logits[:s.vocab]
	mx := float32(math.Inf(-1))
	for _, x := range logits {
		mx = max(mx, x)
	}
	var sum float64
	for _, x := range logits {
		sum += math.Exp(float64(x - mx))
	}
	lse := float64(mx) + math.Log(sum)
	lp := float32(float64(logits[tok]) - lse)
	if k <= 0 {
		return lp, top
	}
	// Insertion into a k-sized descending list: O(vocab) for small k.
	base := len(top)
	for i, x := range logits {
		n := len(top) - base
		if n == k && x <= top[len(top)-1].Logprob {
			continue
		}
		if n < k {
			top = append(top, TopLogprob{})
		}
		j := len(top) - 1
		for j > base && top[j-1].Logprob < x {
			top[j] = top[j-1]
			j--
		}
		top[j] = TopLogprob{TokenID: i, Logprob: x}
	}
	for i := base; i < len(top); i++ {
		top[i].Logprob = float32(float64(top[i].Logprob) - lse)
	}
	return lp, top
}

// argmax returns the first index of the largest value (torch.argmax's tie
// rule). Four independent lanes keep the comparisons from waiting on each
// other; it runs over the whole vocabulary for every greedy token.
func argmax(w []float32) int {
	inf := float32(math.Inf(-1))
	b0, b1, b2, b3 := inf, inf, inf, inf
	i0, i1, i2, i3 := 0, 0, 0, 0
	n := len(w) &^ 3
	for i := 0; i < n; i += 4 {
		v := w[i : i+4 : i+4]
		if v[0] > b0 {
			b0, i0 = v[0], i
		}
		if v[1] > b1 {
			b1, i1 = v[1], i+1
		}
		if v[2] > b2 {
			b2, i2 = v[2], i+2
		}
		if v[3] > b3 {
			b3, i3 = v[3], i+3
		}
	}
	best, bi := b0, i0
	for _, c := range [...]struct {
		b float32
		i int
	}{{b1, i1}, {b2, i2}, {b3, i3}} {
		if c.b > best || c.b == best && c.i < bi && c.b != inf {
			best, bi = c.b, c.i
		}
	}
	for i := n; i < len(w); i++ {
		if w[i] > best {
			best, bi = w[i], i
		}
	}
	return bi
}

// selectTop reorders c so that c[:k] hold the k largest keys (quickselect,
// deterministic pivots).
func selectTop(c []cand, k int) {
	lo, hi := 0, len(c)
	for hi-lo > 1 {
		lt, gt := partition3(c, lo, hi)
		switch {
		case k < lt:
			hi = lt
		case k <= gt:
			return // the k-th largest is in the equal run
		default:
			lo = gt
		}
	}
}

// partition3 splits c[lo:hi] around a median-of-three pivot into keys
// greater than, equal to and less than it, returning the bounds lt, gt of
// the equal run [lt, gt).
func partition3(c []cand, lo, hi int) (lt, gt int) {
	a, b, d := c[lo].v, c[lo+(hi-lo)/2].v, c[hi-1].v
	pv := max(min(a, b), min(max(a, b), d))
	i := lo
	lt, gt = lo, hi
	for i < gt {
		switch k := c[i].v; {
		case k > pv:
			c[i], c[lt] = c[lt], c[i]
			lt++
			i++
		case k < pv:
			gt--
			c[i], c[gt] = c[gt], c[i]
		default:
			i++
		}
	}
	return lt, gt
}

// topPCut reorders c so that c[:n] are the fewest most probable candidates
// whose probabilities sum to at least target, and returns n (at least 1).
// Expected linear time, where sorting the vocabulary would not be.
func topPCut(c []cand, target float64) int {
	lo, hi := 0, len(c)
	need := target
	for hi-lo > 1 {
		lt, gt := partition3(c, lo, hi)
		var massGT float64
		for _, x := range c[lo:lt] {
			massGT += float64(x.v)
		}
		if massGT >= need {
			hi = lt
			continue
		}
		pv := float64(c[lt].v)
		if massEq := pv * float64(gt-lt); massGT+massEq >= need {
			k := int(math.Ceil((need - massGT) / pv))
			return lt + min(max(k, 1), gt-lt)
		}
		need -= massGT + pv*float64(gt-lt)
		lo = gt
	}
	return max(hi, 1)
}
