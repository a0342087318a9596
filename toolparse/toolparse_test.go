package toolparse

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// counterIDs makes ids call_0, call_1, ... so one-shot and streamed parses
// of the same text get the same ids.
func counterIDs() func() string {
	n := 0
	return func() string {
		n++
		return fmt.Sprintf("id%d", n-1)
	}
}

func newParser(t *testing.T, name string) Parser {
	t.Helper()
	p, err := New(name, Options{NewID: counterIDs()})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type parseCase struct {
	name    string
	text    string
	content string
	calls   [][2]string // name, arguments
}

func checkParse(t *testing.T, parser string, cases []parseCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			content, calls := newParser(t, parser).Parse(c.text)
			if content != c.content {
				t.Errorf("content %q, want %q", content, c.content)
			}
			var got [][2]string
			for _, tc := range calls {
				got = append(got, [2]string{tc.Name, tc.Arguments})
				if tc.Type != "function" || tc.ID == "" {
					t.Errorf("call %+v: type or id missing", tc)
				}
			}
			if !reflect.DeepEqual(got, c.calls) {
				t.Errorf("calls %q, want %q", got, c.calls)
			}
			checkSplits(t, parser, c.text)
		})
	}
}

// checkSplits feeds text cut at every byte position (and one byte at a
// time) and checks the reassembled deltas equal Parse's result.
func checkSplits(t *testing.T, parser, text string) {
	t.Helper()
	wantContent, wantCalls := newParser(t, parser).Parse(text)
	try := func(chunks []string) {
		s := newParser(t, parser).NewStream()
		var ds []Delta
		for _, ch := range chunks {
			d := s.Add(ch)
			ds = append(ds, d)
		}
		ds = append(ds, s.Finish())
		for _, d := range ds {
			for _, tc := range d.ToolCalls {
				if tc.ID != "" && tc.Name == "" {
					t.Fatalf("chunks %q: first delta without a name: %+v", chunks, tc)
				}
			}
		}
		content, calls := Collect(ds)
		if content != wantContent || !reflect.DeepEqual(calls, wantCalls) {
			t.Fatalf("chunks %q:\ncontent %q calls %+v\nwant    %q calls %+v", chunks, content, calls, wantContent, wantCalls)
		}
	}
	for i := 0; i <= len(text); i++ {
		try([]string{text[:i], text[i:]})
	}
	bytes := make([]string, len(text))
	for i := 0; i < len(text); i++ {
		bytes[i] = text[i : i+1]
	}
	try(bytes)
	// Three pieces at a spread of positions.
	for i := 0; i < len(text); i += 3 {
		for j := i; j <= len(text); j += 5 {
			try([]string{text[:i], text[i:j], text[j:]})
		}
	}
}

func TestHermes(t *testing.T) {
	checkParse(t, "hermes", []parseCase{
		{"plain", "Hello there.", "Hello there.", nil},
		{"one call", "I'll check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>",
			"I'll check.", [][2]string{{"get_weather", `{"city": "Paris", "unit": "c"}`}}},
		{"two calls", "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"arguments\": {\"x\": [1, {\"y\": \"}\"}]}, \"name\": \"b\"}\n</tool_call>",
			"", [][2]string{{"a", "{}"}, {"b", `{"x": [1, {"y": "}"}]}`}}},
		{"no arguments", `<tool_call>{"name": "now"}</tool_call> done`, "done", [][2]string{{"now", "{}"}}},
		{"escaped name", `<tool_call>{"name": "a\u0062c", "arguments": "s"}</tool_call>`, "", [][2]string{{"abc", `"s"`}}},
		{"literal arguments", `<tool_call>{"name": "f", "arguments": 42}</tool_call>`, "", [][2]string{{"f", "42"}}},
		{"truncated", "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"q\": \"wea", "", [][2]string{{"f", `{"q": "wea`}}},
		{"malformed is content", "x <tool_call>not json</tool_call> y", "x <tool_call>not json</tool_call> y", nil},
		{"no name is content", `<tool_call>{"arguments": {}}</tool_call>`, `<tool_call>{"arguments": {}}</tool_call>`, nil},
		{"tag-like content", "a < b <tool <tool_cal", "a < b <tool <tool_cal", nil},
		{"content between", "<tool_call>{\"name\":\"a\"}</tool_call>\n\nthen\n<tool_call>{\"name\":\"b\"}</tool_call>\n",
			"then", [][2]string{{"a", "{}"}, {"b", "{}"}}},
		{"close tag in string", `<tool_call>{"name": "f", "arguments": {"s": "</tool_call>"}}</tool_call>`, `"}}</tool_call>`, [][2]string{{"f", `{"s": "`}}},
		{"unicode", "Voilà 👍 <tool_call>{\"name\": \"é\", \"arguments\": {\"t\": \"日本\"}}</tool_call>", "Voilà 👍", [][2]string{{"é", `{"t": "日本"}`}}},
	})
}

func TestLlama3JSON(t *testing.T) {
	checkParse(t, "llama3_json", []parseCase{
		{"plain", "The answer is 4.", "The answer is 4.", nil},
		{"one call", `{"name": "get_weather", "parameters": {"city": "Paris"}}`, "", [][2]string{{"get_weather", `{"city": "Paris"}`}}},
		{"python tag", "<|python_tag|>{\"name\": \"f\", \"arguments\": {\"a\": 1}}", "", [][2]string{{"f", `{"a": 1}`}}},
		{"several", " {\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"x\": true}}\n", "", [][2]string{{"a", "{}"}, {"b", `{"x": true}`}}},
		{"not a call", `{"result": 4}`, `{"result": 4}`, nil},
		{"later text", `{"name": "a", "parameters": {}} Done.`, "Done.", [][2]string{{"a", "{}"}}},
		{"later non-call", `{"name": "a", "parameters": {}} {"x": 1}`, `{"x": 1}`, [][2]string{{"a", "{}"}}},
		{"tag only", "<|python_tag|>print(1)", "<|python_tag|>print(1)", nil},
		{"malformed after name", `{"name": "a", "parameters": {"x": 1} oops} more`, "", [][2]string{{"a", `{"x": 1}`}}},
		{"truncated", `{"name": "a", "parameters": {"x": [1, 2`, "", [][2]string{{"a", `{"x": [1, 2`}}},
		{"whitespace only", "  \n", "  \n", nil},
	})
}

func TestMistral(t *testing.T) {
	checkParse(t, "mistral", []parseCase{
		{"plain", "Bonjour.", "Bonjour.", nil},
		{"array", `[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "now", "arguments": {}}]`,
			"", [][2]string{{"get_weather", `{"city": "Paris"}`}, {"now", "{}"}}},
		{"content first", "Let me look.\n[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"a\": \"[ARGS]\"}}]", "Let me look.", [][2]string{{"f", `{"a": "[ARGS]"}`}}},
		{"args form", `[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]now[ARGS]{}`,
			"", [][2]string{{"get_weather", `{"city": "Paris"}`}, {"now", "{}"}}},
		{"args form literal", `[TOOL_CALLS]f[ARGS]12 [TOOL_CALLS]g[ARGS] "x"`, "", [][2]string{{"f", "12"}, {"g", `"x"`}}},
		{"single object", `[TOOL_CALLS]{"name": "f", "arguments": {"x": 1}}`, "", [][2]string{{"f", `{"x": 1}`}}},
		{"garbage dropped", "[TOOL_CALLS] this is not {a call", "", nil},
		{"no args tag", "[TOOL_CALLS]name_only", "", nil},
		{"truncated", `[TOOL_CALLS]f[ARGS]{"q": "abc`, "", [][2]string{{"f", `{"q": "abc`}}},
		{"bracket content", "a [TOOL b [TOOL_CALL", "a [TOOL b [TOOL_CALL", nil},
	})
}

func TestNew(t *testing.T) {
	for _, n := range Names() {
		p, err := New(n, Options{})
		if err != nil {
			t.Fatal(err)
		}
		_, calls := p.Parse(`<tool_call>{"name":"f"}</tool_call>[TOOL_CALLS]f[ARGS]{}`)
		_ = calls
	}
	if _, err := New("nope", Options{}); err == nil || !strings.Contains(err.Error(), "hermes") {
		t.Fatalf("unknown parser: %v", err)
	}
	p, _ := New("mistral", Options{})
	_, calls := p.Parse(`[TOOL_CALLS]f[ARGS]{}`)
	if len(calls) != 1 || len(calls[0].ID) != 9 {
		t.Fatalf("mistral id %+v", calls)
	}
	p, _ = New("hermes", Options{})
	_, calls = p.Parse(`<tool_call>{"name":"f"}</tool_call>`)
	if len(calls) != 1 || !strings.HasPrefix(calls[0].ID, "call_") || len(calls[0].ID) != 29 {
		t.Fatalf("hermes id %+v", calls)
	}
}
