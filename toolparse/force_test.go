package toolparse

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/grammar"
	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/tokenizer"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Each format's forced-call grammar accepts what its parser reads as calls
// and refuses other tools, prose and bad arguments.
func TestForceSpecAccepts(t *testing.T) {
	for _, c := range []struct {
		format, good string
		bad          []string
	}{
		{"hermes", "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>",
			[]string{"{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}"}},
		{"llama3_json", `{"name": "add", "parameters": {"a": 1, "b": 2}}; {"name": "now", "parameters": {}}`,
			[]string{`{"name": "add", "arguments": {"a": 1, "b": 2}}`, `{"name": "add", "parameters": {"a": 1, "b": 20}}`, `Sure {"name": "now", "parameters": {}}`}},
		{"mistral", `[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}]`,
			[]string{`[{"name": "now", "arguments": {}}]`, `[TOOL_CALLS][]`, `[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "K"}}]`}},
		{mistralArgsFormat, `[TOOL_CALLS]add[ARGS]{"a": 1, "b": 2}[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo", "unit": "celsius"}`,
			[]string{`[TOOL_CALLS]now[ARGS][1]`, `add[ARGS]{"a": 1, "b": 2}`, `[TOOL_CALLS]nope[ARGS]{}`,
				`[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo", "unit": "K"}`}},
	} {
		spec, err := ForceSpec(c.format, testTools, "", true)
		if err != nil {
			t.Fatal(err)
		}
		g, err := grammar.Compile(spec, nil, grammar.Limits{})
		if err != nil {
			t.Fatalf("%s: %v", c.format, err)
		}
		m := g.NewMatcher()
		if err := m.AcceptString(c.good); err != nil || !m.CanEnd() {
			t.Errorf("%s: refused %q: %v", c.format, c.good, err)
		}
		for _, b := range c.bad {
			m := g.NewMatcher()
			if m.AcceptString(b) == nil && m.CanEnd() {
				t.Errorf("%s: accepted %q", c.format, b)
			}
		}
		p, _ := New(parserOf(c.format), Options{})
		content, calls := p.Parse(c.good)
		if content != "" || len(calls) != 2 {
			t.Errorf("%s: parsed %q %+v", c.format, content, calls)
		}
		// One call only without parallel calls, and the named tool only.
		one, _ := ForceSpec(c.format, testTools, "", false)
		g1, err := grammar.Compile(one, nil, grammar.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if m := g1.NewMatcher(); m.AcceptString(c.good) == nil && m.CanEnd() {
			t.Errorf("%s: two calls accepted without parallel_tool_calls", c.format)
		}
		named, _ := ForceSpec(c.format, testTools, "now", true)
		gn, err := grammar.Compile(named, nil, grammar.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if m := gn.NewMatcher(); m.AcceptString(c.good) == nil && m.CanEnd() {
			t.Errorf("%s: named choice accepted other tools", c.format)
		}
	}
	if _, err := ForceSpec("pythonic", testTools, "", true); err == nil {
		t.Error("unknown format")
	}
}

// Random walks under every format's grammar on the Qwen3 vocabulary parse
// back into calls of the right tools with valid arguments.
func TestForceSpecRandomWalk(t *testing.T) {
	tok, err := tokenizer.LoadDir(shareddata.Path(t, "tokenizers", "qwen3"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := grammar.VocabFromTokenizer(tok)
	if err != nil {
		t.Fatal(err)
	}
	validators := toolValidators(t)
	mask := make([]uint64, v.MaskWords())
	for _, format := range []string{"llama3_json", "mistral", mistralArgsFormat} {
		for _, name := range []string{"", "add"} {
			spec, err := ForceSpec(format, testTools, name, true)
			if err != nil {
				t.Fatal(err)
			}
			g, err := grammar.Compile(spec, v, grammar.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(2, uint64(len(name))))
			done := 0
			for run := 0; run < 30; run++ {
				m := g.NewMatcher()
				var out []byte
				for step := 0; step < 200 && !m.IsTerminated(); step++ {
					m.FillMask(mask)
					id := sample(mask, rng)
					if id < 0 {
						t.Fatalf("%s: dead end after %q", format, out)
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
				p, _ := New(parserOf(format), Options{})
				content, calls := p.Parse(string(out))
				if content != "" || len(calls) == 0 {
					t.Fatalf("%s: %q: content %q, %d calls", format, out, content, len(calls))
				}
				for _, c := range calls {
					if name != "" && c.Name != name {
						t.Fatalf("%s: %q: call of %q", format, out, c.Name)
					}
					val := validators[c.Name]
					if val == nil {
						t.Fatalf("%s: %q: unknown tool %q", format, out, c.Name)
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
				t.Fatalf("%s %q: no walk completed", format, name)
			}
		}
	}
}

func TestDetect(t *testing.T) {
	for tpl, want := range map[string]string{
		`{{- '<tool_call>\n{"name": <function-name>, ...}\n</tool_call>' }}`:                                              "hermes",
		`{%- if message.tool_calls %}[TOOL_CALLS][{% for t in message.tool_calls %}...`:                                   "mistral",
		`{{- "<|python_tag|>" + tool_call.arguments }}`:                                                                   "llama3_json",
		`<|start_header_id|>user<|end_header_id|>Respond in the format {"name": function name, "parameters": dictionary}`: "llama3_json",
		`{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}`:                                                     "",
	} {
		if got := Detect(tpl); got != want {
			t.Errorf("Detect(%q) = %q, want %q", tpl, got, want)
		}
	}
	tok, err := tokenizer.LoadDir(shareddata.Path(t, "tokenizers", "qwen3"))
	if err != nil {
		t.Fatal(err)
	}
	if got := Detect(tok.ChatTemplate()); got != "hermes" {
		t.Errorf("Qwen3's template: %q", got)
	}
}

// parserOf is the parser that reads a forced format back.
func parserOf(format string) string {
	if format == mistralArgsFormat {
		return "mistral"
	}
	return format
}

// TestForceFormat: the mistral parser's calls are forced in the [ARGS]
// syntax exactly when the chat template writes it.
func TestForceFormat(t *testing.T) {
	for _, c := range []struct{ parser, template, want string }{
		{"mistral", `{{ "[TOOL_CALLS]" + tool.name + "[ARGS]" + args }}`, mistralArgsFormat},
		{"mistral", `[TOOL_CALLS] {{ tool_calls | tojson }}`, "mistral"},
		{"hermes", `[ARGS]`, "hermes"},
	} {
		if got := ForceFormat(c.parser, c.template); got != c.want {
			t.Errorf("ForceFormat(%q, %q) = %q, want %q", c.parser, c.template, got, c.want)
		}
	}
}
