package openai

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/grammar"
	"github.com/llmserve/llmserve/toolparse"
)

func TestConstraint(t *testing.T) {
	for _, c := range []struct {
		body  string
		param string
		want  grammar.Spec
		err   string // a 400 naming param whose message holds err
	}{
		{`{}`, "", grammar.Spec{}, ""},
		{`{"response_format":{"type":"text"}}`, "", grammar.Spec{}, ""},
		{`{"response_format":{"type":"json_object"}}`, "response_format", grammar.Spec{JSONObject: true}, ""},
		{`{"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"integer"},"strict":true}}}`,
			"response_format", grammar.Spec{JSONSchema: `{"type":"integer"}`, Strict: true}, ""},
		{`{"response_format":{"type":"json_schema","json_schema":{"name":"x"}}}`, "response_format", grammar.Spec{}, "json_schema.schema is required"},
		{`{"response_format":{"type":"json_schema"}}`, "response_format", grammar.Spec{}, "json_schema is required"},
		{`{"response_format":{"type":"xml"}}`, "response_format", grammar.Spec{}, `"xml" is not supported`},
		{`{"response_format":{}}`, "response_format", grammar.Spec{}, "type is required"},
		{`{"structured_outputs":{"json":{"type":"string"},"disable_any_whitespace":true,"disable_additional_properties":true}}`,
			"structured_outputs", grammar.Spec{JSONSchema: `{"type":"string"}`, Strict: true, CompactJSON: true}, ""},
		{`{"structured_outputs":{"json":"{\"type\":\"string\"}"}}`, "structured_outputs", grammar.Spec{JSONSchema: `{"type":"string"}`}, ""},
		{`{"structured_outputs":{"json":"{\"type\":"}}`, "structured_outputs", grammar.Spec{}, "not valid JSON"},
		{`{"structured_outputs":{"regex":"[a-z]+"}}`, "structured_outputs", grammar.Spec{Regex: "[a-z]+"}, ""},
		{`{"structured_outputs":{"choice":["yes","no"]}}`, "structured_outputs", grammar.Spec{Choice: []string{"yes", "no"}}, ""},
		{`{"structured_outputs":{"choice":[]}}`, "structured_outputs", grammar.Spec{}, "must not be empty"},
		{`{"structured_outputs":{"grammar":"root ::= \"a\""}}`, "structured_outputs", grammar.Spec{GBNF: `root ::= "a"`}, ""},
		{`{"structured_outputs":{"grammar":"start: \"a\""}}`, "structured_outputs", grammar.Spec{Lark: `start: "a"`}, ""},
		{`{"structured_outputs":{"json_object":true}}`, "structured_outputs", grammar.Spec{JSONObject: true}, ""},
		{`{"structured_outputs":{}}`, "structured_outputs", grammar.Spec{}, "must set one of"},
		{`{"structured_outputs":{"regex":"a","choice":["a"]}}`, "structured_outputs", grammar.Spec{}, "only one of"},
		{`{"structured_outputs":{"regex":"a","whitespace_pattern":" "}}`, "structured_outputs", grammar.Spec{}, "whitespace_pattern is not supported"},
		{`{"structured_outputs":{"structural_tag":"{}"}}`, "structured_outputs", grammar.Spec{}, "structural_tag is not supported"},
		{`{"guided_json":{"type":"boolean"}}`, "guided_json", grammar.Spec{JSONSchema: `{"type":"boolean"}`}, ""},
		{`{"guided_json":null}`, "", grammar.Spec{}, ""},
		{`{"guided_regex":"\\d+"}`, "guided_regex", grammar.Spec{Regex: `\d+`}, ""},
		{`{"guided_choice":["a","b"]}`, "guided_choice", grammar.Spec{Choice: []string{"a", "b"}}, ""},
		{`{"guided_grammar":"root ::= [0-9]+"}`, "guided_grammar", grammar.Spec{GBNF: "root ::= [0-9]+"}, ""},
		{`{"guided_whitespace_pattern":" "}`, "guided_whitespace_pattern", grammar.Spec{}, "not supported"},
		{`{"response_format":{"type":"json_object"},"guided_regex":"a"}`, "guided_regex", grammar.Spec{}, "only one structured output constraint"},
		{`{"response_format":{"type":"json_object"},"structured_outputs":{"regex":"a"}}`, "structured_outputs", grammar.Spec{}, "response_format and structured_outputs"},
	} {
		var r ChatCompletionRequest
		if err := json.Unmarshal([]byte(c.body), &r); err != nil {
			t.Fatalf("%s: %v", c.body, err)
		}
		got, err := r.Constraint()
		if c.err != "" {
			var pe *ParamError
			if !asParamError(err, &pe) || pe.Param != c.param || !strings.Contains(pe.Message, c.err) {
				t.Errorf("%s: got %v, want a 400 on %s saying %q", c.body, err, c.param, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.body, err)
			continue
		}
		if c.param == "" {
			if got != nil {
				t.Errorf("%s: constraint %+v", c.body, got)
			}
			continue
		}
		if got == nil || got.Param != c.param || !reflect.DeepEqual(got.Spec, c.want) {
			t.Errorf("%s: got %+v, want %s %+v", c.body, got, c.param, c.want)
		}
	}
}

func asParamError(err error, pe **ParamError) bool {
	p, ok := err.(*ParamError)
	*pe = p
	return ok
}

func TestToolSetup(t *testing.T) {
	tools := `"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"b":{},"a":{}}},"strict":true}},{"function":{"description":"d","name":"g"},"x":1}]`
	for _, c := range []struct {
		body, choice, name string
		parallel           bool
		err                string
	}{
		{`{}`, ToolChoiceNone, "", true, ""},
		{`{` + tools + `}`, ToolChoiceAuto, "", true, ""},
		{`{` + tools + `,"tool_choice":"none"}`, ToolChoiceNone, "", true, ""},
		{`{` + tools + `,"tool_choice":"required","parallel_tool_calls":false}`, ToolChoiceRequired, "", false, ""},
		{`{` + tools + `,"tool_choice":{"type":"function","function":{"name":"g"}}}`, ToolChoiceNamed, "g", true, ""},
		{`{` + tools + `,"tool_choice":{"type":"function","function":{"name":"h"}}}`, "", "", false, `"h", which is not in tools`},
		{`{` + tools + `,"tool_choice":{"type":"function"}}`, "", "", false, "name is required"},
		{`{` + tools + `,"tool_choice":"any"}`, "", "", false, `"any" is not supported`},
		{`{` + tools + `,"tool_choice":3}`, "", "", false, "must be"},
		{`{"tool_choice":"required"}`, "", "", false, "needs tools"},
		{`{"tools":[],"tool_choice":"required"}`, ToolChoiceNone, "", true, ""},
		{`{"tool_choice":"none"}`, ToolChoiceNone, "", true, ""},
		{`{"tools":[{"type":"function"}]}`, "", "", false, "tools[0]: function is required"},
		{`{"tools":[{"type":"code_interpreter","function":{"name":"f"}}]}`, "", "", false, `type must be "function"`},
		{`{"tools":[{"function":{"name":""}}]}`, "", "", false, "name must be a non-empty string"},
		{`{"tools":[{"function":{"name":"f","parameters":[1]}}]}`, "", "", false, "parameters must be a JSON Schema object"},
		{`{"tools":[3]}`, "", "", false, "must be an object"},
	} {
		var r ChatCompletionRequest
		if err := json.Unmarshal([]byte(c.body), &r); err != nil {
			t.Fatalf("%s: %v", c.body, err)
		}
		ts, err := r.ToolSetup()
		if c.err != "" {
			var pe *ParamError
			if !asParamError(err, &pe) || (pe.Param != "tools" && pe.Param != "tool_choice") || !strings.Contains(pe.Message, c.err) {
				t.Errorf("%s: got %v, want %q", c.body, err, c.err)
			}
			continue
		}
		if err != nil || ts.Choice != c.choice || ts.Name != c.name || ts.Parallel != c.parallel {
			t.Errorf("%s: got %+v %v", c.body, ts, err)
		}
	}
	var r ChatCompletionRequest
	if err := json.Unmarshal([]byte(`{`+tools+`}`), &r); err != nil {
		t.Fatal(err)
	}
	ts, _ := r.ToolSetup()
	// As vLLM renders them: declared fields first (null when absent), key
	// order of everything else kept.
	want := []string{
		`{"type":"function","function":{"name":"f","description":null,"parameters":{"type":"object","properties":{"b":{},"a":{}}},"strict":true}}`,
		`{"type":"function","function":{"name":"g","description":"d","parameters":null},"x":1}`,
	}
	for i, w := range want {
		if string(ts.Render[i]) != w {
			t.Errorf("render %d:\n got %s\nwant %s", i, ts.Render[i], w)
		}
	}
	if f := ts.Tools[0].Function; f.Name != "f" || f.Strict == nil || !*f.Strict || ts.Tools[1].Function.Description != "d" {
		t.Errorf("tools %+v", ts.Tools)
	}
}

func TestNormalizeToolCalls(t *testing.T) {
	var msgs []map[string]any
	if err := json.Unmarshal([]byte(`[{"role":"user","content":"hi"},
		{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"b\": 1, \"a\": [2]}"}},
			{"id":"call_2","type":"function","function":{"name":"g","arguments":""}}]},
		{"role":"tool","tool_call_id":"call_1","content":"3"}]`), &msgs); err != nil {
		t.Fatal(err)
	}
	out, err := NormalizeMessages("messages", msgs)
	if err != nil {
		t.Fatal(err)
	}
	a := out[1]
	if a["content"] != "" {
		t.Errorf("content %#v", a["content"])
	}
	calls := a["tool_calls"].([]any)
	args := calls[0].(map[string]any)["function"].(map[string]any)["arguments"]
	if raw, ok := args.(json.RawMessage); !ok || string(raw) != `{"b": 1, "a": [2]}` {
		t.Errorf("arguments %#v", args)
	}
	if raw := calls[1].(map[string]any)["function"].(map[string]any)["arguments"].(json.RawMessage); string(raw) != "{}" {
		t.Errorf("empty arguments %s", raw)
	}
	// The client's maps are left alone.
	if s, ok := msgs[1]["tool_calls"].([]any)[0].(map[string]any)["function"].(map[string]any)["arguments"].(string); !ok || s == "" {
		t.Error("input modified")
	}
	for _, bad := range []struct{ msg, err string }{
		{`{"role":"assistant","tool_calls":{}}`, "tool_calls must be a list"},
		{`{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{"}}]}`, "arguments must be a string of JSON"},
		{`{"role":"assistant","tool_calls":[{"function":{"arguments":"{}"}}]}`, "name must be a non-empty string"},
		{`{"role":"assistant","tool_calls":[1]}`, "must be an object"},
		{`{"role":"tool","tool_call_id":5,"content":"x"}`, "tool_call_id must be a string"},
	} {
		var m map[string]any
		_ = json.Unmarshal([]byte(bad.msg), &m)
		_, err := NormalizeMessages("messages", []map[string]any{m})
		var pe *ParamError
		if !asParamError(err, &pe) || pe.Param != "messages" || !strings.Contains(pe.Message, bad.err) || !strings.Contains(pe.Message, "messages[0]") {
			t.Errorf("%s: %v", bad.msg, err)
		}
	}
}

func TestEncodeToolCallsAndReasoning(t *testing.T) {
	full := NewEncoder(KindChat, "c", 1, "m")
	b := full.Append(nil, []Choice{{Role: "assistant", WantReasoning: true, FinishReason: "tool_calls",
		ToolCalls: []toolparse.ToolCallDelta{{ID: "call_1", Type: "function", Name: "f", Arguments: `{"a": "\n"}`}}}}, nil)
	want := `{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"reasoning_content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\": \"\\n\"}"}}]},"logprobs":null,"finish_reason":"tool_calls","stop_reason":null}]}`
	if string(b) != want {
		t.Errorf("full:\n got %s\nwant %s", b, want)
	}
	b = full.Append(nil, []Choice{{Role: "assistant", Text: []byte("hi"), Reasoning: []byte("hmm"), WantReasoning: true}}, nil)
	if !strings.Contains(string(b), `"message":{"role":"assistant","content":"hi","reasoning_content":"hmm"}`) {
		t.Errorf("reasoning: %s", b)
	}
	chunk := NewEncoder(KindChatChunk, "c", 1, "m")
	b = chunk.Append(nil, []Choice{{ToolCalls: []toolparse.ToolCallDelta{{Index: 1, ID: "call_2", Type: "function", Name: "g"}}}}, nil)
	if !strings.Contains(string(b), `"delta":{"tool_calls":[{"index":1,"id":"call_2","type":"function","function":{"name":"g","arguments":""}}]}`) {
		t.Errorf("first delta: %s", b)
	}
	b = chunk.Append(nil, []Choice{{ToolCalls: []toolparse.ToolCallDelta{{Index: 1, Arguments: `{"x"`}}}}, nil)
	if !strings.Contains(string(b), `"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"x\""}}]}`) {
		t.Errorf("argument delta: %s", b)
	}
	b = chunk.Append(nil, []Choice{{Reasoning: []byte("r")}}, nil)
	if !strings.Contains(string(b), `"delta":{"reasoning_content":"r"}`) {
		t.Errorf("reasoning delta: %s", b)
	}
	for _, s := range []string{string(b)} {
		if !json.Valid([]byte(s)) {
			t.Errorf("invalid JSON %s", s)
		}
	}
}
