package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/llmserve/llmserve/toolparse"
)

// Tool choice modes.
const (
	ToolChoiceNone     = "none"
	ToolChoiceAuto     = "auto"
	ToolChoiceRequired = "required"
	ToolChoiceNamed    = "function" // {"type": "function", "function": {"name": ...}}
)

// MaxTools bounds the tools of one request.
const MaxTools = 512

// ToolSetup is a chat request's tools, tool_choice and parallel_tool_calls,
// validated as vLLM does.
type ToolSetup struct {
	Tools []toolparse.Tool
	// Render is what the chat template gets as "tools": each tool as vLLM
	// passes it (type, then function with name, description and parameters,
	// null when absent, then any other fields), key order kept.
	Render []json.RawMessage
	Choice string // one of the ToolChoice modes
	Name   string // the function a named choice forces
	// Parallel: more than one call is allowed (parallel_tool_calls,
	// default true).
	Parallel bool
}

// ToolSetup validates tools, tool_choice and parallel_tool_calls. Without
// tool_choice, tools mean "auto" and no tools "none"; "required" with an
// empty tools list is "none" (OpenAI's behaviour, as in vLLM).
func (r *ChatCompletionRequest) ToolSetup() (ToolSetup, error) {
	ts := ToolSetup{Choice: ToolChoiceNone, Parallel: r.ParallelToolCalls == nil || *r.ParallelToolCalls}
	var err error
	if ts.Tools, ts.Render, err = parseTools(r.Tools); err != nil {
		return ts, err
	}
	hasTools := len(r.Tools) > 0
	if isNull(r.ToolChoice) {
		if hasTools {
			ts.Choice = ToolChoiceAuto
		}
		return ts, nil
	}
	tc := bytes.TrimSpace(r.ToolChoice)
	if tc[0] == '"' {
		var s string
		if err := json.Unmarshal(tc, &s); err != nil {
			return ts, Invalid("tool_choice", "tool_choice: %v", err)
		}
		switch s {
		case ToolChoiceNone:
			return ts, nil
		case ToolChoiceAuto, ToolChoiceRequired:
		default:
			return ts, Invalid("tool_choice", `tool_choice %q is not supported: use "none", "auto", "required" or {"type": "function", "function": {"name": ...}}`, s)
		}
		if r.Tools == nil {
			return ts, Invalid("tool_choice", "tool_choice %q needs tools", s)
		}
		if !hasTools { // "required" or "auto" with tools: []
			return ts, nil
		}
		ts.Choice = s
		return ts, nil
	}
	const usage = `use {"type": "function", "function": {"name": "my_function"}}`
	var named struct {
		Type     string `json:"type"`
		Function *struct {
			Name *string `json:"name"`
		} `json:"function"`
	}
	if tc[0] != '{' || json.Unmarshal(tc, &named) != nil {
		return ts, Invalid("tool_choice", "tool_choice must be \"none\", \"auto\", \"required\" or an object: %s", usage)
	}
	if named.Type != "" && named.Type != "function" {
		return ts, Invalid("tool_choice", "tool_choice.type %q is not supported: %s", named.Type, usage)
	}
	if named.Function == nil || named.Function.Name == nil || *named.Function.Name == "" {
		return ts, Invalid("tool_choice", "tool_choice.function.name is required: %s", usage)
	}
	name := *named.Function.Name
	for _, t := range ts.Tools {
		if t.Function.Name == name {
			ts.Choice, ts.Name = ToolChoiceNamed, name
			return ts, nil
		}
	}
	return ts, Invalid("tool_choice", "tool_choice names the function %q, which is not in tools", name)
}

// parseTools validates a request's tools and renders them for the chat
// template.
func parseTools(raws []json.RawMessage) (tools []toolparse.Tool, render []json.RawMessage, err error) {
	if len(raws) > MaxTools {
		return nil, nil, Invalid("tools", "at most %d tools are allowed, got %d", MaxTools, len(raws))
	}
	for i, raw := range raws {
		t, r, err := parseTool(raw)
		if err != nil {
			return nil, nil, Invalid("tools", "tools[%d]: %v", i, err)
		}
		tools = append(tools, t)
		render = append(render, r)
	}
	return tools, render, nil
}

// parseTool validates one tool and renders it as vLLM hands it to chat
// templates (pydantic's model_dump of its tool type: declared fields in
// order, null when absent, then the other fields as sent).
func parseTool(raw json.RawMessage) (toolparse.Tool, json.RawMessage, error) {
	var t toolparse.Tool
	fields, err := objectFields(raw)
	if err != nil {
		return t, nil, errors.New("must be an object")
	}
	typ, fn := json.RawMessage(`"function"`), json.RawMessage(nil)
	var rest []field
	for _, f := range fields {
		switch f.key {
		case "type":
			var s string
			if json.Unmarshal(f.val, &s) != nil || s != "function" {
				return t, nil, fmt.Errorf(`type must be "function", got %s`, f.val)
			}
			typ = f.val
		case "function":
			fn = f.val
		default:
			rest = append(rest, f)
		}
	}
	if fn == nil {
		return t, nil, errors.New("function is required")
	}
	ffields, err := objectFields(fn)
	if err != nil {
		return t, nil, errors.New("function must be an object")
	}
	decl := map[string]json.RawMessage{"name": nil, "description": nil, "parameters": nil}
	var frest []field
	for _, f := range ffields {
		if _, ok := decl[f.key]; ok {
			decl[f.key] = f.val
		} else {
			frest = append(frest, f)
		}
	}
	t.Type = "function"
	if json.Unmarshal(decl["name"], &t.Function.Name) != nil || t.Function.Name == "" {
		return t, nil, errors.New("function.name must be a non-empty string")
	}
	if d := decl["description"]; !isNull(d) {
		if json.Unmarshal(d, &t.Function.Description) != nil {
			return t, nil, errors.New("function.description must be a string")
		}
	}
	if p := decl["parameters"]; !isNull(p) {
		if bytes.TrimSpace(p)[0] != '{' {
			return t, nil, errors.New("function.parameters must be a JSON Schema object")
		}
		t.Function.Parameters = p
	}
	for _, f := range frest {
		if f.key == "strict" && !isNull(f.val) {
			var b bool
			if json.Unmarshal(f.val, &b) != nil {
				return t, nil, errors.New("function.strict must be a boolean")
			}
			t.Function.Strict = &b
		}
	}
	var b bytes.Buffer
	b.WriteString(`{"type":`)
	b.Write(typ)
	b.WriteString(`,"function":{"name":`)
	b.Write(decl["name"])
	for _, k := range []string{"description", "parameters"} {
		b.WriteString(`,"` + k + `":`)
		if isNull(decl[k]) {
			b.WriteString("null")
		} else {
			b.Write(decl[k])
		}
	}
	writeFields(&b, frest)
	b.WriteByte('}')
	writeFields(&b, rest)
	b.WriteByte('}')
	return t, json.RawMessage(b.Bytes()), nil
}

type field struct {
	key string
	val json.RawMessage
}

func writeFields(b *bytes.Buffer, fs []field) {
	for _, f := range fs {
		b.WriteByte(',')
		k, _ := json.Marshal(f.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(f.val)
	}
}

// objectFields splits a JSON object into its members, in order.
func objectFields(raw json.RawMessage) ([]field, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("not an object")
	}
	var out []field
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return nil, err
		}
		out = append(out, field{key, val})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data")
	}
	return out, nil
}

// normalizeToolCalls checks an assistant message's tool_calls and turns
// each call's arguments (a JSON string, as OpenAI sends them) into the
// JSON value it holds, key order kept, as vLLM does before rendering:
// chat templates write them with tojson. Empty arguments are {}.
func normalizeToolCalls(param string, i int, v any) ([]any, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, Invalid(param, "%s[%d].tool_calls must be a list", param, i)
	}
	out := make([]any, len(list))
	for j, e := range list {
		at := fmt.Sprintf("%s[%d].tool_calls[%d]", param, i, j)
		tc, ok := e.(map[string]any)
		if !ok {
			return nil, Invalid(param, "%s must be an object", at)
		}
		fn, ok := tc["function"].(map[string]any)
		if !ok {
			return nil, Invalid(param, "%s.function must be an object", at)
		}
		if name, ok := fn["name"].(string); !ok || name == "" {
			return nil, Invalid(param, "%s.function.name must be a non-empty string", at)
		}
		if id, ok := tc["id"]; ok && id != nil {
			if _, ok := id.(string); !ok {
				return nil, Invalid(param, "%s.id must be a string", at)
			}
		}
		var args any
		switch a := fn["arguments"].(type) {
		case nil:
			args = json.RawMessage("{}")
		case string:
			if strings.TrimSpace(a) == "" {
				args = json.RawMessage("{}")
			} else if json.Valid([]byte(a)) {
				args = json.RawMessage(a)
			} else {
				return nil, Invalid(param, "%s.function.arguments must be a string of JSON", at)
			}
		case map[string]any, []any:
			args = a
		default:
			return nil, Invalid(param, "%s.function.arguments must be a string of JSON", at)
		}
		c := make(map[string]any, len(tc))
		for k, v := range tc {
			c[k] = v
		}
		f := make(map[string]any, len(fn))
		for k, v := range fn {
			f[k] = v
		}
		f["arguments"] = args
		c["function"] = f
		out[j] = c
	}
	return out, nil
}
