package toolparse

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/grammar"
	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/tokenizer"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

var testTools = []Tool{
	{Type: "function", Function: Function{Name: "get_weather", Parameters: json.RawMessage(`{
		"type": "object",
		"properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"$ref": "#/$defs/unit"}},
		"required": ["city", "unit"], "additionalProperties": false,
		"$defs": {"unit": {"enum": ["celsius", "fahrenheit"]}}}`)}},
	{Type: "function", Function: Function{Name: "now"}},
	{Type: "function", Function: Function{Name: "add", Parameters: json.RawMessage(`{
		"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "minimum": 0, "maximum": 9}},
		"required": ["a", "b"], "additionalProperties": false}`)}},
}

func TestRebaseRefs(t *testing.T) {
	got, err := rebaseRefs(json.RawMessage(`{"b": [1, {"$ref": "#/$defs/x"}, "#/no"], "$ref": "#", "a": {"$ref": "other.json#/y", "c": null}}`), "#/p")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"b":[1,{"$ref":"#/p/$defs/x"},"#/no"],"$ref":"#/p","a":{"$ref":"other.json#/y","c":null}}`
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestCallSchemaErrors(t *testing.T) {
	if _, err := CallSchema(testTools, "missing"); !errors.Is(err, ErrToolChoice) {
		t.Fatalf("unknown tool: %v", err)
	}
	if _, err := CallSchema(nil, ""); !errors.Is(err, ErrToolChoice) {
		t.Fatalf("no tools: %v", err)
	}
	if _, err := CallSchema([]Tool{{Function: Function{Name: "f", Parameters: json.RawMessage(`{"a":`)}}}, ""); !errors.Is(err, ErrToolChoice) {
		t.Fatalf("bad parameters: %v", err)
	}
}

// Outputs forced by HermesSpec parse back into the calls they spell.
func TestHermesSpecAccepts(t *testing.T) {
	spec, err := HermesSpec(testTools, "", true)
	if err != nil {
		t.Fatal(err)
	}
	g, err := grammar.Compile(spec, nil, grammar.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	good := "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>"
	for _, c := range []struct {
		text string
		ok   bool
	}{
		{good, true},
		{"<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": -3, \"b\": 9}}\n</tool_call>", true},
		{"<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": -3, \"b\": 10}}\n</tool_call>", false},
		{"<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"kelvin\"}}\n</tool_call>", false},
		{"<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call>", false},
		{"Sure! <tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>", false},
		{"", false},
	} {
		m := g.NewMatcher()
		ok := m.AcceptString(c.text) == nil && m.CanEnd()
		if ok != c.ok {
			t.Errorf("%q: accepted %v", c.text, ok)
		}
	}
	p, _ := New("hermes", Options{NewID: counterIDs()})
	_, calls := p.Parse(good)
	if len(calls) != 2 || calls[0].Name != "get_weather" || calls[1].Arguments != "{}" {
		t.Fatalf("parsed %+v", calls)
	}
	named, err := HermesSpec(testTools, "add", true)
	if err != nil {
		t.Fatal(err)
	}
	g, err = grammar.Compile(named, nil, grammar.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	m := g.NewMatcher()
	if m.AcceptString("<tool_call>\n{\"name\": \"now\"") == nil {
		t.Error("named choice accepted another tool")
	}
}

// Random walks under HermesSpec on the Qwen3 vocabulary: every completed
// output parses into calls of known tools whose arguments validate
// against the tool's parameters.
func TestHermesSpecRandomWalk(t *testing.T) {
	tok, err := tokenizer.LoadDir(shareddata.Path(t, "tokenizers", "qwen3"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := grammar.VocabFromTokenizer(tok)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := HermesSpec(testTools, "", true)
	if err != nil {
		t.Fatal(err)
	}
	g, err := grammar.Compile(spec, v, grammar.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	validators := toolValidators(t)
	rng := rand.New(rand.NewPCG(1, 1))
	mask := make([]uint64, v.MaskWords())
	done := 0
	for run := 0; run < 40; run++ {
		m := g.NewMatcher()
		var out []byte
		for step := 0; step < 200 && !m.IsTerminated(); step++ {
			m.FillMask(mask)
			id := sample(mask, rng)
			if id < 0 {
				t.Fatalf("dead end after %q", out)
			}
			if err := m.Accept(id); err != nil {
				t.Fatal(err)
			}
			out = append(out, v.Token(id)...)
		}
		if !m.IsTerminated() {
			continue
		}
		done++
		p, _ := New("hermes", Options{})
		content, calls := p.Parse(string(out))
		if content != "" || len(calls) == 0 {
			t.Fatalf("%q: content %q, %d calls", out, content, len(calls))
		}
		for _, c := range calls {
			val := validators[c.Name]
			if val == nil {
				t.Fatalf("%q: unknown tool %q", out, c.Name)
			}
			inst, err := jsonschema.UnmarshalJSON(strings.NewReader(c.Arguments))
			if err != nil {
				t.Fatalf("arguments %q: %v", c.Arguments, err)
			}
			if err := val.Validate(inst); err != nil {
				t.Fatalf("arguments %q: %v", c.Arguments, err)
			}
		}
	}
	if done == 0 {
		t.Fatal("no walk completed")
	}
	t.Logf("%d of 40 walks completed", done)
}

func sample(mask []uint64, rng *rand.Rand) int {
	n := 0
	for _, x := range mask {
		n += bits.OnesCount64(x)
	}
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

// toolValidators compiles each test tool's parameters schema (an empty
// object schema when it has none) with a JSON Schema validator.
func toolValidators(t *testing.T) map[string]*jsonschema.Schema {
	t.Helper()
	validators := map[string]*jsonschema.Schema{}
	for _, tl := range testTools {
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(parameters(tl)))
		if err != nil {
			t.Fatal(err)
		}
		c := jsonschema.NewCompiler()
		if err := c.AddResource("p.json", doc); err != nil {
			t.Fatal(err)
		}
		validators[tl.Function.Name] = c.MustCompile("p.json")
	}
	return validators
}
