package grammar

import (
	"errors"
	"math/bits"
	"math/rand/v2"
	"testing"
)

// maskSpecs are grammars the mask tests run on the real vocabulary.
var maskSpecs = []struct {
	name string
	spec Spec
}{
	{"tool schema", Spec{JSONSchema: toolSchema}},
	{"json object", Spec{JSONObject: true}},
	{"regex", Spec{Regex: `(\+1 )?\(\d{3}\) \d{3}-\d{4}|[A-Z][a-z]+ [A-Z][a-z]+`}},
	{"gbnf", Spec{GBNF: jsonGBNF}},
	{"choice", Spec{Choice: []string{"positive", "negative", "neutral"}}},
	{"recursive schema", Spec{JSONSchema: treeSchema}},
}

const toolSchema = `{"type":"object","properties":{
	"location":{"type":"string","description":"City and country"},
	"unit":{"enum":["celsius","fahrenheit"]},
	"days":{"type":"integer","minimum":1,"maximum":14},
	"include_hourly":{"type":"boolean"},
	"tags":{"type":"array","items":{"type":"string","maxLength":12},"maxItems":4}
},"required":["location","unit"],"additionalProperties":false}`

const treeSchema = `{"$defs":{"node":{"type":"object","properties":{
	"name":{"type":"string","maxLength":8},
	"children":{"type":"array","items":{"$ref":"#/$defs/node"},"maxItems":3}
},"required":["name"],"additionalProperties":false}},"$ref":"#/$defs/node"}`

func setBits(mask []uint64, n int) []int {
	var out []int
	for w, x := range mask {
		for x != 0 {
			b := bits.TrailingZeros64(x)
			x &= x - 1
			if id := w*64 + b; id < n {
				out = append(out, id)
			}
		}
	}
	return out
}

// The mask says exactly what Accept allows: checked token by token over
// the whole qwen3 vocabulary at several points of random walks.
func TestMaskMatchesAccept(t *testing.T) {
	v, _ := testVocab(t, "qwen3")
	mask := make([]uint64, v.MaskWords())
	for _, c := range maskSpecs {
		t.Run(c.name, func(t *testing.T) {
			g, err := Compile(c.spec, v, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			m := g.NewMatcher()
			for step := 0; step < 12 && !m.IsTerminated(); step++ {
				m.FillMask(mask)
				allowed := setBits(mask, v.Size())
				if len(allowed) == 0 {
					t.Fatalf("step %d: nothing allowed", step)
				}
				if step%4 == 0 {
					for id := 0; id < v.Size(); id++ {
						want := mask[id>>6]>>(id&63)&1 == 1
						err := m.Accept(id)
						if got := err == nil; got != want {
							t.Fatalf("step %d: token %d %q: mask %v, Accept %v", step, id, v.Token(id), want, err)
						}
						if err == nil {
							if err := m.Rollback(1); err != nil {
								t.Fatal(err)
							}
						} else if !errors.Is(err, ErrRejected) {
							t.Fatal(err)
						}
					}
				}
				tok := allowed[rng.IntN(len(allowed))]
				if err := m.Accept(tok); err != nil {
					t.Fatalf("step %d: allowed token %d %q rejected: %v", step, tok, v.Token(tok), err)
				}
			}
		})
	}
}
