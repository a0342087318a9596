package toolparse

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/llmserve/llmserve/grammar"
)

// Tool is an element of an OpenAI request's tools list.
type Tool struct {
	Type     string   `json:"type"` // "function"
	Function Function `json:"function"`
}

// Function describes a callable function.
type Function struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

// ErrToolChoice: the tools or tool_choice cannot be turned into a schema
// (the HTTP layer answers 400).
var ErrToolChoice = errors.New("toolparse: invalid tools or tool_choice")

// CallSchema is the JSON Schema of one call object as hermes and Mistral
// write it, {"name": <tool name>, "arguments": <its parameters>}, for any
// of tools (name == "", tool_choice "required") or for the named one.
// "$ref"s inside each tool's parameters are rewritten to stay valid where
// the parameters are placed.
func CallSchema(tools []Tool, name string) (json.RawMessage, error) {
	return callSchema(tools, name, "arguments", "#")
}

// callSchema is CallSchema with the arguments under argsKey ("parameters"
// for Llama 3) and the schema placed at base inside the final document.
func callSchema(tools []Tool, name, argsKey, base string) (json.RawMessage, error) {
	picked, err := pickTools(tools, name)
	if err != nil {
		return nil, err
	}
	key, _ := json.Marshal(argsKey)
	var sb strings.Builder
	one := func(t Tool, at string) error {
		p, err := rebaseRefs(parameters(t), at+"/properties/"+argsKey)
		if err != nil {
			return fmt.Errorf("%w: function %q: parameters: %v", ErrToolChoice, t.Function.Name, err)
		}
		nm, _ := json.Marshal(t.Function.Name)
		fmt.Fprintf(&sb, `{"type":"object","properties":{"name":{"const":%s},%s:%s},"required":["name",%s],"additionalProperties":false}`, nm, key, p, key)
		return nil
	}
	if len(picked) == 1 {
		if err := one(picked[0], base); err != nil {
			return nil, err
		}
		return json.RawMessage(sb.String()), nil
	}
	sb.WriteString(`{"anyOf":[`)
	for i, t := range picked {
		if i > 0 {
			sb.WriteByte(',')
		}
		if err := one(t, base+"/anyOf/"+strconv.Itoa(i)); err != nil {
			return nil, err
		}
	}
	sb.WriteString(`]}`)
	return json.RawMessage(sb.String()), nil
}

// pickTools is the function tools a call may use: all of them (name == "",
// tool_choice "required") or the named one.
func pickTools(tools []Tool, name string) ([]Tool, error) {
	var picked []Tool
	for _, t := range tools {
		if t.Type != "" && t.Type != "function" {
			continue
		}
		if t.Function.Name == "" {
			return nil, fmt.Errorf("%w: a function without a name", ErrToolChoice)
		}
		if name == "" || t.Function.Name == name {
			picked = append(picked, t)
		}
	}
	if len(picked) == 0 {
		if name != "" {
			return nil, fmt.Errorf("%w: tool_choice names %q, which is not in tools", ErrToolChoice, name)
		}
		return nil, fmt.Errorf("%w: tool_choice requires a call but no function tools are given", ErrToolChoice)
	}
	return picked, nil
}

// parameters is a function's parameters schema (an empty object schema when
// it declares none).
func parameters(t Tool) json.RawMessage {
	p := t.Function.Parameters
	if len(bytes.TrimSpace(p)) == 0 || string(bytes.TrimSpace(p)) == "null" {
		return json.RawMessage(`{"type":"object","properties":{}}`)
	}
	return p
}

// HermesSpec is the grammar that forces tool calls in the hermes format:
// for tool_choice "required" (name == "") one call or more (just one
// unless parallel), for a named tool_choice exactly one call of it. The
// output then parses with the hermes parser. The call objects use
// OpenAI's strict semantics when every tool in play is strict.
func HermesSpec(tools []Tool, name string, parallel bool) (grammar.Spec, error) {
	schema, err := CallSchema(tools, name)
	if err != nil {
		return grammar.Spec{}, err
	}
	strict := allStrict(tools, name)
	max := 1
	if parallel && name == "" {
		max = -1
	}
	return grammar.Spec{
		JSONSchema: string(schema),
		Strict:     strict,
		Frame:      &grammar.Frame{Begin: hermesOpen + "\n", End: "\n" + hermesClose, Sep: "\n", Min: 1, Max: max},
	}, nil
}

// rebaseRefs re-encodes a JSON document (keeping member order) with every
// "$ref": "#..." made relative to base, the document's new location.
func rebaseRefs(doc json.RawMessage, base string) (json.RawMessage, error) {
	if !json.Valid(doc) {
		return nil, errors.New("not valid JSON")
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var out bytes.Buffer
	// Per open container: is it an object, is the next string a key, and
	// was the last key "$ref".
	type frame struct{ obj, wantKey, ref bool }
	var stack []frame
	first := true
	sep := func() {
		if n := len(stack); n > 0 {
			f := &stack[n-1]
			if f.obj && !f.wantKey {
				out.WriteByte(':')
				return
			}
			if !first {
				out.WriteByte(',')
			}
		}
	}
	done := func() { // a value finished
		first = false
		if n := len(stack); n > 0 && stack[n-1].obj {
			stack[n-1].wantKey = true
			stack[n-1].ref = false
		}
	}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				sep()
				out.WriteByte(byte(v))
				stack = append(stack, frame{obj: v == '{', wantKey: v == '{'})
				first = true
			default:
				out.WriteByte(byte(v))
				stack = stack[:len(stack)-1]
				done()
			}
			continue
		case string:
			if n := len(stack); n > 0 && stack[n-1].obj && stack[n-1].wantKey {
				if !first {
					out.WriteByte(',')
				}
				b, _ := json.Marshal(v)
				out.Write(b)
				stack[n-1].wantKey = false
				stack[n-1].ref = v == "$ref"
				continue
			}
			sep()
			if n := len(stack); n > 0 && stack[n-1].ref && strings.HasPrefix(v, "#") {
				v = base + v[1:]
			}
			b, _ := json.Marshal(v)
			out.Write(b)
		default:
			sep()
			b, _ := json.Marshal(v)
			out.Write(b)
		}
		done()
	}
	return out.Bytes(), nil
}
