package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmserve/llmserve/internal/shareddata"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// serveFails runs serve with args and returns its start-up error.
func serveFails(t *testing.T, args ...string) error {
	t.Helper()
	cfg, err := parseFlags(append(args, "--host", "127.0.0.1", "--port", "0", "--device", "cpu"), noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = serve(ctx, cfg, slog.New(slog.DiscardHandler), nil)
	if err == nil {
		t.Fatalf("%q started", args)
	}
	return err
}

func TestStartupRefusesATokenizerLargerThanTheModel(t *testing.T) {
	td := shareddata.Dir(t)
	err := serveFails(t, "--model", filepath.Join(td, "models", "qwen2-tiny"), "--tokenizer", filepath.Join(td, "tokenizers", "qwen3"))
	for _, want := range []string{"151669 tokens", "512 embedding rows", "--tokenizer"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v lacks %q", err, want)
		}
	}
}

func TestStartupNamesTheBuiltinNames(t *testing.T) {
	t.Setenv("HF_HUB_OFFLINE", "1")
	t.Setenv("HF_HUB_CACHE", t.TempDir())
	err := serveFails(t, "serve", "Foo/Bar", "--load-format", "dummy", "--skip-tokenizer-init")
	for _, want := range []string{"not a built-in name; built-in names are", "Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.2-1B"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v lacks %q", err, want)
		}
	}
}

func (l *live) do(t *testing.T, method, path, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, l.url+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// logLines returns the log lines that contain every one of subs.
func (l *live) logLines(subs ...string) []string {
	var out []string
	for _, line := range strings.Split(l.logs.String(), "\n") {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok && line != "" {
			out = append(out, line)
		}
	}
	return out
}

// waitLog waits for a log line (the request log is written after the
// response has been sent).
func (l *live) waitLog(t *testing.T, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if lines := l.logLines(subs...); len(lines) > 0 {
			return lines[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q in\n%s", subs, l.logs)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestLiveRequestLog(t *testing.T) {
	l := startLive(t)
	// One line per request, with the client's X-Request-Id (echoed).
	resp, b := l.do(t, "POST", "/v1/completions", `{"model":"tiny","prompt":[1,2,3],"max_tokens":3,"ignore_eos":true}`, "X-Request-Id", "client-id-1")
	if resp.StatusCode != 200 || resp.Header.Get("X-Request-Id") != "client-id-1" {
		t.Fatalf("%d %v %s", resp.StatusCode, resp.Header, b)
	}
	line := l.waitLog(t, "request_id=client-id-1")
	for _, want := range []string{"level=INFO", "route=/v1/completions", "status=200", "model=tiny", "prompt_tokens=3",
		"completion_tokens=3", "ttft_ms=", "total_ms=", "finish_reason=length", "client_disconnected=false"} {
		if !strings.Contains(line, want) {
			t.Errorf("%s lacks %s", line, want)
		}
	}
	// Without one, the response's id is echoed and logged.
	resp, _ = l.do(t, "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`)
	id := resp.Header.Get("X-Request-Id")
	if !strings.HasPrefix(id, "chatcmpl-") {
		t.Fatalf("X-Request-Id %q", id)
	}
	l.waitLog(t, "request_id="+id, "route=/v1/chat/completions", "status=200")
	// Errors are logged with their message; the 404 names the served model.
	resp, b = l.do(t, "POST", "/v1/completions", `{"model":"Qwen/Qwen2.5-0.5B","prompt":"x"}`, "X-Request-Id", "bad-model")
	if resp.StatusCode != 404 || !strings.Contains(string(b), "`tiny`") {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	line = l.waitLog(t, "request_id=bad-model")
	if !strings.Contains(line, "level=WARN") || !strings.Contains(line, "status=404") || !strings.Contains(line, "does not exist") {
		t.Fatal(line)
	}
	l.do(t, "POST", "/v1/completions", `{"prompt":[1],"max_tokens":0}`, "X-Request-Id", "bad-param")
	if line := l.waitLog(t, "request_id=bad-param"); !strings.Contains(line, "status=400") || !strings.Contains(line, "max_tokens") {
		t.Fatal(line)
	}
	// A client that hangs up mid-stream is logged as such.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", l.url+"/v1/completions",
		strings.NewReader(`{"prompt":[1,2],"max_tokens":1500,"ignore_eos":true,"stream":true}`))
	req.Header.Set("X-Request-Id", "gone")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	bufio.NewReader(resp.Body).ReadString('\n')
	cancel()
	resp.Body.Close()
	if line := l.waitLog(t, "request_id=gone"); !strings.Contains(line, "client_disconnected=true") || !strings.Contains(line, "finish_reason=abort") {
		t.Fatal(line)
	}
	// Probes stay out of the info log.
	l.do(t, "GET", "/health", "", "X-Request-Id", "probe")
	l.do(t, "GET", "/version", "", "X-Request-Id", "marker")
	time.Sleep(50 * time.Millisecond)
	if lines := l.logLines("request_id=probe"); len(lines) != 0 {
		t.Fatal(lines)
	}
}

func TestLiveRequestLogFlags(t *testing.T) {
	gen := t.TempDir()
	if err := os.WriteFile(filepath.Join(gen, "generation_config.json"),
		[]byte(`{"temperature": 0.5, "top_p": 0.9, "top_k": 7, "repetition_penalty": 1.05}`), 0o644); err != nil {
		t.Fatal(err)
	}
	l := startLive(t, "--enable-log-requests", "--max-log-len", "2", "--generation-config", gen)
	l.do(t, "POST", "/v1/completions", `{"prompt":[5,6,7,8],"max_tokens":2}`, "X-Request-Id", "defaults")
	line := l.waitLog(t, "request_id=defaults")
	for _, want := range []string{"prompt_token_ids=\"[5 6]\"", "params.temperature=0.5", "params.top_p=0.9", "params.top_k=7", "params.repetition_penalty=1.05"} {
		if !strings.Contains(line, want) {
			t.Errorf("%s lacks %s", line, want)
		}
	}
	// A request's own values win over the generation config's.
	l.do(t, "POST", "/v1/completions", `{"prompt":[5],"max_tokens":2,"temperature":0,"top_k":-1}`, "X-Request-Id", "own")
	line = l.waitLog(t, "request_id=own")
	if !strings.Contains(line, "params.temperature=0 ") || !strings.Contains(line, "params.top_k=-1") || !strings.Contains(line, "params.top_p=0.9") {
		t.Fatal(line)
	}

	// --disable-log-requests: successes are silent, errors still logged.
	q := startLive(t, "--disable-log-requests")
	q.do(t, "POST", "/v1/completions", `{"prompt":[5],"max_tokens":1}`, "X-Request-Id", "quiet")
	q.do(t, "POST", "/v1/completions", `{"prompt":[5],"max_tokens":0}`, "X-Request-Id", "loud")
	q.waitLog(t, "request_id=loud", "status=400")
	if lines := q.logLines("request_id=quiet"); len(lines) != 0 {
		t.Fatal(lines)
	}
}

func TestLiveChatTemplateFlag(t *testing.T) {
	l := startLive(t, "--chat-template", "{% for m in messages %}<{{ m.content }}>{% endfor %}")
	code, b := l.post(t, "/tokenize", `{"messages":[{"role":"user","content":"ab"}],"return_token_strs":true}`)
	if code != 200 || !strings.Contains(string(b), `"token_strs":["<","ab",">"]`) && !strings.Contains(string(b), `"<ab>"`) {
		var r struct {
			TokenStrs []string `json:"token_strs"`
		}
		json.Unmarshal(b, &r)
		if code != 200 || strings.Join(r.TokenStrs, "") != "<ab>" {
			t.Fatalf("%d %s", code, b)
		}
	}
}

// --skip-tokenizer-init: outputs carry token ids, as vLLM's do.
func TestLiveSkipTokenizerInitReturnsTokenIDs(t *testing.T) {
	l := startLive(t, "--skip-tokenizer-init")
	code, b := l.post(t, "/v1/completions", `{"prompt":[1,2,3],"max_tokens":4,"ignore_eos":true,"n":2,"temperature":0}`)
	var r struct {
		Choices []struct {
			Text           string `json:"text"`
			TokenIDs       []int  `json:"token_ids"`
			PromptTokenIDs []int  `json:"prompt_token_ids"`
		} `json:"choices"`
	}
	if code != 200 || json.Unmarshal(b, &r) != nil || len(r.Choices) != 2 {
		t.Fatalf("%d %s", code, b)
	}
	for _, c := range r.Choices {
		if len(c.TokenIDs) != 4 || fmt.Sprint(c.PromptTokenIDs) != "[1 2 3]" || c.Text != "" {
			t.Fatalf("%s", b)
		}
	}
	// Streamed: the ids arrive in the chunks, the prompt's once.
	code, b = l.post(t, "/v1/completions", `{"prompt":[1,2,3],"max_tokens":4,"ignore_eos":true,"stream":true,"temperature":0}`)
	var ids []int
	prompts := 0
	for _, line := range strings.Split(string(b), "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var ch struct {
			Choices []struct {
				TokenIDs       []int `json:"token_ids"`
				PromptTokenIDs []int `json:"prompt_token_ids"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			t.Fatal(err)
		}
		for _, c := range ch.Choices {
			ids = append(ids, c.TokenIDs...)
			if c.PromptTokenIDs != nil {
				prompts++
			}
		}
	}
	if code != 200 || len(ids) != 4 || prompts != 1 || fmt.Sprint(ids) != fmt.Sprint(r.Choices[0].TokenIDs) {
		t.Fatalf("ids %v (want %v), prompts %d: %s", ids, r.Choices[0].TokenIDs, prompts, b)
	}
	// return_token_ids false turns them off.
	if _, b = l.post(t, "/v1/completions", `{"prompt":[1],"max_tokens":2,"return_token_ids":false}`); strings.Contains(string(b), "token_ids") {
		t.Fatalf("%s", b)
	}
}

func TestLiveReturnTokenIDsChat(t *testing.T) {
	l := startLive(t)
	code, b := l.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":3,"ignore_eos":true,"return_token_ids":true}`)
	var r struct {
		PromptTokenIDs []int `json:"prompt_token_ids"`
		Choices        []struct {
			TokenIDs []int `json:"token_ids"`
		} `json:"choices"`
	}
	if code != 200 || json.Unmarshal(b, &r) != nil || len(r.PromptTokenIDs) == 0 || len(r.Choices[0].TokenIDs) != 3 {
		t.Fatalf("%d %s", code, b)
	}
	if _, b := l.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":1}`); strings.Contains(string(b), "token_ids") {
		t.Fatalf("token ids without asking: %s", b)
	}
}

func TestLiveModelsRetrieveAndVersion(t *testing.T) {
	l := startLive(t, "--served-model-name", "tiny,org/tiny-alias")
	c := oai.NewClient(option.WithBaseURL(l.url+"/v1/"), option.WithAPIKey("x"), option.WithMaxRetries(0))
	for _, id := range []string{"tiny", "org/tiny-alias"} {
		m, err := c.Models.Get(context.Background(), id)
		if err != nil || m.ID != id {
			t.Fatalf("%s: %+v %v", id, m, err)
		}
	}
	resp, b := l.do(t, "GET", "/v1/models/nope", "")
	if resp.StatusCode != 404 || !strings.Contains(string(b), "`tiny`, `org/tiny-alias`") {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	resp, b = l.do(t, "GET", "/version", "")
	var v buildInfo
	if resp.StatusCode != 200 || json.Unmarshal(b, &v) != nil || v.Version == "" || v.GoVersion == "" {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}

// The metrics vLLM dashboards query are there, filled by real requests.
func TestLiveVLLMMetrics(t *testing.T) {
	l := startLive(t)
	if code, b := l.post(t, "/v1/completions", `{"prompt":[1,2,3],"max_tokens":5,"n":2,"ignore_eos":true}`); code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	for _, c := range []struct{ name, want string }{
		{`vllm:request_params_n_count{model_name="tiny"}`, "1"},
		{`vllm:request_params_n_sum{model_name="tiny"}`, "2"},
		{`vllm:request_params_max_tokens_sum{model_name="tiny"}`, "5"},
		{`vllm:request_max_num_generation_tokens_sum{model_name="tiny"}`, "5"},
	} {
		if got := l.metric(t, c.name); got != c.want {
			t.Errorf("%s = %s, want %s", c.name, got, c.want)
		}
	}
	if got := l.metric(t, `vllm:iteration_tokens_total_count{model_name="tiny"}`); got == "0" || got == "" {
		t.Errorf("iteration_tokens_total_count %q", got)
	}
	// 3 prompt tokens, then each of the 2 sequences' tokens after the first.
	if got, _ := strconv.Atoi(l.metric(t, `vllm:iteration_tokens_total_sum{model_name="tiny"}`)); got < 11 {
		t.Errorf("iteration_tokens_total_sum %d, want at least 11", got)
	}
	resp, err := http.Get(l.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="true"`) {
		t.Errorf("cache_config_info missing:\n%s", grepLines(string(body), "cache_config"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// --return-tokens-as-token-ids reaches the server: logprobs name tokens by
// id in a streamed chat and a completion that do not ask; -O0 starts it
// eager (no CUDA graphs; on the CPU there are none anyway).
func TestLiveReturnTokensAsTokenIDsFlag(t *testing.T) {
	l := startLive(t, "--return-tokens-as-token-ids", "-O0")
	code, b := l.post(t, "/v1/completions", `{"prompt":[1,2,3],"max_tokens":3,"ignore_eos":true,"logprobs":1}`)
	var r struct {
		Choices []struct {
			Logprobs struct {
				Tokens []string `json:"tokens"`
			} `json:"logprobs"`
		} `json:"choices"`
	}
	if code != 200 || json.Unmarshal(b, &r) != nil || len(r.Choices) != 1 || len(r.Choices[0].Logprobs.Tokens) != 3 {
		t.Fatalf("%d %s", code, b)
	}
	for _, tok := range r.Choices[0].Logprobs.Tokens {
		if !strings.HasPrefix(tok, "token_id:") {
			t.Fatalf("token %q in %s", tok, b)
		}
	}
	code, b = l.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":3,"ignore_eos":true,"logprobs":true,"stream":true}`)
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	var tokens []string
	for _, line := range strings.Split(string(b), "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var chunk struct {
			Choices []struct {
				Logprobs *struct {
					Content []struct {
						Token string `json:"token"`
					} `json:"content"`
				} `json:"logprobs"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			t.Fatalf("%v: %s", err, data)
		}
		for _, c := range chunk.Choices {
			if c.Logprobs != nil {
				for _, x := range c.Logprobs.Content {
					tokens = append(tokens, x.Token)
				}
			}
		}
	}
	if len(tokens) != 3 {
		t.Fatalf("tokens %q in %s", tokens, b)
	}
	for _, tok := range tokens {
		if !strings.HasPrefix(tok, "token_id:") {
			t.Fatalf("token %q in %s", tok, b)
		}
	}
}
