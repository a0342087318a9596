package grammar

import (
	"math/rand/v2"
	"testing"
)

// Benchmarks of one step's mask on the qwen3 vocabulary (151,669 ids).
// Each walks a fixed random path under the grammar first so that the mask
// is taken in the middle of the output, then measures FillMask there.
// "cold" includes computing the state masks for the first time (what the
// first request with a new schema pays); "warm" is the steady state.

func benchPositions(b *testing.B, spec Spec, steps int) (*Grammar, []*Matcher) {
	v, _ := testVocab(b, "qwen3")
	g, err := Compile(spec, v, Limits{})
	if err != nil {
		b.Fatal(err)
	}
	mask := make([]uint64, v.MaskWords())
	rng := rand.New(rand.NewPCG(11, 12))
	var ms []*Matcher
	for len(ms) < 16 {
		m := g.NewMatcher()
		for i := 0; i < steps && !m.MustEnd(); i++ {
			m.FillMask(mask)
			tok := sampleMask(mask, rng)
			if v.isEOS[tok] {
				break
			}
			if err := m.Accept(tok); err != nil {
				b.Fatal(err)
			}
			if i >= steps/2 && rng.IntN(4) == 0 {
				break
			}
		}
		if !m.MustEnd() {
			ms = append(ms, m)
		}
	}
	return g, ms
}

func benchMask(b *testing.B, spec Spec) {
	_, ms := benchPositions(b, spec, 40)
	mask := make([]uint64, ms[0].g.vocab.MaskWords())
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ms[i%len(ms)].FillMask(mask)
	}
}

func BenchmarkMaskToolSchema(b *testing.B) { benchMask(b, Spec{JSONSchema: toolSchema}) }
func BenchmarkMaskTreeSchema(b *testing.B) { benchMask(b, Spec{JSONSchema: treeSchema}) }
func BenchmarkMaskJSONObject(b *testing.B) { benchMask(b, Spec{JSONObject: true}) }
func BenchmarkMaskGBNFJSON(b *testing.B)   { benchMask(b, Spec{GBNF: jsonGBNF}) }
func BenchmarkMaskRegex(b *testing.B) {
	benchMask(b, Spec{Regex: `[A-Z][a-z]{1,8}( [A-Z][a-z]{1,8}){0,2}`})
}

// BenchmarkMaskCold* compute the first mask at a state: a walk of the
// whole token trie (inside a free string almost nothing is pruned).
func benchCold(b *testing.B, spec Spec, prefix string) {
	v, _ := testVocab(b, "qwen3")
	mask := make([]uint64, v.MaskWords())
	g, err := Compile(spec, v, Limits{})
	if err != nil {
		b.Fatal(err)
	}
	m := g.NewMatcher()
	if err := m.AcceptString(prefix); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range g.masks {
			g.masks[j].Store(nil)
		}
		m.FillMask(mask)
	}
}

func BenchmarkMaskColdString(b *testing.B) {
	benchCold(b, Spec{JSONSchema: `{"type":"string"}`}, `"ab`)
}

func BenchmarkMaskColdJSONObjectString(b *testing.B) {
	benchCold(b, Spec{JSONObject: true}, `{"a": [1, "ab`)
}

func BenchmarkCompileToolSchema(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := Compile(Spec{JSONSchema: toolSchema}, nil, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAcceptToken(b *testing.B) {
	_, ms := benchPositions(b, Spec{JSONSchema: toolSchema}, 40)
	v := ms[0].g.vocab
	mask := make([]uint64, v.MaskWords())
	var toks [][2]int // matcher, token
	for i, m := range ms {
		m.FillMask(mask)
		for _, t := range setBits(mask, v.Size())[:1] {
			toks = append(toks, [2]int{i, t})
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		mt := toks[i%len(toks)]
		m := ms[mt[0]]
		if err := m.Accept(mt[1]); err != nil {
			b.Fatal(err)
		}
		_ = m.Rollback(1)
	}
}

// BenchmarkFirstRequest is a whole first request with a new tool schema:
// compile, then 60 steps of masks (cold states computed on the way) and
// accepts along one random path. Reported per request.
func BenchmarkFirstRequest(b *testing.B) {
	v, _ := testVocab(b, "qwen3")
	mask := make([]uint64, v.MaskWords())
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		g, err := Compile(Spec{JSONSchema: toolSchema}, v, Limits{})
		if err != nil {
			b.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, uint64(i)))
		m := g.NewMatcher()
		for step := 0; step < 60 && !m.IsTerminated(); step++ {
			m.FillMask(mask)
			if err := m.Accept(sampleMask(mask, rng)); err != nil {
				b.Fatal(err)
			}
		}
	}
}
