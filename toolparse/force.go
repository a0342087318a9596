package toolparse

import (
	"fmt"
	"strings"

	"github.com/llmserve/llmserve/grammar"
)

// ForceSpec is the grammar that forces tool calls in the syntax of format
// (a parser name), so that the parser of that name reads the output back:
// for tool_choice "required" (name == "") one call or more (just one unless
// parallel), for a named tool_choice exactly one call of it.
//
//   - hermes: <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>, see HermesSpec.
//   - llama3_json: {"name": ..., "parameters": {...}}, several separated by "; ".
//   - mistral: [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...] (the v0.3
//     form; the mistral parser reads both).
//   - mistral_args: [TOOL_CALLS]name[ARGS]{...} per call, the form of v11+
//     tokenizers (see ForceFormat); read by the mistral parser.
func ForceSpec(format string, tools []Tool, name string, parallel bool) (grammar.Spec, error) {
	max := 1
	if parallel && name == "" {
		max = -1
	}
	strict := allStrict(tools, name)
	switch format {
	case "hermes", "qwen3", "qwen2_5":
		return HermesSpec(tools, name, parallel)
	case "llama3_json", "llama3", "llama4_json":
		schema, err := callSchema(tools, name, "parameters", "#")
		if err != nil {
			return grammar.Spec{}, err
		}
		return grammar.Spec{JSONSchema: string(schema), Strict: strict,
			Frame: &grammar.Frame{Sep: "; ", Min: 1, Max: max}}, nil
	case "mistral":
		item, err := callSchema(tools, name, "arguments", "#/items")
		if err != nil {
			return grammar.Spec{}, err
		}
		maxItems := ""
		if max > 0 {
			maxItems = fmt.Sprintf(`,"maxItems":%d`, max)
		}
		schema := fmt.Sprintf(`{"type":"array","items":%s,"minItems":1%s}`, item, maxItems)
		return grammar.Spec{JSONSchema: schema, Strict: strict,
			Frame: &grammar.Frame{Begin: mistralCalls, Min: 1, Max: 1}}, nil
	case mistralArgsFormat:
		picked, err := pickTools(tools, name)
		if err != nil {
			return grammar.Spec{}, err
		}
		alts := make([]grammar.Spec, len(picked))
		for i, t := range picked {
			alts[i] = grammar.Spec{JSONSchema: string(parameters(t)), Strict: t.Function.Strict != nil && *t.Function.Strict,
				Frame: &grammar.Frame{Begin: mistralCalls + t.Function.Name + mistralArgs, Min: 1, Max: 1}}
		}
		return grammar.Spec{Alternatives: alts, Frame: &grammar.Frame{Min: 1, Max: max}}, nil
	}
	return grammar.Spec{}, fmt.Errorf("toolparse: no forced-call grammar for format %q", format)
}

// mistralArgsFormat is ForceSpec's name for Mistral's [ARGS] call syntax.
const mistralArgsFormat = "mistral_args"

// ForceFormat is the format ForceSpec forces calls in for the parser
// named parser and the model's chat template: the mistral parser reads
// both Mistral syntaxes, and a template that writes [ARGS] (v11+
// tokenizers: Mistral Small 3.2, Magistral, Devstral) teaches the newer
// one, so calls are forced in it.
func ForceFormat(parser, template string) string {
	if parser == "mistral" && strings.Contains(template, mistralArgs) {
		return mistralArgsFormat
	}
	return parser
}

// allStrict reports whether every function tool in play (all, or the named
// one) asks for OpenAI's strict schema semantics.
func allStrict(tools []Tool, name string) bool {
	strict := true
	for _, t := range tools {
		if name == "" || t.Function.Name == name {
			strict = strict && t.Function.Strict != nil && *t.Function.Strict
		}
	}
	return strict
}

// Detect names the tool-call format a chat template teaches the model, as
// the parser that reads it ("" when the template shows none): a template
// that writes <tool_call> blocks is hermes (Qwen2.5, Qwen3, Hermes),
// [TOOL_CALLS] is mistral, and Llama 3.1's <|python_tag|> or its
// {"name": ..., "parameters": ...} instruction is llama3_json.
func Detect(template string) string {
	switch {
	case strings.Contains(template, hermesOpen):
		return "hermes"
	case strings.Contains(template, mistralCalls):
		return "mistral"
	case strings.Contains(template, pythonTag),
		strings.Contains(template, "<|eom_id|>"),
		strings.Contains(template, `"parameters"`) && strings.Contains(template, "<|start_header_id|>"):
		return "llama3_json"
	}
	return ""
}
