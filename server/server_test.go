package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/server"
	"github.com/llmserve/llmserve/server/servertest"
)

const model = "test-model"

type env struct {
	t   *testing.T
	srv *server.Server
	ts  *httptest.Server
	eng *servertest.Engine
}

// newEnv starts a loopback server over a fake engine; mod adjusts options.
func newEnv(t *testing.T, eng *servertest.Engine, mod func(*server.Options)) *env {
	t.Helper()
	if eng == nil {
		eng = &servertest.Engine{}
	}
	opts := server.Options{
		Engine:      eng,
		Tokenizer:   servertest.Tokenizer{},
		ModelNames:  []string{model, "alias"},
		ModelRoot:   "/models/test",
		MaxModelLen: 128,
		VocabSize:   servertest.VocabSize,
	}
	if mod != nil {
		mod(&opts)
	}
	srv, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return &env{t: t, srv: srv, ts: ts, eng: eng}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// do sends a request and returns status, body and headers.
func (e *env) do(method, path, body string, hdr ...string) (int, []byte, http.Header) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(ctxT(e.t), method, e.ts.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, b, resp.Header
}

func (e *env) post(path, body string, hdr ...string) (int, []byte) {
	code, b, _ := e.do(http.MethodPost, path, body, hdr...)
	return code, b
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

// sseEvents splits an SSE body into its data payloads, checking the framing
// and that it ends with [DONE].
func sseEvents(t *testing.T, body []byte) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("non-data SSE line %q", line)
		}
		out = append(out, data)
	}
	if len(out) == 0 || out[len(out)-1] != "[DONE]" {
		t.Fatalf("stream does not end with [DONE]: %q", body)
	}
	return out[:len(out)-1]
}

type apiErr struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    any     `json:"code"`
	} `json:"error"`
}

func TestGenerate(t *testing.T) {
	e := newEnv(t, nil, nil)
	code, b := e.post("/generate", `{"prompt":"abc","max_tokens":5,"temperature":0}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	r := decode[server.GenerateResponse](t, b)
	if r.Text != "abcab" || r.FinishReason != "length" || r.PromptTokens != 3 || r.CompletionTokens != 5 {
		t.Fatalf("got %+v", r)
	}
	if r.TTFTms < 0 || r.TotalMs < r.TTFTms {
		t.Fatalf("bad timings %+v", r)
	}
	// Token-id prompt, stop token.
	code, b = e.post("/generate", `{"prompt":[120,121,122],"max_tokens":50,"stop_token_ids":[122]}`)
	r = decode[server.GenerateResponse](t, b)
	if code != 200 || r.Text != "xyz" || r.FinishReason != "stop" {
		t.Fatalf("status %d, got %+v", code, r)
	}
}

func TestGenerateStream(t *testing.T) {
	e := newEnv(t, nil, nil)
	code, b, h := e.do("POST", "/generate", `{"prompt":"abc","max_tokens":7,"stream":true}`)
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d %q: %s", code, h.Get("Content-Type"), b)
	}
	evs := sseEvents(t, b)
	var text strings.Builder
	for i, ev := range evs {
		m := decode[map[string]any](t, []byte(ev))
		text.WriteString(m["text"].(string))
		_, final := m["finish_reason"]
		if final != (i == len(evs)-1) {
			t.Fatalf("event %d of %d: finish_reason present=%v: %s", i, len(evs), final, ev)
		}
		if final {
			if m["finish_reason"] != "length" || m["prompt_tokens"] != 3.0 || m["completion_tokens"] != 7.0 {
				t.Fatalf("final event %s", ev)
			}
			for _, k := range []string{"ttft_ms", "total_ms"} {
				if _, ok := m[k].(float64); !ok {
					t.Fatalf("final event lacks %s: %s", k, ev)
				}
			}
		}
	}
	if text.String() != "abcabca" {
		t.Fatalf("text %q", text.String())
	}
}

type completion struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index    int    `json:"index"`
		Text     string `json:"text"`
		Logprobs *struct {
			TextOffset    []int                `json:"text_offset"`
			TokenLogprobs []float64            `json:"token_logprobs"`
			Tokens        []string             `json:"tokens"`
			TopLogprobs   []map[string]float64 `json:"top_logprobs"`
		} `json:"logprobs"`
		Message *struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		Delta *struct {
			Role    *string `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		ChatLogprobs json.RawMessage `json:"-"`
		FinishReason *string         `json:"finish_reason"`
		StopReason   any             `json:"stop_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
}

func TestCompletions(t *testing.T) {
	e := newEnv(t, nil, nil)
	code, b := e.post("/v1/completions", `{"model":"test-model","prompt":["ab","xyz"],"max_tokens":4,"n":2,"logprobs":2}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	r := decode[completion](t, b)
	if r.Object != "text_completion" || r.Model != model || !strings.HasPrefix(r.ID, "cmpl-") || r.Created == 0 {
		t.Fatalf("envelope %+v", r)
	}
	want := []string{"abab", "baba", "xyzx", "yzxy"} // prompt*n + index
	if len(r.Choices) != 4 {
		t.Fatalf("%d choices: %s", len(r.Choices), b)
	}
	for i, c := range r.Choices {
		if c.Index != i || c.Text != want[i] || c.FinishReason == nil || *c.FinishReason != "length" {
			t.Fatalf("choice %d: %s", i, b)
		}
		lp := c.Logprobs
		if lp == nil || len(lp.Tokens) != 4 || strings.Join(lp.Tokens, "") != want[i] || len(lp.TopLogprobs) != 4 {
			t.Fatalf("choice %d logprobs: %s", i, b)
		}
		if lp.TextOffset[0] != 0 || lp.TextOffset[3] != 3 || lp.TokenLogprobs[0] != -0.25 {
			t.Fatalf("choice %d logprobs: %+v", i, lp)
		}
		if len(lp.TopLogprobs[0]) != 2 { // sampled token plus one distinct alternative
			t.Fatalf("top_logprobs %v", lp.TopLogprobs[0])
		}
	}
	if r.Usage == nil || r.Usage.PromptTokens != 5 || r.Usage.CompletionTokens != 16 || r.Usage.TotalTokens != 21 {
		t.Fatalf("usage %+v", r.Usage)
	}
	// The alias is served too; token-id prompts; return_tokens_as_token_ids.
	code, b = e.post("/v1/completions", `{"model":"alias","prompt":[97,98],"max_tokens":2,"logprobs":0,"return_tokens_as_token_ids":true}`)
	r = decode[completion](t, b)
	if code != 200 || r.Model != "alias" || r.Choices[0].Text != "ab" || strings.Join(r.Choices[0].Logprobs.Tokens, ",") != "token_id:97,token_id:98" {
		t.Fatalf("status %d: %s", code, b)
	}
}

func TestCompletionsStream(t *testing.T) {
	e := newEnv(t, nil, nil)
	code, b := e.post("/v1/completions", `{"prompt":"ab","max_tokens":5,"n":2,"stream":true,"stream_options":{"include_usage":true},"logprobs":1}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	evs := sseEvents(t, b)
	texts := map[int]string{}
	finished := map[int]string{}
	offsets := map[int][]int{}
	for _, ev := range evs[:len(evs)-1] {
		c := decode[completion](t, []byte(ev))
		if c.Object != "text_completion" || len(c.Choices) != 1 || c.Usage != nil {
			t.Fatalf("chunk %s", ev)
		}
		ch := c.Choices[0]
		if _, done := finished[ch.Index]; done {
			t.Fatalf("chunk after finish: %s", ev)
		}
		texts[ch.Index] += ch.Text
		offsets[ch.Index] = append(offsets[ch.Index], ch.Logprobs.TextOffset...)
		if ch.FinishReason != nil {
			finished[ch.Index] = *ch.FinishReason
		}
	}
	if texts[0] != "ababa" || texts[1] != "babab" || finished[0] != "length" || finished[1] != "length" {
		t.Fatalf("texts %v finished %v", texts, finished)
	}
	if fmt.Sprint(offsets[0]) != "[0 1 2 3 4]" {
		t.Fatalf("text offsets %v", offsets[0])
	}
	u := decode[completion](t, []byte(evs[len(evs)-1]))
	if len(u.Choices) != 0 || u.Usage == nil || u.Usage.PromptTokens != 2 || u.Usage.CompletionTokens != 10 {
		t.Fatalf("usage chunk %s", evs[len(evs)-1])
	}
}

func TestChat(t *testing.T) {
	e := newEnv(t, nil, nil)
	body := `{"model":"test-model","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":3,"logprobs":true,"top_logprobs":2}`
	code, b := e.post("/v1/chat/completions", body)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	var r struct {
		Object  string `json:"object"`
		Choices []struct {
			Message struct {
				Role, Content string
			} `json:"message"`
			Logprobs struct {
				Content []struct {
					Token       string  `json:"token"`
					Logprob     float64 `json:"logprob"`
					Bytes       []int   `json:"bytes"`
					TopLogprobs []struct {
						Token string `json:"token"`
					} `json:"top_logprobs"`
				} `json:"content"`
			} `json:"logprobs"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	// The fake template renders "<user>hi\n<assistant>"; generation cycles through it.
	if r.Object != "chat.completion" || r.Choices[0].Message.Role != "assistant" || r.Choices[0].Message.Content != "<us" {
		t.Fatalf("%s", b)
	}
	lc := r.Choices[0].Logprobs.Content
	if len(lc) != 3 || lc[0].Token != "<" || fmt.Sprint(lc[0].Bytes) != "[60]" || len(lc[0].TopLogprobs) != 2 {
		t.Fatalf("logprobs %s", b)
	}
	if r.Usage.PromptTokens != len("<user>hi\n<assistant>") || r.Usage.CompletionTokens != 3 {
		t.Fatalf("usage %s", b)
	}
	// Chat applies the template; the engine saw exactly its tokens.
	reqs := e.eng.Requests()
	if got := (servertest.Tokenizer{}).Decode(reqs[len(reqs)-1].PromptIDs, false); got != "<user>hi\n<assistant>" {
		t.Fatalf("prompt %q", got)
	}
}

func TestChatStream(t *testing.T) {
	e := newEnv(t, nil, nil)
	code, b := e.post("/v1/chat/completions", `{"messages":[{"role":"user","content":"yo"}],"max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	evs := sseEvents(t, b)
	first := decode[completion](t, []byte(evs[0]))
	if first.Object != "chat.completion.chunk" || first.Choices[0].Delta == nil || first.Choices[0].Delta.Role == nil || *first.Choices[0].Delta.Role != "assistant" {
		t.Fatalf("first chunk %s", evs[0])
	}
	var text strings.Builder
	var finish string
	for _, ev := range evs[1 : len(evs)-1] {
		c := decode[completion](t, []byte(ev))
		d := c.Choices[0].Delta
		if d.Role != nil {
			t.Fatalf("role repeated: %s", ev)
		}
		if d.Content != nil {
			text.WriteString(*d.Content)
		}
		if c.Choices[0].FinishReason != nil {
			finish = *c.Choices[0].FinishReason
		}
	}
	if text.String() != "<use" || finish != "length" {
		t.Fatalf("text %q finish %q", text.String(), finish)
	}
	u := decode[completion](t, []byte(evs[len(evs)-1]))
	if u.Usage == nil || u.Usage.CompletionTokens != 4 {
		t.Fatalf("usage chunk %s", evs[len(evs)-1])
	}
}

func TestParamsReachEngine(t *testing.T) {
	e := newEnv(t, nil, nil)
	body := `{"prompt":"abc","max_tokens":9,"temperature":0.5,"top_p":0.9,"top_k":7,"min_p":0.1,"seed":42,
		"ignore_eos":true,"min_tokens":2,"stop":["zz"],"stop_token_ids":[5],"repetition_penalty":1.2,
		"presence_penalty":0.5,"frequency_penalty":-0.5,"logit_bias":{"65":-100},"priority":-3,"skip_special_tokens":false}`
	if code, b := e.post("/v1/completions", body); code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	r := e.eng.Requests()[0]
	p := r.Params
	if p.MaxTokens != 9 || p.Temperature != 0.5 || p.TopP != 0.9 || p.TopK != 7 || p.MinP != 0.1 || p.Seed == nil || *p.Seed != 42 ||
		!p.IgnoreEOS || p.MinTokens != 2 || fmt.Sprint(p.Stop) != "[zz]" || fmt.Sprint(p.StopTokenIDs) != "[5]" ||
		p.RepetitionPenalty != 1.2 || p.PresencePenalty != 0.5 || p.FrequencyPenalty != -0.5 || p.LogitBias[65] != -100 ||
		r.Priority != -3 || p.SkipSpecialTokens || p.Logprobs != -1 || p.N != 1 {
		t.Fatalf("params %+v priority %d", p, r.Priority)
	}
	// Chat's default max_tokens is the context left.
	if code, b := e.post("/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`); code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	r = e.eng.Requests()[1]
	if want := 128 - len(r.PromptIDs); r.Params.MaxTokens != want {
		t.Fatalf("chat default max_tokens %d, want %d", r.Params.MaxTokens, want)
	}
}

func TestModelsHealthPing(t *testing.T) {
	e := newEnv(t, nil, nil)
	for _, path := range []string{"/v1/models", "/models"} {
		code, b, _ := e.do("GET", path, "")
		var l struct {
			Object string `json:"object"`
			Data   []struct {
				ID, Object, OwnedBy, Root string
				MaxModelLen               int `json:"max_model_len"`
			} `json:"data"`
		}
		if code != 200 || json.Unmarshal(b, &l) != nil || l.Object != "list" || len(l.Data) != 2 ||
			l.Data[0].ID != model || l.Data[1].ID != "alias" || l.Data[0].Object != "model" || l.Data[0].MaxModelLen != 128 || l.Data[0].Root != "/models/test" {
			t.Fatalf("%s: %d %s", path, code, b)
		}
	}
	for _, path := range []string{"/health", "/ping"} {
		code, b, _ := e.do("GET", path, "")
		h := decode[server.HealthResponse](t, b)
		if code != 200 || h.Status != "ok" || h.Model != model {
			t.Fatalf("%s: %d %s", path, code, b)
		}
	}
}

func TestHealthLoading(t *testing.T) {
	e := newEnv(t, nil, func(o *server.Options) { o.Engine = nil })
	code, b, _ := e.do("GET", "/health", "")
	if h := decode[server.HealthResponse](t, b); code != 503 || h.Status != "loading" {
		t.Fatalf("%d %s", code, b)
	}
	if code, b := e.post("/generate", `{"prompt":"a"}`); code != 503 {
		t.Fatalf("generate while loading: %d %s", code, b)
	}
	e.srv.SetEngine(e.eng)
	if code, b, _ := e.do("GET", "/health", ""); code != 200 {
		t.Fatalf("%d %s", code, b)
	}
}

func TestTokenize(t *testing.T) {
	e := newEnv(t, nil, nil)
	code, b := e.post("/tokenize", `{"model":"test-model","prompt":"hi!","return_token_strs":true}`)
	var r struct {
		Count       int      `json:"count"`
		MaxModelLen int      `json:"max_model_len"`
		Tokens      []int    `json:"tokens"`
		TokenStrs   []string `json:"token_strs"`
	}
	if code != 200 || json.Unmarshal(b, &r) != nil || r.Count != 3 || r.MaxModelLen != 128 ||
		fmt.Sprint(r.Tokens) != "[104 105 33]" || strings.Join(r.TokenStrs, "") != "hi!" {
		t.Fatalf("%d %s", code, b)
	}
	code, b = e.post("/tokenize", `{"messages":[{"role":"user","content":"x"}]}`)
	r.TokenStrs = nil
	if code != 200 || json.Unmarshal(b, &r) != nil || r.Count != len("<user>x\n<assistant>") || r.TokenStrs != nil {
		t.Fatalf("%d %s", code, b)
	}
	code, b = e.post("/detokenize", `{"tokens":[104,105]}`)
	if code != 200 || string(b) != `{"prompt":"hi"}`+"\n" {
		t.Fatalf("%d %s", code, b)
	}
}

func TestMethodAndRoute(t *testing.T) {
	e := newEnv(t, nil, nil)
	code, b, h := e.do("GET", "/v1/completions", "")
	if code != 405 || h.Get("Allow") != "POST" || decode[apiErr](t, b).Error.Type == "" {
		t.Fatalf("%d %s", code, b)
	}
	code, b, _ = e.do("GET", "/nope", "")
	if code != 404 || decode[apiErr](t, b).Error.Message == "" {
		t.Fatalf("%d %s", code, b)
	}
}

func TestValidation(t *testing.T) {
	long := strings.Repeat("a", 100)
	cases := []struct {
		name, path, body string
		status           int
		param, contains  string
	}{
		{"malformed", "/v1/completions", `{"prompt":"a",`, 400, "", "malformed JSON"},
		{"trailing", "/v1/completions", `{"prompt":"a"} x`, 400, "", "malformed"},
		{"empty body", "/v1/completions", ``, 400, "", "empty"},
		{"not object", "/v1/completions", `[1]`, 400, "", "JSON object"},
		{"wrong type", "/v1/completions", `{"prompt":"a","temperature":"hot"}`, 400, "temperature", "number"},
		{"wrong prompt type", "/v1/completions", `{"prompt":{"a":1}}`, 400, "prompt", ""},
		{"mixed prompt list", "/v1/completions", `{"prompt":["a",1]}`, 400, "prompt", ""},
		{"stop type", "/v1/completions", `{"prompt":"a","stop":3}`, 400, "stop", ""},
		{"temperature", "/v1/completions", `{"prompt":"a","temperature":-0.1}`, 400, "temperature", "non-negative"},
		{"top_p zero", "/v1/completions", `{"prompt":"a","top_p":0}`, 400, "top_p", "(0, 1]"},
		{"top_p big", "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"top_p":1.5}`, 400, "top_p", ""},
		{"n", "/v1/completions", `{"prompt":"a","n":0}`, 400, "n", ""},
		{"max_tokens", "/v1/completions", `{"prompt":"a","max_tokens":0}`, 400, "max_tokens", "at least 1"},
		{"max_completion_tokens", "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"max_completion_tokens":-1}`, 400, "max_completion_tokens", ""},
		{"top_k", "/v1/completions", `{"prompt":"a","top_k":-2}`, 400, "top_k", ""},
		{"min_p", "/v1/completions", `{"prompt":"a","min_p":2}`, 400, "min_p", ""},
		{"repetition_penalty", "/v1/completions", `{"prompt":"a","repetition_penalty":0}`, 400, "repetition_penalty", ""},
		{"presence_penalty", "/v1/completions", `{"prompt":"a","presence_penalty":3}`, 400, "presence_penalty", ""},
		{"min_tokens", "/v1/completions", `{"prompt":"a","min_tokens":10,"max_tokens":5}`, 400, "min_tokens", ""},
		{"logprobs", "/v1/completions", `{"prompt":"a","logprobs":21}`, 400, "logprobs", ""},
		{"top_logprobs alone", "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"top_logprobs":2}`, 400, "top_logprobs", "logprobs"},
		{"top_logprobs range", "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"logprobs":true,"top_logprobs":99}`, 400, "top_logprobs", ""},
		{"token id", "/v1/completions", `{"prompt":[97,300]}`, 400, "prompt", "300"},
		{"negative token id", "/generate", `{"prompt":[-1]}`, 400, "prompt", "-1"},
		{"stop_token_ids", "/v1/completions", `{"prompt":"a","stop_token_ids":[999]}`, 400, "stop_token_ids", "999"},
		{"logit_bias key", "/v1/completions", `{"prompt":"a","logit_bias":{"x":1}}`, 400, "logit_bias", ""},
		{"empty prompt", "/v1/completions", `{"prompt":""}`, 400, "prompt", "empty"},
		{"missing prompt", "/v1/completions", `{}`, 400, "prompt", ""},
		{"empty messages", "/v1/chat/completions", `{"messages":[]}`, 400, "messages", ""},
		{"message role", "/v1/chat/completions", `{"messages":[{"content":"a"}]}`, 400, "messages", "role"},
		{"image part", "/v1/chat/completions", `{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}`, 400, "messages", "image_url"},
		{"stream_options", "/v1/completions", `{"prompt":"a","stream_options":{"include_usage":true}}`, 400, "stream_options", ""},
		{"echo", "/v1/completions", `{"prompt":"a","echo":true}`, 400, "echo", ""},
		{"too long", "/v1/completions", `{"prompt":"` + long + `","max_tokens":50}`, 400, "max_tokens", "128 tokens"},
		{"too long prompt", "/generate", `{"prompt":"` + long + long + `"}`, 400, "prompt", "200 input tokens"},
		{"continue+addgen", "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"continue_final_message":true,"add_generation_prompt":true}`, 400, "continue_final_message", ""},
		{"generate n", "/generate", `{"prompt":"a","n":2}`, 400, "n", ""},
		{"unknown model", "/v1/completions", `{"model":"gpt-9","prompt":"a"}`, 404, "model", "gpt-9"},
		{"unknown model chat", "/v1/chat/completions", `{"model":"gpt-9","messages":[{"role":"user","content":"a"}]}`, 404, "model", ""},
		{"detokenize", "/detokenize", `{"tokens":[1000]}`, 400, "tokens", "1000"},
		{"tokenize nothing", "/tokenize", `{}`, 400, "prompt", ""},
	}
	e := newEnv(t, nil, nil)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, b := e.post(c.path, c.body)
			if code != c.status {
				t.Fatalf("status %d, want %d: %s", code, c.status, b)
			}
			ae := decode[apiErr](t, b)
			got := ""
			if ae.Error.Param != nil {
				got = *ae.Error.Param
			}
			if got != c.param || !strings.Contains(ae.Error.Message, c.contains) || ae.Error.Type == "" {
				t.Fatalf("param %q message %q, want param %q containing %q", got, ae.Error.Message, c.param, c.contains)
			}
		})
	}
	if e.eng.Submitted() != 0 {
		t.Fatalf("%d invalid requests reached the engine", e.eng.Submitted())
	}
	// The too-long message names both numbers.
	_, b := e.post("/v1/completions", `{"prompt":"`+long+`","max_tokens":50}`)
	if msg := decode[apiErr](t, b).Error.Message; !strings.Contains(msg, "128") || !strings.Contains(msg, "150") {
		t.Fatalf("message %q", msg)
	}
}

func TestBodyLimit(t *testing.T) {
	e := newEnv(t, nil, func(o *server.Options) { o.MaxBodyBytes = 1024 })
	code, b := e.post("/v1/completions", `{"prompt":"`+strings.Repeat("a", 2000)+`"}`)
	if code != 413 || decode[apiErr](t, b).Error.Code != "request_too_large" {
		t.Fatalf("%d %s", code, b)
	}
}

func TestNoTokenizer(t *testing.T) {
	e := newEnv(t, nil, func(o *server.Options) { o.Tokenizer = nil })
	if code, b := e.post("/v1/completions", `{"prompt":"abc"}`); code != 400 || *decode[apiErr](t, b).Error.Param != "prompt" {
		t.Fatalf("%d %s", code, b)
	}
	code, b := e.post("/v1/completions", `{"prompt":[97,98],"max_tokens":2,"logprobs":0}`)
	r := decode[completion](t, b)
	if code != 200 || r.Choices[0].Logprobs.Tokens[0] != "token_id:97" {
		t.Fatalf("%d %s", code, b)
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t, nil, func(o *server.Options) { o.APIKey = "sekret" })
	for _, path := range []string{"/v1/completions", "/v1/chat/completions", "/generate", "/tokenize", "/detokenize"} {
		for _, hdr := range [][]string{nil, {"Authorization", "Bearer nope"}, {"Authorization", "sekret"}, {"Authorization", "Bearer sekret2"}} {
			code, b := e.post(path, `{}`, hdr...)
			if code != 401 || decode[apiErr](t, b).Error.Type != "authentication_error" {
				t.Fatalf("%s %v: %d %s", path, hdr, code, b)
			}
		}
	}
	if code, _, _ := e.do("GET", "/v1/models", ""); code != 401 {
		t.Fatalf("/v1/models without key: %d", code)
	}
	if code, b := e.post("/generate", `{"prompt":"a","max_tokens":1}`, "Authorization", "Bearer sekret"); code != 200 {
		t.Fatalf("with key: %d %s", code, b)
	}
	for _, path := range []string{"/health", "/metrics", "/ping"} {
		if code, _, _ := e.do("GET", path, ""); code != 200 {
			t.Fatalf("%s should stay open: %d", path, code)
		}
	}
}

// panicky panics on prompts that start with "boom".
type panicky struct{ *servertest.Engine }

func (p panicky) Submit(ctx context.Context, r *engine.Request) (<-chan engine.Output, error) {
	if len(r.PromptIDs) >= 4 && string([]byte{byte(r.PromptIDs[0]), byte(r.PromptIDs[1]), byte(r.PromptIDs[2]), byte(r.PromptIDs[3])}) == "boom" {
		panic("boom")
	}
	return p.Engine.Submit(ctx, r)
}

func TestPanicIsolated(t *testing.T) {
	fe := &servertest.Engine{}
	e := newEnv(t, fe, func(o *server.Options) { o.Engine = panicky{fe}; o.MaxConcurrentRequests = 1 })
	code, b := e.post("/generate", `{"prompt":"boom"}`)
	if code != 500 || decode[apiErr](t, b).Error.Type != "server_error" {
		t.Fatalf("%d %s", code, b)
	}
	// The server still serves, and the panicked request's slot was released.
	if code, b := e.post("/generate", `{"prompt":"fine","max_tokens":2}`); code != 200 {
		t.Fatalf("after panic: %d %s", code, b)
	}
}

// logprobTokenNames collects every token name in a response's logprobs:
// chat's "token" fields, completions' "tokens" lists and the keys of their
// top_logprobs maps.
func logprobTokenNames(v any, out *[]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			switch list, _ := val.([]any); {
			case k == "token":
				if s, ok := val.(string); ok {
					*out = append(*out, s)
				}
			case k == "tokens":
				for _, t := range list {
					if s, ok := t.(string); ok {
						*out = append(*out, s)
					}
				}
			case k == "top_logprobs":
				for _, m := range list {
					if alts, ok := m.(map[string]any); ok {
						if _, isChat := alts["token"]; !isChat {
							for name := range alts {
								*out = append(*out, name)
							}
						}
					}
				}
			}
			logprobTokenNames(val, out)
		}
	case []any:
		for _, y := range x {
			logprobTokenNames(y, out)
		}
	}
}

// --return-tokens-as-token-ids names every logprobs token "token_id:<id>"
// in chat and completions, streamed or not, unless a request says false.
func TestReturnTokensAsTokenIDsDefault(t *testing.T) {
	e := newEnv(t, nil, func(o *server.Options) { o.ReturnTokensAsTokenIDs = true })
	chat := `"messages":[{"role":"user","content":"hi"}],"max_tokens":3,"logprobs":true,"top_logprobs":2`
	comp := `"prompt":"ab","max_tokens":3,"logprobs":2`
	for _, c := range []struct {
		path, body string
		asIDs      bool
	}{
		{"/v1/completions", `{` + comp + `}`, true},
		{"/v1/completions", `{` + comp + `,"stream":true}`, true},
		{"/v1/chat/completions", `{` + chat + `}`, true},
		{"/v1/chat/completions", `{` + chat + `,"stream":true}`, true},
		{"/v1/chat/completions", `{` + chat + `,"return_tokens_as_token_ids":false}`, false},
		{"/v1/completions", `{` + comp + `,"stream":true,"return_tokens_as_token_ids":false}`, false},
	} {
		code, b := e.post(c.path, c.body)
		if code != 200 {
			t.Fatalf("%s %s: %d %s", c.path, c.body, code, b)
		}
		docs := []string{string(b)}
		if strings.Contains(c.body, `"stream":true`) {
			docs = sseEvents(t, b)
		}
		var names []string
		for _, d := range docs {
			logprobTokenNames(decode[any](t, []byte(d)), &names)
		}
		if len(names) < 6 { // 3 tokens, each with alternatives
			t.Fatalf("%s %s: too few logprobs tokens %q in %s", c.path, c.body, names, b)
		}
		for _, n := range names {
			if strings.HasPrefix(n, "token_id:") != c.asIDs {
				t.Fatalf("%s %s: token %q (want ids: %v)", c.path, c.body, n, c.asIDs)
			}
		}
	}
}
