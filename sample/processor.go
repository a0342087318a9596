package sample

import (
	"math"
	"math/bits"
	"sync"
)

// LogitsProcessor is one per-sequence stage of the chain Sample runs before
// the penalties: a grammar mask is one. Each sequence gets its own (they
// keep state), built by Params.Processors.
type LogitsProcessor interface {
	// Process edits the next token's logits in place (-Inf forbids a token).
	Process(logits []float32)
	// Accept records the token the sequence produced.
	Accept(tok int)
}

// TokenMatcher is what a constraint (a grammar over token byte strings)
// offers: the tokens allowed next as a bitset over the vocabulary, and
// whether the text so far is complete. grammar.Matcher implements it.
type TokenMatcher interface {
	// FillMask sets bit t of allowed (len ceil(vocab/64)) for every token
	// t that may come next, and clears the others.
	FillMask(allowed []uint64)
	// Accept advances past tok; it fails if tok was not allowed.
	Accept(tok int) error
	// CanEnd reports whether the text so far is a complete sentence of the
	// grammar (end-of-sequence is allowed).
	CanEnd() bool
}

// TokenMasker is a LogitsProcessor whose whole effect is to forbid tokens,
// so that it can be applied where the logits are (a GPU's greedy argmax).
type TokenMasker interface {
	LogitsProcessor
	// AllowedTokens writes into words (a bitset: bit t%32 of word t/32,
	// ceil(n/32) words) the tokens of logits of n entries that Process
	// would leave alone, and reports whether it forbids any at all (false:
	// words is left as it is and every token is allowed).
	AllowedTokens(words []uint32, n int) bool
}

// maxEOS is how many end-of-sequence ids a MaskProcessor treats as such.
const maxEOS = 4

// MaskProcessor applies a TokenMatcher's mask: tokens it does not allow get
// -Inf, and the end-of-sequence tokens are allowed exactly when the matcher
// can end. The mask of the next token is computed in the background as soon
// as a token is accepted, so on a GPU it overlaps the next forward step.
//
// Until the sequence has produced ActivateAfter (e.g. the end of a
// reasoning block), the processor lets everything through: structured
// output constrains only what follows the reasoning.
type MaskProcessor struct {
	m             TokenMatcher
	eos           []int
	vocab         int
	activateAfter []int
	recent        []int // the last len(activateAfter) tokens while inactive
	active        bool

	wg      sync.WaitGroup // the background mask computation
	allowed []uint64
	err     error // the matcher refused a token: only EOS is allowed from then on
}

// NewMaskProcessor makes the processor for one sequence; eos are the
// model's end-of-sequence ids (allowed when the matcher can end), vocab the
// logits' length.
func NewMaskProcessor(m TokenMatcher, vocab int, eos []int, activateAfter []int) *MaskProcessor {
	p := &MaskProcessor{m: m, eos: eos, vocab: vocab, activateAfter: activateAfter,
		allowed: make([]uint64, (vocab+63)/64), active: len(activateAfter) == 0}
	if p.active {
		p.start()
	}
	return p
}

func (p *MaskProcessor) start() {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.m.FillMask(p.allowed)
	}()
}

// Process implements LogitsProcessor.
func (p *MaskProcessor) Process(logits []float32) {
	if !p.active {
		return
	}
	p.wg.Wait()
	inf := float32(math.Inf(-1))
	if p.err != nil {
		clear(p.allowed)
	}
	// The matcher knows text, not the end-of-sequence tokens: their logits
	// are kept aside and put back when the text may end.
	var eosLogits [maxEOS]float32
	for i, t := range p.eos[:min(len(p.eos), len(eosLogits))] {
		if t >= 0 && t < len(logits) {
			eosLogits[i] = logits[t]
		}
	}
	// Word by word: a word of forbidden tokens is a run of stores, an
	// allowed one is skipped, and a mixed one visits only its forbidden
	// bits (no branch per token on the mask's bits).
	n := min(len(logits), p.vocab)
	allowedAny := false
	for w := 0; w*64 < n; w++ {
		base := w * 64
		word := p.allowed[w]
		if rest := n - base; rest < 64 {
			word |= ^uint64(0) << rest // past n: not ours to forbid here
			if word == ^uint64(0)<<rest {
				word = 0
			}
		}
		switch word {
		case ^uint64(0):
			allowedAny = true
		case 0:
			run := logits[base:min(base+64, n)]
			for i := range run {
				run[i] = inf
			}
		default:
			allowedAny = true
			for forbid := ^word; forbid != 0; forbid &= forbid - 1 {
				logits[base+bits.TrailingZeros64(forbid)] = inf
			}
		}
	}
	for i := n; i < len(logits); i++ {
		logits[i] = inf
	}
	canEnd := p.err != nil || !allowedAny || p.m.CanEnd()
	for i, t := range p.eos[:min(len(p.eos), len(eosLogits))] {
		if t < 0 || t >= len(logits) {
			continue
		}
		if canEnd {
			logits[t] = eosLogits[i]
		} else {
			logits[t] = inf
		}
	}
}

// Accept implements LogitsProcessor.
func (p *MaskProcessor) Accept(tok int) {
	if !p.active {
		if len(p.recent) == len(p.activateAfter) {
			p.recent = p.recent[1:]
		}
		p.recent = append(p.recent, tok)
		if len(p.recent) == len(p.activateAfter) && equal(p.recent, p.activateAfter) {
			p.active = true
			p.start()
		}
		return
	}
	p.wg.Wait()
	for _, t := range p.eos {
		if t == tok {
			return // the sequence ends here
		}
	}
	if p.err == nil {
		p.err = p.m.Accept(tok)
	}
	if p.err == nil {
		p.start()
	}
}

// AllowedTokens implements TokenMasker: it writes the tokens Process
// would leave finite in logits of n entries.
func (p *MaskProcessor) AllowedTokens(words []uint32, n int) bool {
	if !p.active {
		return false
	}
	p.wg.Wait()
	clear(words)
	allowedAny := false
	if p.err == nil {
		lim := min(n, p.vocab)
		for w := 0; w*64 < lim; w++ {
			word := p.allowed[w]
			if rest := lim - w*64; rest < 64 {
				word &= uint64(1)<<rest - 1
			}
			allowedAny = allowedAny || word != 0
			words[2*w] = uint32(word)
			if 2*w+1 < len(words) {
				words[2*w+1] = uint32(word >> 32)
			}
		}
	}
	canEnd := p.err != nil || !allowedAny || p.m.CanEnd()
	for _, t := range p.eos[:min(len(p.eos), maxEOS)] {
		if t < 0 || t >= n {
			continue
		}
		if canEnd {
			words[t>>5] |= 1 << (t & 31)
		} else {
			words[t>>5] &^= 1 << (t & 31)
		}
	}
	return true
}

// Err is the matcher's refusal of a token, if any (the sequence could only
// end after it).
func (p *MaskProcessor) Err() error {
	p.wg.Wait()
	return p.err
}

func equal(a, b []int) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}
