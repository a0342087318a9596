package engine

import (
	"context"
	"fmt"
	"github.com/llmserve/llmserve/sample/sampletest"
	"math"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/sample"
)

// argmaxFake is a fakeModel that reduces greedy rows "on the device": it
// returns their argmax among the tokens b.Allowed allows and overwrites
// their logits with NaN, so an engine that still sampled such a row on the
// host would produce wrong tokens.
type argmaxFake struct {
	*fakeModel
	greedyRows, maskedRows, rows atomic.Int64
}

var _ model.DeviceArgmaxer = (*argmaxFake)(nil)

func (a *argmaxFake) ArgmaxOnDevice() bool { return true }

func (a *argmaxFake) ForwardArgmax(ctx context.Context, b *model.Batch, greedy []bool, tokens []int32, logits []float32) error {
	if len(greedy) != len(b.LogitIndices) || len(tokens) != len(greedy) {
		return fmt.Errorf("argmax fake: %d flags, %d token slots, %d rows", len(greedy), len(tokens), len(b.LogitIndices))
	}
	if err := a.Forward(ctx, b, logits); err != nil {
		return err
	}
	V := a.vocab
	nan := float32(math.NaN())
	for i, g := range greedy {
		a.rows.Add(1)
		if !g {
			continue
		}
		row := logits[i*V : (i+1)*V]
		var allowed []uint32
		if b.AllowedTokens != nil {
			words := make([]uint32, (V+31)/32)
			if b.AllowedTokens(i, words) {
				allowed = words
				a.maskedRows.Add(1)
			}
		}
		best, bestV := 0, float32(math.Inf(-1))
		for j, v := range row {
			if v > bestV && (allowed == nil || allowed[j/32]>>(j%32)&1 != 0) {
				best, bestV = j, v
			}
		}
		tokens[i] = int32(best)
		for j := range row {
			row[j] = nan
		}
		a.greedyRows.Add(1)
	}
	return nil
}

// TestDeviceArgmaxStress: the stress mix (greedy and seeded sampling,
// chunked prefills, shared prefixes, preemption, cancellations) gives the
// reference outputs when greedy rows come back as token ids.
func TestDeviceArgmaxStress(t *testing.T) {
	opts := fakeOpts()
	opts.MaxModelLen = 128
	opts.NumBlocks = 48
	opts.MaxNumBatchedTokens = 32
	f, release := newHeldFake(fakeVocab)
	a := &argmaxFake{fakeModel: f}
	stress(t, a, release, opts, fakeVocab, 200, func(t *testing.T, i int, pr []int, p sample.Params, seed uint64, r seqResult) {
		checkRef(t, fmt.Sprint("request ", i), r, p, seed, pr, opts)
	})
	if a.greedyRows.Load() == 0 || a.greedyRows.Load() == a.rows.Load() {
		t.Errorf("%d of %d rows reduced on the device, want some but not all", a.greedyRows.Load(), a.rows.Load())
	}
}

// TestDeviceArgmaxParams: greedy requests whose sampling needs the logits
// (penalties, logit_bias, min_tokens masking, logprobs, n>1) still match
// the reference, and plain greedy ones take the device path.
func TestDeviceArgmaxParams(t *testing.T) {
	pr := prompt(11, 9)
	const maxTok = 60
	ref, _, _ := fakeRef(fakeVocab, pr, greedyParams(maxTok), 0, nil, 256)
	opts := fakeOpts()
	opts.EOSTokenIDs = []int{ref[3]}
	cases := map[string]func(p *sample.Params){
		"plain":              func(p *sample.Params) {},
		"ignore_eos":         func(p *sample.Params) { p.IgnoreEOS = true },
		"min_tokens eos":     func(p *sample.Params) { p.MinTokens = 8 },
		"min_tokens stop id": func(p *sample.Params) { p.IgnoreEOS, p.MinTokens, p.StopTokenIDs = true, 9, []int{ref[5]} },
		"repetition":         func(p *sample.Params) { p.IgnoreEOS, p.RepetitionPenalty = true, 1.3 },
		"frequency":          func(p *sample.Params) { p.IgnoreEOS, p.FrequencyPenalty = true, 2 },
		"presence":           func(p *sample.Params) { p.IgnoreEOS, p.PresencePenalty = true, 2 },
		"logit_bias":         func(p *sample.Params) { p.IgnoreEOS, p.LogitBias = true, map[int]float64{ref[1]: -100, ref[6]: 3} },
		"logprobs":           func(p *sample.Params) { p.Logprobs = 2 },
		"n=3":                func(p *sample.Params) { p.N = 3 },
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			a := &argmaxFake{fakeModel: newFake(fakeVocab)}
			e, _ := startEngine(t, a, opts)
			p := greedyParams(maxTok)
			mod(&p)
			// Each case must change the output (or need the logits), or it tests nothing.
			want, _, _ := fakeRef(fakeVocab, pr, p, 0, opts.EOSTokenIDs, opts.MaxModelLen)
			if plain := name == "plain" || name == "ignore_eos"; !plain && p.Logprobs < 0 && p.N <= 1 && slices.Equal(want, ref[:min(len(want), len(ref))]) {
				t.Fatalf("the reference output does not depend on %s", name)
			}
			n := max(p.N, 1)
			res := collect(t, submit(t, e, context.Background(), &Request{PromptIDs: pr, Params: p}), n)
			for i, r := range res {
				checkRef(t, fmt.Sprint("seq ", i), r, p, 0, pr, opts)
				if p.Logprobs >= 0 && len(r.logprobs) != len(r.tokens) {
					t.Errorf("seq %d: %d logprobs for %d tokens", i, len(r.logprobs), len(r.tokens))
				}
			}
			if name == "plain" || name == "ignore_eos" {
				if a.greedyRows.Load() != a.rows.Load() {
					t.Errorf("%d of %d rows reduced on the device, want all", a.greedyRows.Load(), a.rows.Load())
				}
			}
		})
	}
}

// TestGrammarMaskOnDevice: a greedy request with a grammar-like processor
// has its rows reduced on the device under the processor's mask (sent
// with the step), every sequence of it follows the processor and ends with
// EOS once the processor allows it, and a plain greedy request beside it
// keeps the unmasked device path.
func TestGrammarMaskOnDevice(t *testing.T) {
	const eos = 3
	opts := fakeOpts()
	opts.EOSTokenIDs = []int{eos}
	a := &argmaxFake{fakeModel: newFake(fakeVocab)}
	e, _ := startEngine(t, a, opts)
	script := []int{17, 5, 29, 5, 11}
	p := greedyParams(40)
	p.N = 2
	p.Processors = func() []sample.LogitsProcessor {
		return []sample.LogitsProcessor{sample.NewMaskProcessor(&sampletest.ScriptMatcher{Script: script}, fakeVocab, opts.EOSTokenIDs, nil)}
	}
	plain := greedyParams(8)
	plain.IgnoreEOS = true
	constrained := submit(t, e, context.Background(), &Request{PromptIDs: prompt(9, 4), Params: p})
	free := submit(t, e, context.Background(), &Request{PromptIDs: prompt(7, 5), Params: plain})
	for i, r := range collect(t, constrained, 2) {
		want := append(append([]int(nil), script...), eos)
		if !slices.Equal(r.tokens, want) || r.finish != FinishStop {
			t.Errorf("constrained seq %d: %v (%s), want %v (stop)", i, r.tokens, r.finish, want)
		}
	}
	if r := collect(t, free, 1)[0]; len(r.tokens) != 8 {
		t.Errorf("plain request: %d tokens, want 8", len(r.tokens))
	}
	// The plain request's 8 rows, and each constrained sequence's 5 after
	// the first token (sampled on the host from the prompt's row, which
	// both sequences fork from) under a mask.
	if g, m := a.greedyRows.Load(), a.maskedRows.Load(); g != 8+10 || m != 10 {
		t.Errorf("%d rows reduced on the device (%d masked), want 18 (10)", g, m)
	}
}
