package server

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/llmserve/llmserve/openai"
)

// Request fields a request type does not declare. encoding/json drops
// them silently; here they are sorted into three kinds:
//   - fields of OpenAI's or vLLM's API that would change what the request
//     returns and that this server cannot honour: refused with a 400 naming
//     the field, unless the value asks for nothing (null, false, 0, "", an
//     empty list or object, or the field's default);
//   - fields that change nothing in the answer (metadata, routing hints):
//     accepted;
//   - anything else: accepted and logged at warn level, as vLLM logs the
//     fields it ignores, so a misspelt parameter is visible.

// unhonoured maps each refused field to what the server does instead.
var unhonoured = map[string]string{
	"functions":                  "use tools",
	"function_call":              "use tool_choice",
	"modalities":                 `only ["text"] is supported`,
	"audio":                      "this server returns text only",
	"prediction":                 "predicted outputs are not supported",
	"web_search_options":         "web search is not supported",
	"reasoning_effort":           "the served models take no reasoning effort; use chat_template_kwargs.enable_thinking where the template has it",
	"verbosity":                  "not supported",
	"use_beam_search":            "beam search is not supported",
	"length_penalty":             "beam search is not supported",
	"prompt_logprobs":            "prompt logprobs are not supported",
	"allowed_token_ids":          "use logit_bias or structured outputs",
	"bad_words":                  "use logit_bias",
	"include_stop_str_in_output": "stop strings are never included in the output",
	"truncate_prompt_tokens":     "prompts are never truncated; a prompt over max_model_len is refused",
	"documents":                  "documents are not passed to the chat template",
	"chat_template":              "the server's chat template (--chat-template, else the tokenizer's) is used; vLLM too refuses it unless started with --trust-request-chat-template",
	"mm_processor_kwargs":        "this server takes text only",
	"logits_processors":          "custom logits processors are not supported",
	"kv_transfer_params":         "KV transfer is not supported",
	"vllm_xargs":                 "not supported",
	"cache_salt":                 "the prefix cache is shared by all requests",
}

// defaults are refused fields whose default value is not a zero.
var defaults = map[string]string{"modalities": `["text"]`}

// harmless are fields that change nothing in the answer.
var harmless = map[string]bool{
	"store": true, "metadata": true, "service_tier": true, "safety_identifier": true,
	"prompt_cache_key": true, "request_id": true, "guided_decoding_backend": true,
}

// checkFields refuses the unhonoured fields of body, a request decoded into
// v, and logs the unknown ones.
func (s *Server) checkFields(r *http.Request, body []byte, v any) error {
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) != nil {
		return nil // the decoder accepted it; nothing to add
	}
	known := knownFields(reflect.TypeOf(v))
	var ignored []string
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range top {
			if !yield(k) {
				return
			}
		}
	}) {
		// encoding/json matches field names case-insensitively.
		if known[strings.ToLower(name)] || harmless[name] {
			continue
		}
		if why, ok := unhonoured[name]; ok {
			if asksNothing(top[name], defaults[name]) {
				continue
			}
			return openai.Invalid(name, "%s is not supported: %s", name, why)
		}
		ignored = append(ignored, name)
	}
	if len(ignored) > 0 {
		s.log.Warn("request fields ignored", "route", r.URL.Path, "fields", strings.Join(ignored, ","))
	}
	return nil
}

// asksNothing reports whether a field's value is a zero of its JSON kind or
// the field's default.
func asksNothing(raw json.RawMessage, def string) bool {
	v := bytes.TrimSpace(raw)
	if def != "" {
		var a, b any
		if json.Unmarshal(v, &a) == nil && json.Unmarshal([]byte(def), &b) == nil && reflect.DeepEqual(a, b) {
			return true
		}
	}
	switch string(v) {
	case "null", "false", "0", `""`:
		return true
	}
	var x any
	if json.Unmarshal(v, &x) != nil {
		return false
	}
	switch x := x.(type) {
	case []any:
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	case float64:
		return x == 0
	}
	return false
}

var knownCache sync.Map // reflect.Type -> map[string]bool

// knownFields is the set of JSON names, lowercased, a struct type (or a
// pointer to one) decodes, embedded structs included.
func knownFields(t reflect.Type) map[string]bool {
	if m, ok := knownCache.Load(t); ok {
		return m.(map[string]bool)
	}
	m := map[string]bool{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return
		}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			switch {
			case name == "-":
			case f.Anonymous && name == "":
				walk(f.Type)
			case name != "":
				m[strings.ToLower(name)] = true
			case f.IsExported():
				m[strings.ToLower(f.Name)] = true
			}
		}
	}
	walk(t)
	knownCache.Store(t, m)
	return m
}
