package grammar

import (
	"bytes"
	"encoding/json"
	"math/bits"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// randomSchemas cover every supported keyword; random walks under each
// must only ever complete into documents the validator accepts.
var randomSchemas = []string{
	toolSchema,
	treeSchema,
	`{"type":"object","properties":{"id":{"type":"integer","minimum":-50,"maximum":50},"ratio":{"type":"number","minimum":0,"maximum":1},"ok":{"type":"boolean"},"note":{"type":["string","null"],"maxLength":5}},"required":["id","ratio","ok","note"],"additionalProperties":false}`,
	`{"type":"array","items":{"enum":["a","b",1,null,{"k":[true]}]},"minItems":1,"maxItems":5}`,
	`{"type":"object","properties":{"code":{"type":"string","pattern":"^[A-Z]{2}-[0-9]{2,4}$"},"any":{"type":"string","pattern":"ab"}},"required":["code","any"],"additionalProperties":false}`,
	`{"type":"object","properties":{"d":{"type":"string","format":"date"},"t":{"type":"string","format":"date-time"},"u":{"type":"string","format":"uuid"},"ip":{"type":"string","format":"ipv4"},"e":{"type":"string","format":"email"}},"required":["d","t","u","ip","e"],"additionalProperties":false}`,
	`{"anyOf":[{"type":"integer","exclusiveMinimum":100},{"type":"string","minLength":2,"maxLength":3},{"type":"array","prefixItems":[{"type":"boolean"},{"type":"null"}],"items":false}]}`,
	`{"type":"object","properties":{"a":{"type":"integer"}},"additionalProperties":{"type":"boolean"},"minProperties":1,"required":["a"]}`,
	`{"type":"object","properties":{"x":{"type":"object","properties":{"y":{"type":"object","properties":{"z":{"const":42}},"required":["z"]}},"required":["y"]}},"required":["x"]}`,
	`{"type":"number","exclusiveMinimum":-3,"maximum":3}`,
	`{"type":"array","items":{"type":"number","exclusiveMinimum":-0.75,"maximum":2.125},"minItems":3,"maxItems":3}`,
	`{"type":"array","items":{"anyOf":[{"type":"integer","multipleOf":3},{"type":"number","multipleOf":0.05,"maximum":1}]},"minItems":2,"maxItems":4}`,
	`{"type":"array","items":{"type":"integer","minimum":0,"maximum":255},"minItems":2}`,
}

type walkResult struct {
	out      []byte
	complete bool
}

// randomWalk samples uniformly among the allowed tokens at each step
// until an end-of-generation token or maxSteps, checking that each chosen
// token is accepted.
func randomWalk(t *testing.T, g *Grammar, rng *rand.Rand, maxSteps int, mask []uint64) walkResult {
	t.Helper()
	v := g.vocab
	m := g.NewMatcher()
	var out []byte
	for step := 0; step < maxSteps; step++ {
		m.FillMask(mask)
		tok := sampleMask(mask, rng)
		if tok < 0 {
			t.Fatalf("dead end after %q", out)
		}
		if err := m.Accept(tok); err != nil {
			t.Fatalf("after %q: allowed token %q rejected: %v", out, v.Token(tok), err)
		}
		if m.IsTerminated() {
			return walkResult{out, true}
		}
		out = append(out, v.Token(tok)...)
	}
	return walkResult{out, false}
}

func TestRandomWalkSchemas(t *testing.T) {
	v, _ := testVocab(t, "qwen3")
	mask := make([]uint64, v.MaskWords())
	runs, steps := 60, 300
	if testing.Short() {
		runs = 8
	}
	for i, src := range randomSchemas {
		t.Run("", func(t *testing.T) {
			g, err := Compile(Spec{JSONSchema: src}, v, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			doc, err := jsonschema.UnmarshalJSON(strings.NewReader(src))
			if err != nil {
				t.Fatal(err)
			}
			c := jsonschema.NewCompiler()
			c.AssertFormat()
			if err := c.AddResource("s.json", doc); err != nil {
				t.Fatal(err)
			}
			sch, err := c.Compile("s.json")
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			done := 0
			for r := 0; r < runs; r++ {
				res := randomWalk(t, g, rng, steps, mask)
				if !res.complete {
					continue
				}
				done++
				inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(res.out))
				if err != nil {
					t.Fatalf("output is not JSON: %v\n%s", err, res.out)
				}
				if err := sch.Validate(inst); err != nil {
					t.Fatalf("output does not validate: %v\n%s", err, res.out)
				}
				if !json.Valid(res.out) {
					t.Fatalf("encoding/json rejects %q", res.out)
				}
			}
			t.Logf("schema %d: %d of %d walks completed", i, done, runs)
			if done == 0 {
				t.Errorf("no walk completed")
			}
		})
	}
}

func TestRandomWalkRegex(t *testing.T) {
	v, _ := testVocab(t, "qwen3")
	mask := make([]uint64, v.MaskWords())
	for i, src := range []string{
		`(\+1 )?\(\d{3}\) \d{3}-\d{4}`,
		`[A-Z][a-z]{1,8}( [A-Z][a-z]{1,8}){0,2}`,
		`(yes|no|maybe)(, (yes|no|maybe)){0,3}\.`,
		`\w{1,10}@\w{1,10}\.(com|org)`,
		`[^\n]{0,20}\n`,
		`(?i)select \* from [a-z_]{1,12}( where [a-z]{1,5} ?= ?\d{1,4})?;`,
	} {
		t.Run("", func(t *testing.T) {
			g, err := Compile(Spec{Regex: src}, v, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			re := regexp.MustCompile(`^(?:` + src + `)$`)
			rng := rand.New(rand.NewPCG(uint64(i), 9))
			done := 0
			for r := 0; r < 30; r++ {
				res := randomWalk(t, g, rng, 100, mask)
				if !res.complete {
					continue
				}
				done++
				if !re.Match(res.out) {
					t.Fatalf("%q does not match %s", res.out, src)
				}
			}
			if done == 0 {
				t.Errorf("no walk completed")
			}
		})
	}
}

func TestRandomWalkGBNFAndChoice(t *testing.T) {
	v, _ := testVocab(t, "qwen3")
	mask := make([]uint64, v.MaskWords())
	choices := []string{"red", "green", "blue", "reddish"}
	gc, err := Compile(Spec{Choice: choices}, v, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	gj, err := Compile(Spec{GBNF: jsonGBNF}, v, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	seen := map[string]bool{}
	for r := 0; r < 40; r++ {
		res := randomWalk(t, gc, rng, 20, mask)
		if !res.complete {
			t.Fatalf("choice walk did not complete: %q", res.out)
		}
		seen[string(res.out)] = true
		found := false
		for _, c := range choices {
			found = found || c == string(res.out)
		}
		if !found {
			t.Fatalf("choice output %q", res.out)
		}
	}
	if len(seen) < 3 {
		t.Errorf("only %v seen", seen)
	}
	for r := 0; r < 20; r++ {
		res := randomWalk(t, gj, rng, 120, mask)
		if res.complete && !json.Valid(res.out) {
			t.Fatalf("gbnf json output invalid: %q", res.out)
		}
	}
}

// sampleMask returns a uniformly chosen set bit of mask, or -1.
func sampleMask(mask []uint64, rng *rand.Rand) int {
	n := popcount(mask)
	if n == 0 {
		return -1
	}
	k := rng.IntN(n)
	for w, x := range mask {
		c := bits.OnesCount64(x)
		if k >= c {
			k -= c
			continue
		}
		for ; k > 0; k-- {
			x &= x - 1
		}
		return w*64 + bits.TrailingZeros64(x)
	}
	return -1
}

// The SentencePiece vocabulary (▁ for spaces, <0xNN> byte tokens) drives
// the same walks: non-ASCII text is built from byte tokens.
func TestRandomWalkSentencePiece(t *testing.T) {
	v, _ := testVocab(t, "mistral-sp")
	mask := make([]uint64, v.MaskWords())
	src := `{"type":"object","properties":{"name":{"type":"string","maxLength":6},"n":{"type":"integer","minimum":0,"maximum":99}},"required":["name","n"],"additionalProperties":false}`
	g, err := Compile(Spec{JSONSchema: src}, v, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	doc, _ := jsonschema.UnmarshalJSON(strings.NewReader(src))
	if err := c.AddResource("s.json", doc); err != nil {
		t.Fatal(err)
	}
	sch := c.MustCompile("s.json")
	rng := rand.New(rand.NewPCG(8, 8))
	done := 0
	for r := 0; r < 40; r++ {
		res := randomWalk(t, g, rng, 200, mask)
		if !res.complete {
			continue
		}
		done++
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(res.out))
		if err != nil {
			t.Fatalf("not JSON: %v: %q", err, res.out)
		}
		if err := sch.Validate(inst); err != nil {
			t.Fatalf("invalid: %v: %q", err, res.out)
		}
	}
	if done == 0 {
		t.Fatal("no walk completed")
	}
}

func popcount(mask []uint64) int {
	n := 0
	for _, x := range mask {
		n += bits.OnesCount64(x)
	}
	return n
}
