package server_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/server"
)

// TestUndeclaredFields: a field of OpenAI's or vLLM's API that the server
// cannot honour is a 400 naming it unless its value asks for nothing;
// metadata fields pass; any other undeclared field passes and is logged,
// as vLLM logs the fields it ignores. Declared fields match
// case-insensitively, as encoding/json decodes them.
func TestUndeclaredFields(t *testing.T) {
	var logs lockedBuf
	e, se := newStrictEnv(t, func(o *server.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	refused := []struct{ fields, param, only string }{
		{`"use_beam_search":true`, "use_beam_search", ""},
		{`"prompt_logprobs":1`, "prompt_logprobs", ""},
		{`"include_stop_str_in_output":true`, "include_stop_str_in_output", ""},
		{`"allowed_token_ids":[1,2]`, "allowed_token_ids", ""},
		{`"truncate_prompt_tokens":10`, "truncate_prompt_tokens", ""},
		{`"cache_salt":"tenant-a"`, "cache_salt", ""},
		{`"functions":[{"name":"f"}]`, "functions", "chat"},
		{`"modalities":["text","audio"]`, "modalities", "chat"},
		{`"chat_template":"{{ messages }}"`, "chat_template", "chat"},
		{`"reasoning_effort":"high"`, "reasoning_effort", "chat"},
	}
	for _, c := range refused {
		for _, ep := range endpoints {
			if c.only != "" && c.only != ep.name {
				continue
			}
			code, b := e.post(ep.path, "{"+ep.head+","+c.fields+"}")
			wantError(t, ep.name+" "+c.fields, code, b, c.param, "not supported")
		}
	}
	if se.Submitted() != 0 {
		t.Fatalf("%d refused requests reached the engine", se.Submitted())
	}
	accepted := []string{
		`"use_beam_search":false,"prompt_logprobs":null,"allowed_token_ids":[],"functions":[],"modalities":["text"]`,
		`"store":true,"metadata":{"a":"b"},"service_tier":"auto","request_id":"r1"`,
		`"Temperature":0.5,"MAX_TOKENS":2`,
	}
	for _, fields := range accepted {
		for _, ep := range endpoints[:2] {
			if code, b := e.post(ep.path, "{"+ep.head+","+fields+"}"); code != 200 {
				t.Errorf("%s %s: %d %s", ep.name, fields, code, b)
			}
		}
	}
	if strings.Contains(logs.String(), "request fields ignored") {
		t.Fatalf("declared or harmless fields logged as ignored:\n%s", logs.String())
	}
	if p := se.Requests()[len(se.Requests())-1].Params; p.Temperature != 0.5 || p.MaxTokens != 2 {
		t.Fatalf("case-insensitive fields not honoured: %+v", p)
	}
	if code, b := e.post("/v1/chat/completions", `{"messages":[{"role":"user","content":"ab"}],"frobnicate":1,"max_tokens":1}`); code != 200 {
		t.Fatalf("unknown field: %d %s", code, b)
	}
	if l := logs.String(); !strings.Contains(l, "request fields ignored") || !strings.Contains(l, "frobnicate") {
		t.Fatalf("the unknown field is not logged:\n%s", l)
	}
}
