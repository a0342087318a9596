package openai

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/llmserve/llmserve/grammar"
)

// Structured are the structured-output fields both endpoints take: OpenAI's
// response_format, vLLM's structured_outputs, and vLLM's older guided_*
// fields. At most one of them may constrain a request.
type Structured struct {
	ResponseFormat    *ResponseFormat    `json:"response_format"`
	StructuredOutputs *StructuredOutputs `json:"structured_outputs"`

	// vLLM's guided decoding fields (before structured_outputs).
	GuidedJSON              json.RawMessage `json:"guided_json"`
	GuidedRegex             *string         `json:"guided_regex"`
	GuidedChoice            []string        `json:"guided_choice"`
	GuidedGrammar           *string         `json:"guided_grammar"`
	GuidedWhitespacePattern *string         `json:"guided_whitespace_pattern"`
}

// ResponseFormat is OpenAI's response_format: {"type": "text"},
// {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}.
type ResponseFormat struct {
	Type       string            `json:"type"`
	JSONSchema *JSONSchemaFormat `json:"json_schema"`
}

// JSONSchemaFormat is response_format.json_schema.
type JSONSchemaFormat struct {
	Name        string          `json:"name"`
	Description string          `json:"description"`
	Schema      json.RawMessage `json:"schema"`
	Strict      *bool           `json:"strict"`
}

// StructuredOutputs is vLLM's structured_outputs: exactly one of JSON
// (a schema, as an object or a string), Regex, Choice, Grammar (GBNF or
// Lark) and JSONObject.
type StructuredOutputs struct {
	JSON       json.RawMessage `json:"json"`
	Regex      *string         `json:"regex"`
	Choice     []string        `json:"choice"`
	Grammar    *string         `json:"grammar"`
	JSONObject *bool           `json:"json_object"`

	DisableAnyWhitespace        bool `json:"disable_any_whitespace"`
	DisableAdditionalProperties bool `json:"disable_additional_properties"`
	// DisableFallback: there is one backend and never a fallback, so it
	// holds whatever its value.
	DisableFallback bool `json:"disable_fallback"`

	// Not supported: a 400 when set.
	WhitespacePattern *string         `json:"whitespace_pattern"`
	StructuralTag     json.RawMessage `json:"structural_tag"`
}

// Constraint is a request's structured-output constraint: what to force
// and the field that asked for it (named in errors, for instance when the
// grammar does not compile).
type Constraint struct {
	Spec  grammar.Spec
	Param string
}

// isNull reports whether a raw JSON value is absent or null.
func isNull(b json.RawMessage) bool {
	b = bytes.TrimSpace(b)
	return len(b) == 0 || string(b) == "null"
}

// Constraint validates the structured-output fields and returns the one
// constraint they set, or nil. Grammar compilation (and its errors) is
// the caller's: it needs the tokenizer's vocabulary.
func (s *Structured) Constraint() (*Constraint, error) {
	var found []*Constraint
	add := func(param string, spec grammar.Spec) {
		found = append(found, &Constraint{Spec: spec, Param: param})
	}
	if rf := s.ResponseFormat; rf != nil {
		switch rf.Type {
		case "text":
		case "json_object":
			add("response_format", grammar.Spec{JSONObject: true})
		case "json_schema":
			js := rf.JSONSchema
			if js == nil {
				return nil, Invalid("response_format", "response_format.json_schema is required when response_format.type is json_schema")
			}
			if isNull(js.Schema) {
				return nil, Invalid("response_format", "response_format.json_schema.schema is required")
			}
			add("response_format", grammar.Spec{JSONSchema: string(js.Schema), Strict: js.Strict != nil && *js.Strict})
		case "":
			return nil, Invalid("response_format", "response_format.type is required: text, json_object or json_schema")
		default:
			return nil, Invalid("response_format", "response_format.type %q is not supported: use text, json_object or json_schema", rf.Type)
		}
	}
	if so := s.StructuredOutputs; so != nil {
		const p = "structured_outputs"
		if so.WhitespacePattern != nil {
			return nil, Invalid(p, "structured_outputs.whitespace_pattern is not supported (disable_any_whitespace is)")
		}
		if !isNull(so.StructuralTag) {
			return nil, Invalid(p, "structured_outputs.structural_tag is not supported")
		}
		n := len(found)
		if !isNull(so.JSON) {
			schema, err := schemaText(so.JSON)
			if err != nil {
				return nil, Invalid(p, "structured_outputs.json: %v", err)
			}
			add(p, grammar.Spec{JSONSchema: schema, Strict: so.DisableAdditionalProperties, CompactJSON: so.DisableAnyWhitespace})
		}
		if so.Regex != nil {
			add(p, grammar.Spec{Regex: *so.Regex})
		}
		if so.Choice != nil {
			if len(so.Choice) == 0 {
				return nil, Invalid(p, "structured_outputs.choice must not be empty")
			}
			add(p, grammar.Spec{Choice: so.Choice})
		}
		if so.Grammar != nil {
			add(p, grammarSpec(*so.Grammar))
		}
		if so.JSONObject != nil && *so.JSONObject {
			add(p, grammar.Spec{JSONObject: true, CompactJSON: so.DisableAnyWhitespace})
		}
		switch len(found) - n {
		case 0:
			return nil, Invalid(p, "structured_outputs must set one of json, regex, choice, grammar and json_object")
		case 1:
		default:
			return nil, Invalid(p, "structured_outputs must set only one of json, regex, choice, grammar and json_object")
		}
	}
	if s.GuidedWhitespacePattern != nil {
		return nil, Invalid("guided_whitespace_pattern", "guided_whitespace_pattern is not supported")
	}
	if !isNull(s.GuidedJSON) {
		schema, err := schemaText(s.GuidedJSON)
		if err != nil {
			return nil, Invalid("guided_json", "guided_json: %v", err)
		}
		add("guided_json", grammar.Spec{JSONSchema: schema})
	}
	if s.GuidedRegex != nil {
		add("guided_regex", grammar.Spec{Regex: *s.GuidedRegex})
	}
	if s.GuidedChoice != nil {
		if len(s.GuidedChoice) == 0 {
			return nil, Invalid("guided_choice", "guided_choice must not be empty")
		}
		add("guided_choice", grammar.Spec{Choice: s.GuidedChoice})
	}
	if s.GuidedGrammar != nil {
		add("guided_grammar", grammarSpec(*s.GuidedGrammar))
	}
	switch len(found) {
	case 0:
		return nil, nil
	case 1:
		return found[0], nil
	}
	return nil, Invalid(found[1].Param, "only one structured output constraint may be given, got %s and %s", found[0].Param, found[1].Param)
}

// schemaText is a JSON Schema given as an object or as a string holding one.
func schemaText(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if raw[0] != '"' {
		return string(raw), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", err
	}
	if !json.Valid([]byte(s)) {
		return "", errString("the schema string is not valid JSON")
	}
	return s, nil
}

type errString string

func (e errString) Error() string { return string(e) }

// grammarSpec reads a grammar as GBNF when it has a "::=" rule, else as
// Lark (as vLLM tells them apart).
func grammarSpec(src string) grammar.Spec {
	if strings.Contains(src, "::=") {
		return grammar.Spec{GBNF: src}
	}
	return grammar.Spec{Lark: src}
}
