package server_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/openai"
	"github.com/llmserve/llmserve/server"
	"github.com/llmserve/llmserve/server/servertest"
	"github.com/llmserve/llmserve/tokenizer/chattemplate"
)

// strictEngine is the fake engine behind the real engine's own check
// (engine.Limits.Check, what Local.Submit runs): a request the API edge
// lets through that the engine would refuse shows up in refused.
type strictEngine struct {
	*servertest.Engine
	lim     engine.Limits
	refused atomic.Int64
}

func (s *strictEngine) Submit(ctx context.Context, r *engine.Request) (<-chan engine.Output, error) {
	if err := s.lim.Check(r); err != nil {
		s.refused.Add(1)
		return nil, err
	}
	return s.Engine.Submit(ctx, r)
}

const testMaxNumSeqs = 8

// newStrictEnv is newEnv over a strictEngine with --max-num-seqs 8.
func newStrictEnv(t *testing.T, mod func(*server.Options)) (*env, *strictEngine) {
	t.Helper()
	se := &strictEngine{Engine: &servertest.Engine{}, lim: engine.Limits{Vocab: servertest.VocabSize, MaxModelLen: 128,
		MaxNumSeqs: testMaxNumSeqs, MaxLogprobs: 20, Detokenize: true}}
	e := newEnv(t, se.Engine, func(o *server.Options) {
		o.Engine = se
		o.MaxNumSeqs = testMaxNumSeqs
		if mod != nil {
			mod(o)
		}
	})
	return e, se
}

// endpoint bodies around a fragment of fields.
var endpoints = []struct{ name, path, head string }{
	{"completions", "/v1/completions", `"prompt":"ab"`},
	{"chat", "/v1/chat/completions", `"messages":[{"role":"user","content":"ab"}]`},
	{"generate", "/generate", `"prompt":"ab"`},
}

// wantError checks a 400 naming param whose message contains every part
// and nothing of the engine's or the sampler's internal messages.
func wantError(t *testing.T, what string, code int, b []byte, param string, parts ...string) {
	t.Helper()
	ae := decode[apiErr](t, b)
	got := "<null>"
	if ae.Error.Param != nil {
		got = *ae.Error.Param
	}
	if code != 400 || got != param || ae.Error.Type != "invalid_request_error" {
		t.Errorf("%s: status %d param %q, want 400 %q: %s", what, code, got, param, b)
		return
	}
	for _, p := range parts {
		if !strings.Contains(ae.Error.Message, p) {
			t.Errorf("%s: message %q does not contain %q", what, ae.Error.Message, p)
		}
	}
	for _, internal := range []string{"engine:", "sample:", "openai.", "Go struct", "Sampling."} {
		if strings.Contains(ae.Error.Message, internal) {
			t.Errorf("%s: message %q leaks %q", what, ae.Error.Message, internal)
		}
	}
}

// TestValidationAtEdge: every sampling field out of its range is refused at
// the API edge of all three endpoints with a 400 naming the field the
// client sent, before the engine (which would refuse it too) sees it.
func TestValidationAtEdge(t *testing.T) {
	many := func(n int, item func(i int) string) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = item(i)
		}
		return strings.Join(parts, ",")
	}
	// Distinct keys: 1025 entries need ids beyond the fake vocabulary's 257,
	// so this also shows the count is checked before the ids.
	bias := "{" + many(openai.MaxLogitBias+1, func(i int) string { return fmt.Sprintf(`"%d":1`, i) }) + "}"
	cases := []struct {
		name, fields string
		param        string // "" = the endpoint-specific one in params
		only         string // "": every endpoint; else one of endpoints' names
		contains     []string
	}{
		{"temperature negative", `"temperature":-0.5`, "temperature", "", nil},
		{"temperature huge", `"temperature":101`, "temperature", "", []string{"100"}},
		{"temperature type", `"temperature":"hot"`, "temperature", "", []string{"number"}},
		{"top_p zero", `"top_p":0`, "top_p", "", []string{"(0, 1]"}},
		{"top_p big", `"top_p":1.01`, "top_p", "", nil},
		{"top_k", `"top_k":-2`, "top_k", "", nil},
		{"top_k fraction", `"top_k":1.5`, "top_k", "", []string{"integer"}},
		{"min_p", `"min_p":1.5`, "min_p", "", nil},
		{"presence_penalty", `"presence_penalty":2.5`, "presence_penalty", "", []string{"[-2, 2]"}},
		{"frequency_penalty", `"frequency_penalty":-2.01`, "frequency_penalty", "", nil},
		{"repetition_penalty zero", `"repetition_penalty":0`, "repetition_penalty", "", nil},
		{"repetition_penalty negative", `"repetition_penalty":-1`, "repetition_penalty", "", nil},
		{"repetition_penalty huge", `"repetition_penalty":101`, "repetition_penalty", "", []string{"[0.01, 100]"}},
		{"repetition_penalty tiny", `"repetition_penalty":0.001`, "repetition_penalty", "", nil},
		{"n zero", `"n":0`, "n", "", nil},
		{"n above max-num-seqs", `"n":9`, "n", "completions", []string{"8"}},
		{"n above max-num-seqs chat", `"n":9`, "n", "chat", []string{"8"}},
		{"n above MaxN", `"n":1000`, "n", "", nil},
		{"seed type", `"seed":"x"`, "seed", "", []string{"integer"}},
		{"seed fraction", `"seed":1.5`, "seed", "", nil},
		{"seed overflow", `"seed":9223372036854775808`, "seed", "", nil},
		{"stop empty", `"stop":""`, "stop", "", []string{"empty"}},
		{"stop empty in list", `"stop":["a",""]`, "stop", "", nil},
		{"stop null in list", `"stop":["a",null]`, "stop", "", nil},
		{"stop type", `"stop":3`, "stop", "", nil},
		{"stop count", `"stop":[` + many(openai.MaxStop+1, func(i int) string { return strconv.Quote("s" + strconv.Itoa(i)) }) + `]`, "stop", "", []string{"64"}},
		{"stop length", `"stop":"` + strings.Repeat("x", openai.MaxStopBytes+1) + `"`, "stop", "", []string{"256"}},
		{"stop_token_ids negative", `"stop_token_ids":[-1]`, "stop_token_ids", "", []string{"-1"}},
		{"stop_token_ids out of vocabulary", `"stop_token_ids":[257]`, "stop_token_ids", "", []string{"257"}},
		{"stop_token_ids null", `"stop_token_ids":[5,null]`, "stop_token_ids", "", []string{"null"}},
		{"stop_token_ids count", `"stop_token_ids":[` + many(openai.MaxStopTokenIDs+1, func(i int) string { return "1" }) + `]`, "stop_token_ids", "", []string{"256"}},
		{"logit_bias key", `"logit_bias":{"x":1}`, "logit_bias", "", nil},
		{"logit_bias negative id", `"logit_bias":{"-1":1}`, "logit_bias", "", nil},
		{"logit_bias out of vocabulary", `"logit_bias":{"300":1}`, "logit_bias", "", []string{"300"}},
		{"logit_bias value", `"logit_bias":{"5":101}`, "logit_bias", "", []string{"[-100, 100]"}},
		{"logit_bias null", `"logit_bias":{"5":null}`, "logit_bias", "", []string{"null"}},
		{"logit_bias count", `"logit_bias":` + bias, "logit_bias", "", []string{"1024"}},
		{"max_tokens zero", `"max_tokens":0`, "max_tokens", "", nil},
		{"max_tokens too long", `"max_tokens":200`, "max_tokens", "", []string{"128"}},
		{"min_tokens negative", `"min_tokens":-1`, "min_tokens", "", nil},
		{"min_tokens above max_tokens", `"min_tokens":5,"max_tokens":4`, "min_tokens", "", []string{"max_tokens"}},
		{"min_tokens above max_completion_tokens", `"min_tokens":5,"max_completion_tokens":4`, "min_tokens", "chat", []string{"max_completion_tokens"}},
		{"max_completion_tokens zero", `"max_completion_tokens":0`, "max_completion_tokens", "chat", nil},
		{"max_completion_tokens too long", `"max_completion_tokens":200`, "max_completion_tokens", "chat", []string{"128"}},
		{"logprobs", `"logprobs":21`, "logprobs", "completions", []string{"20"}},
		{"logprobs negative", `"logprobs":-1`, "logprobs", "completions", nil},
		{"top_logprobs", `"logprobs":true,"top_logprobs":21`, "top_logprobs", "chat", []string{"20"}},
		{"top_logprobs without logprobs", `"top_logprobs":1`, "top_logprobs", "chat", nil},
		{"best_of", `"best_of":2`, "best_of", "completions", nil},
		{"stream_options", `"stream_options":{"include_usage":true}`, "stream_options", "", nil},
		{"priority type", `"priority":"high"`, "priority", "", nil},
		{"ignore_eos type", `"ignore_eos":1`, "ignore_eos", "", []string{"boolean"}},
		{"generate n", `"n":2`, "n", "generate", nil},
	}
	e, se := newStrictEnv(t, nil)
	for _, c := range cases {
		for _, ep := range endpoints {
			if c.only != "" && c.only != ep.name {
				continue
			}
			t.Run(c.name+"/"+ep.name, func(t *testing.T) {
				code, b := e.post(ep.path, "{"+ep.head+","+c.fields+"}")
				wantError(t, c.fields[:min(len(c.fields), 60)], code, b, c.param, c.contains...)
			})
		}
	}
	if n := se.refused.Load() + int64(se.Submitted()); n != 0 {
		t.Fatalf("%d invalid requests reached the engine (%d refused there)", n, se.refused.Load())
	}
	// Within every bound the engine takes the request as sent: vLLM's
	// repetition_penalty 3 included, and n at --max-num-seqs.
	for _, ep := range endpoints[:2] {
		body := "{" + ep.head + `,"max_tokens":2,"repetition_penalty":3,"temperature":100,"n":8,"top_k":9223372036854775807,"seed":-9223372036854775808,` +
			`"stop":[` + many(openai.MaxStop, func(i int) string { return strconv.Quote(strings.Repeat("z", openai.MaxStopBytes-i)) }) + `],` +
			`"stop_token_ids":[` + many(openai.MaxStopTokenIDs, func(i int) string { return "256" }) + `]}`
		if code, b := e.post(ep.path, body); code != 200 {
			t.Fatalf("%s at the limits: %d %s", ep.name, code, b)
		}
	}
	if se.refused.Load() != 0 || se.Submitted() != 2 {
		t.Fatalf("refused %d submitted %d", se.refused.Load(), se.Submitted())
	}
	if p := se.Requests()[0].Params; p.RepetitionPenalty != 3 || p.N != 8 || p.Temperature != 100 {
		t.Fatalf("params %+v", p)
	}
}

// TestEngineMessageNotShown: a request the engine refuses anyway (the API
// edge and the engine disagreeing) is still a 400, in the server's words.
func TestEngineMessageNotShown(t *testing.T) {
	e, se := newStrictEnv(t, nil)
	se.lim.MaxNumSeqs = 2 // the engine is stricter than the edge was told
	code, b := e.post("/v1/completions", `{"prompt":"ab","n":3,"max_tokens":1}`)
	ae := decode[apiErr](t, b)
	if code != 400 || strings.Contains(ae.Error.Message, "engine") || strings.Contains(ae.Error.Message, "max-num-seqs") || se.refused.Load() != 1 {
		t.Fatalf("%d %s", code, b)
	}
}

// TestOverflow: request numbers near 2^63 are refused, never wrapped
// around into something that passes a check.
func TestOverflow(t *testing.T) {
	const maxInt = "9223372036854775807"
	e, se := newStrictEnv(t, nil)
	for _, ep := range endpoints {
		for _, c := range []struct{ fields, param string }{
			{`"max_tokens":` + maxInt, "max_tokens"},
			{`"max_tokens":9223372036854775806`, "max_tokens"},
			{`"max_tokens":9223372036854775808`, "max_tokens"}, // not an int64 at all
			{`"max_tokens":-9223372036854775808`, "max_tokens"},
			{`"min_tokens":` + maxInt, "min_tokens"},
			{`"min_tokens":` + maxInt + `,"max_tokens":` + maxInt, "max_tokens"},
			{`"n":` + maxInt, "n"},
			{`"top_k":-9223372036854775808`, "top_k"},
			{`"stop_token_ids":[` + maxInt + `]`, "stop_token_ids"},
			{`"logit_bias":{"` + maxInt + `":1}`, "logit_bias"},
			{`"logit_bias":{"99999999999999999999":1}`, "logit_bias"},
		} {
			code, b := e.post(ep.path, "{"+ep.head+","+c.fields+"}")
			wantError(t, ep.name+" "+c.fields, code, b, c.param)
		}
	}
	for _, c := range []struct{ path, body, param string }{
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"max_completion_tokens":` + maxInt + `}`, "max_completion_tokens"},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"logprobs":true,"top_logprobs":` + maxInt + `}`, "top_logprobs"},
		{"/v1/completions", `{"prompt":"a","logprobs":` + maxInt + `}`, "logprobs"},
		{"/v1/completions", `{"prompt":"a","best_of":` + maxInt + `}`, "best_of"},
		{"/v1/completions", `{"prompt":[` + maxInt + `]}`, "prompt"},
		{"/v1/completions", `{"prompt":[[1],[-9223372036854775808]]}`, "prompt"},
		{"/v1/completions", `{"prompt":["a","b"],"n":` + maxInt + `}`, "n"},
	} {
		code, b := e.post(c.path, c.body)
		wantError(t, c.body, code, b, c.param)
	}
	// The message of the context check adds the numbers without wrapping.
	_, b := e.post("/v1/completions", `{"prompt":"ab","max_tokens":`+maxInt+`}`)
	if msg := decode[apiErr](t, b).Error.Message; !strings.Contains(msg, "9223372036854775809") {
		t.Errorf("message %q", msg)
	}
	if se.Submitted() != 0 || se.refused.Load() != 0 {
		t.Fatalf("submitted %d refused %d", se.Submitted(), se.refused.Load())
	}
	// One below the context left is still served.
	if code, b := e.post("/v1/completions", `{"prompt":"ab","max_tokens":126}`); code != 200 {
		t.Fatalf("%d %s", code, b)
	}
}

// TestTokenIDChecks: a null among token ids is not token 0, and ids outside
// the vocabulary are refused, each naming the field.
func TestTokenIDChecks(t *testing.T) {
	e, se := newStrictEnv(t, nil)
	for _, c := range []struct{ path, body, param, contains string }{
		{"/v1/completions", `{"prompt":[97,null]}`, "prompt", "null"},
		{"/v1/completions", `{"prompt":[null]}`, "prompt", "null"},
		{"/v1/completions", `{"prompt":[[97],null]}`, "prompt", "null"},
		{"/v1/completions", `{"prompt":[[97],[98,null]]}`, "prompt", "null"},
		{"/v1/completions", `{"prompt":[97,1.5]}`, "prompt", "1.5"},
		{"/v1/completions", `{"prompt":[97,-1]}`, "prompt", "-1"},
		{"/v1/completions", `{"prompt":[[97],[257]]}`, "prompt", "257"},
		{"/v1/completions", `{"prompt":[[]]}`, "prompt", "empty"},
		{"/generate", `{"prompt":[97,null]}`, "prompt", "null"},
		{"/generate", `{"prompt":[300]}`, "prompt", "300"},
		{"/v1/completions", `{"prompt":"a","stop_token_ids":[null]}`, "stop_token_ids", "null"},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"stop_token_ids":[1,null]}`, "stop_token_ids", "null"},
		{"/generate", `{"prompt":"a","stop_token_ids":[-5]}`, "stop_token_ids", "-5"},
		{"/v1/completions", `{"prompt":"a","logit_bias":{"257":1}}`, "logit_bias", "257"},
		{"/detokenize", `{"tokens":[104,null]}`, "tokens", "null"},
		{"/detokenize", `{"tokens":[-1]}`, "tokens", "-1"},
	} {
		code, b := e.post(c.path, c.body)
		wantError(t, c.body, code, b, c.param, c.contains)
	}
	if se.Submitted() != 0 || se.refused.Load() != 0 {
		t.Fatalf("submitted %d refused %d", se.Submitted(), se.refused.Load())
	}
	// Token 0 itself is a token like any other.
	if code, b := e.post("/v1/completions", `{"prompt":[0,97],"stop_token_ids":[0],"max_tokens":1}`); code != 200 {
		t.Fatalf("%d %s", code, b)
	}
}

// TestStopListBounded: the request of issue 17 (500,000 stop strings) is
// refused up front with a 400 naming the limit.
func TestStopListBounded(t *testing.T) {
	e, se := newStrictEnv(t, nil)
	var sb strings.Builder
	sb.WriteString(`{"prompt":"Hi","n":8,"max_tokens":4,"stop":[`)
	for i := range 500000 {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.Quote(strconv.Itoa(i)))
	}
	sb.WriteString("]}")
	code, b := e.post("/v1/completions", sb.String())
	wantError(t, "500,000 stop strings", code, b, "stop", "at most 64", "500000")
	if se.Submitted() != 0 {
		t.Fatal("reached the engine")
	}
}

// TestBearerScheme: the scheme is case-insensitive (RFC 7235), and /models
// is protected like /v1/models.
func TestBearerScheme(t *testing.T) {
	e := newEnv(t, nil, func(o *server.Options) { o.APIKey = "sekret" })
	for _, h := range []string{"Bearer sekret", "bearer sekret", "BEARER sekret", "bEaReR   sekret", "Bearer sekret "} {
		if code, b := e.post("/generate", `{"prompt":"a","max_tokens":1}`, "Authorization", h); code != 200 {
			t.Errorf("%q: %d %s", h, code, b)
		}
	}
	for _, h := range []string{"Bearersekret", "Basic sekret", "Bearer", "Bearer ", "sekret", "Bearer sekret x", "Token sekret"} {
		if code, _ := e.post("/generate", `{"prompt":"a","max_tokens":1}`, "Authorization", h); code != 401 {
			t.Errorf("%q: %d", h, code)
		}
	}
	for _, path := range []string{"/models", "/v1/models"} {
		code, b, h := e.do("GET", path, "")
		if code != 401 || h.Get("WWW-Authenticate") == "" || decode[apiErr](t, b).Error.Type != "authentication_error" {
			t.Errorf("%s without key: %d %s", path, code, b)
		}
		if code, b, _ := e.do("GET", path, "", "Authorization", "bearer sekret"); code != 200 {
			t.Errorf("%s with key: %d %s", path, code, b)
		}
	}
	// Without --api-key both stay open.
	open := newEnv(t, nil, nil)
	for _, path := range []string{"/models", "/v1/models"} {
		if code, _, _ := open.do("GET", path, ""); code != 200 {
			t.Errorf("%s open: %d", path, code)
		}
	}
}

// templateTokenizer renders a real chat template (the package the server
// runs with) over the fake byte tokenizer.
type templateTokenizer struct {
	servertest.Tokenizer
	tpl *chattemplate.Template
}

func (tt templateTokenizer) ApplyChatTemplate(messages []map[string]any, addGen bool, extra map[string]any) (string, error) {
	msgs := make([]any, len(messages))
	for i, m := range messages {
		msgs[i] = m
	}
	vars := map[string]any{"messages": msgs, "add_generation_prompt": addGen}
	for k, v := range extra {
		vars[k] = v
	}
	return tt.tpl.Render(vars)
}

// TestChatTemplateError: a template failure is a 400 naming the message
// where rendering breaks, with the template's own raise_exception text but
// none of the renderer's internals.
func TestChatTemplateError(t *testing.T) {
	// Roles must alternate (as Mistral's and Llama 2's templates demand),
	// and the content of a user message is inspected with a string method
	// (as Qwen3's is), which fails on a null content.
	tpl, err := chattemplate.Compile(`{%- for m in messages -%}
{%- if (m.role == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}
{%- endif -%}
{%- if m.role == 'user' and m.content.startswith('/') -%}/cmd{%- endif -%}
<{{ m.role }}>{{ m.content }}
{% endfor -%}
{%- if add_generation_prompt %}<assistant>{% endif -%}`)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, nil, func(o *server.Options) { o.Tokenizer = templateTokenizer{tpl: tpl} })
	u := func(c string) string { return `{"role":"user","content":"` + c + `"}` }
	a := `{"role":"assistant","content":"ok"}`
	for _, c := range []struct {
		msgs, at string
		raised   bool
	}{
		{u("a") + "," + a + "," + a, "messages[2]", true},
		{a, "messages[0]", true},
		{u("a") + "," + a + "," + u("b") + "," + u("c"), "messages[3]", true},
		{u("a") + "," + a + `,{"role":"user","content":null}`, "messages[2]", false},
		{`{"role":"user","content":null}`, "messages[0]", false},
	} {
		for _, path := range []string{"/v1/chat/completions", "/tokenize"} {
			code, b := e.post(path, `{"messages":[`+c.msgs+`],"max_tokens":1}`)
			want := []string{c.at + ":"}
			if c.raised {
				want = append(want, "Conversation roles must alternate")
			}
			wantError(t, path+" "+c.msgs, code, b, "messages", want...)
			msg := decode[apiErr](t, b).Error.Message
			for _, internal := range []string{"render failed", "line ", "startswith", "call(", "Unable", "chattemplate", "{{", "{%"} {
				if strings.Contains(msg, internal) {
					t.Errorf("%s: message %q shows template internals (%q)", c.msgs, msg, internal)
				}
			}
		}
	}
	if code, b := e.post("/v1/chat/completions", `{"messages":[`+u("a")+","+a+","+u("b")+`],"max_tokens":1}`); code != 200 {
		t.Fatalf("a good conversation: %d %s", code, b)
	}
	// A template that does not compile is the model's problem: no message
	// is blamed and its source is not quoted.
	_, cerr := chattemplate.Compile("{% for m in %}")
	if cerr == nil {
		t.Fatal("compiled")
	}
	bad := newEnv(t, nil, func(o *server.Options) {
		o.Tokenizer = brokenTemplate{err: fmt.Errorf("tokenizer: chat_template: %w", cerr)}
	})
	code, b := bad.post("/v1/chat/completions", `{"messages":[`+u("a")+`]}`)
	wantError(t, "broken template", code, b, "messages", "chat template cannot be used")
	if msg := decode[apiErr](t, b).Error.Message; strings.Contains(msg, "{%") || strings.Contains(msg, "messages[") {
		t.Errorf("message %q", msg)
	}
}

// brokenTemplate is a tokenizer whose chat template failed to compile.
type brokenTemplate struct {
	servertest.Tokenizer
	err error
}

func (b brokenTemplate) ApplyChatTemplate([]map[string]any, bool, map[string]any) (string, error) {
	return "", b.err
}
