package grammar

import (
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"
)

// BenchmarkMaskPerToken times every step's FillMask along random walks
// (uniform over the allowed tokens, as a random-weights model samples)
// on the qwen3 vocabulary (151,669 ids) and reports the median and p99 of
// one step, the figures a server pays per generated token. "warm": the
// grammar is compiled once and shared across walks (a schema used again,
// the steady state); "cold": every walk compiles the spec anew, so each
// state's first mask is a whole trie walk (compile time not counted).
//
//	go test -run '^$' -bench MaskPerToken -benchtime 4000x ./grammar
func BenchmarkMaskPerToken(b *testing.B) {
	specs := []struct {
		name string
		spec Spec
	}{
		{"tool_schema", Spec{JSONSchema: toolSchema}},
		{"tree_schema", Spec{JSONSchema: treeSchema}},
		{"json_object", Spec{JSONObject: true}},
		{"regex", Spec{Regex: `[A-Z][a-z]{1,8}( [A-Z][a-z]{1,8}){0,2}`}},
		{"gbnf_json", Spec{GBNF: jsonGBNF}},
	}
	// The schema of the GPU's structured-outputs benchmark
	// (scripts/bench-gpu-structured.sh): counted strings inside 40+ items.
	if order, err := os.ReadFile("../scripts/schemas/order.json"); err == nil {
		specs = append(specs, struct {
			name string
			spec Spec
		}{"order_schema", Spec{JSONSchema: string(order)}})
	}
	for _, s := range specs {
		for _, cold := range []bool{false, true} {
			name := s.name + "/warm"
			if cold {
				name = s.name + "/cold"
			}
			b.Run(name, func(b *testing.B) { benchPerToken(b, s.spec, cold) })
		}
	}
}

func benchPerToken(b *testing.B, spec Spec, cold bool) {
	v, _ := testVocab(b, "qwen3")
	mask := make([]uint64, v.MaskWords())
	rng := rand.New(rand.NewPCG(3, 4))
	compile := func() *Grammar {
		// The server's bound on a grammar's cached masks.
		g, err := Compile(spec, v, Limits{MaxMaskCacheBytes: 16 << 20})
		if err != nil {
			b.Fatal(err)
		}
		return g
	}
	g := compile()
	m := g.NewMatcher()
	steps := 0
	durs := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if m.IsTerminated() || m.MustEnd() || steps >= 256 {
			b.StopTimer()
			if cold {
				g = compile()
			}
			m, steps = g.NewMatcher(), 0
			b.StartTimer()
		}
		t0 := time.Now()
		m.FillMask(mask)
		durs = append(durs, time.Since(t0))
		steps++
		tok := sampleMask(mask, rng)
		if v.isEOS[tok] {
			steps = 256 // the walk ends here
			continue
		}
		if err := m.Accept(tok); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	slices.Sort(durs)
	us := func(q float64) float64 { return float64(durs[int(q*float64(len(durs)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(us(0.5), "p50-µs")
	b.ReportMetric(us(0.99), "p99-µs")
	b.ReportMetric(us(1), "max-µs")
	b.ReportMetric(us(0.999), "p999-µs")
	slow := 0
	for _, d := range durs {
		if d > 200*time.Microsecond {
			slow++
		}
	}
	b.ReportMetric(float64(slow)/float64(len(durs)), "over-200µs-frac")
}
