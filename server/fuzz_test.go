package server

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/openai"
	"github.com/llmserve/llmserve/server/servertest"
	"github.com/llmserve/llmserve/tokenizer/chattemplate"
)

// fuzzTokenizer renders a real chat template over the fake byte tokenizer,
// so template failures are part of what the fuzzer reaches.
type fuzzTokenizer struct {
	servertest.Tokenizer
	tpl *chattemplate.Template
}

func (ft fuzzTokenizer) ApplyChatTemplate(messages []map[string]any, addGen bool, extra map[string]any) (string, error) {
	msgs := make([]any, len(messages))
	for i, m := range messages {
		msgs[i] = m
	}
	vars := map[string]any{"messages": msgs, "add_generation_prompt": addGen}
	for k, v := range extra {
		vars[k] = v
	}
	return ft.tpl.Render(vars)
}

const fuzzTemplate = `{%- for m in messages -%}
{%- if (m.role == 'user') != (loop.index0 % 2 == 0) and m.role != 'system' -%}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}
{%- endif -%}
{%- if m.role == 'user' and m.content.startswith('/') -%}/{%- endif -%}
<{{ m.role }}>{{ m.content }}{% if tools %}{{ tools | tojson }}{% endif %}
{% endfor -%}
{%- if add_generation_prompt %}<assistant>{% endif -%}`

// FuzzDecodeRequest drives request bodies of /v1/completions,
// /v1/chat/completions and /generate through the path the handlers take
// (decodeJSON, the params conversion, tokenization or the chat template,
// checkPrompts), with and without a tokenizer. Every body must give either
// engine requests the engine itself accepts (engine.Limits.Check, what
// Local.Submit runs) within the server's limits, or an error that maps to
// a 4xx; never a panic. `go test` runs the seeds; `go test ./server -run '^$'
// -fuzz FuzzDecodeRequest` explores.
func FuzzDecodeRequest(f *testing.F) {
	const maxInt = "9223372036854775807"
	for _, seed := range []struct {
		ep   uint8
		body string
	}{
		{0, `{"prompt":"Hi","max_tokens":4}`},
		{0, `{"prompt":"Hi","max_tokens":` + maxInt + `}`},
		{0, `{"prompt":"Hi","max_tokens":9223372036854775806}`},
		{0, `{"prompt":"Hi","min_tokens":` + maxInt + `}`},
		{0, `{"prompt":[104,105],"stop_token_ids":[null]}`},
		{0, `{"prompt":[104,null]}`},
		{0, `{"prompt":[[104],[105,106]],"n":4,"logprobs":5}`},
		{0, `{"prompt":[[104],null]}`},
		{0, `{"prompt":["a","b","c"],"n":8,"best_of":8,"echo":false}`},
		{0, `{"prompt":"x","stop":["a","b"],"logit_bias":{"5":-100,"256":100},"seed":-1}`},
		{0, `{"prompt":"x","logit_bias":{"5":null}}`},
		{0, `{"prompt":"x","temperature":1e400}`},
		{0, `{"prompt":"x","repetition_penalty":3,"top_k":` + maxInt + `,"top_p":1e-300}`},
		{0, `{"prompt":"\u00e9\ud83d\ude00","add_special_tokens":false}`},
		{0, `{"prompt":[],"n":0}`},
		{0, `{"prompt":"a"} trailing`},
		{0, `{"prompt":"a","prompt":[1,2]}`},
		{0, `[1,2,3]`},
		{0, ``},
		{0, `{"prompt":[-0,0,1E2]}`},
		{1, `{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":` + maxInt + `}`},
		{1, `{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":3,"min_tokens":4}`},
		{1, `{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"assistant","content":"c"}]}`},
		{1, `{"messages":[{"role":"user","content":null}]}`},
		{1, `{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url"}]}]}`},
		{1, `{"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"tools":[{"type":"function"}],"logprobs":true,"top_logprobs":20}`},
		{1, `{"messages":[{"role":"user","content":"a"}],"continue_final_message":true,"add_generation_prompt":false,"n":8,"stream":true,"stream_options":{"include_usage":true}}`},
		{1, `{"messages":[null]}`},
		{1, `{"messages":{"role":"user"}}`},
		{2, `{"prompt":"Hi","max_tokens":` + maxInt + `,"stream":true}`},
		{2, `{"prompt":"Hi","n":2}`},
		{2, `{"prompt":[[1],[2]]}`},
		{2, `{"prompt":"Hi","stop":"` + strings.Repeat("s", 300) + `"}`},
		{3, `{"prompt":"Hi","stop":["x"]}`},                 // no tokenizer
		{3, `{"prompt":[1,2],"max_tokens":2,"stop":["x"]}`}, // no tokenizer
		{4, `{"messages":[{"role":"user","content":"hi"}]}`},
		{5, `{"prompt":[1,256],"max_tokens":1,"logprobs":0}`},
	} {
		f.Add(seed.ep, []byte(seed.body))
	}

	newServer := func(tok Tokenizer) *Server {
		s, err := New(Options{Engine: &servertest.Engine{}, Tokenizer: tok, ModelNames: []string{"m"},
			MaxModelLen: 128, VocabSize: servertest.VocabSize, MaxConcurrentRequests: 16, MaxNumSeqs: 8, MaxBodyBytes: 1 << 20})
		if err != nil {
			f.Fatal(err)
		}
		return s
	}
	tpl, err := chattemplate.Compile(fuzzTemplate)
	if err != nil {
		f.Fatal(err)
	}
	servers := []*Server{newServer(fuzzTokenizer{tpl: tpl}), newServer(nil)}

	f.Fuzz(func(t *testing.T, ep uint8, body []byte) {
		s := servers[int(ep/3)%2]
		path := []string{"/v1/completions", "/v1/chat/completions", "/generate"}[ep%3]
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		var g *genRequest
		var err error
		switch ep % 3 {
		case 0:
			_, g, _, err = s.parseCompletion(w, r)
		case 1:
			_, g, _, err = s.parseChat(w, r)
		default:
			_, g, err = s.parseGenerate(w, r)
		}
		if err != nil {
			ae := s.errorOf(err)
			if ae.status < 400 || ae.status >= 500 || ae.internal != nil || ae.msg == "" {
				t.Fatalf("%s %q: error %v maps to %d %q", path, body, err, ae.status, ae.msg)
			}
			return
		}
		lim := engine.Limits{Vocab: servertest.VocabSize, MaxModelLen: s.opts.MaxModelLen, MaxNumSeqs: s.opts.MaxNumSeqs,
			MaxLogprobs: s.opts.MaxLogprobs, Detokenize: s.tok != nil}
		if len(g.prompts) == 0 || g.seats() > s.opts.MaxConcurrentRequests {
			t.Fatalf("%s %q: %d prompts, %d seats", path, body, len(g.prompts), g.seats())
		}
		p := g.params
		if len(p.Stop) > openai.MaxStop || len(p.StopTokenIDs) > openai.MaxStopTokenIDs || len(p.LogitBias) > openai.MaxLogitBias {
			t.Fatalf("%s %q: lists over the limits: %d stop, %d stop ids, %d biases", path, body, len(p.Stop), len(p.StopTokenIDs), len(p.LogitBias))
		}
		for i, ids := range g.prompts {
			if len(ids)+p.MaxTokens > s.opts.MaxModelLen {
				t.Fatalf("%s %q: prompt %d of %d tokens with max_tokens %d", path, body, i, len(ids), p.MaxTokens)
			}
			if err := lim.Check(g.engineRequest(i)); err != nil {
				t.Fatalf("%s %q: the server accepted what the engine refuses: %v", path, body, err)
			}
		}
	})
}
