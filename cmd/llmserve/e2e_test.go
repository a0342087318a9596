package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmserve/llmserve/internal/shareddata"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// syncBuf is a log sink tests can read while the server writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type live struct {
	url    string
	stop   context.CancelFunc
	done   chan error
	logs   *syncBuf
	golden struct {
		PromptIDs []int `json:"prompt_ids"`
		Greedy    []struct {
			Token  int     `json:"token"`
			Margin float64 `json:"margin"`
		} `json:"greedy"`
	}
}

// e2eDevice is the live tests' --device: LLMSERVE_E2E_DEVICE=cuda runs
// them on the CUDA backend (a GPU, or tools/cudaemu).
func e2eDevice() string { return cmp.Or(os.Getenv("LLMSERVE_E2E_DEVICE"), "cpu") }

// startLive runs the real stack (hub resolve, tokenizer, model, engine,
// server) in process on the tiny Qwen2 checkpoint with the Qwen3 tokenizer.
func startLive(t *testing.T, extra ...string) *live { return startLiveClient(t, nil, extra...) }

// startLiveClient is startLive over HTTPS when client is set (extra then
// carries --ssl-certfile): client polls /health until ready.
func startLiveClient(t *testing.T, client *http.Client, extra ...string) *live {
	td := shareddata.Dir(t)
	mdir := filepath.Join(td, "models", "qwen2-tiny")
	device := e2eDevice()
	args := []string{"--model", mdir, "--tokenizer", tinyTokenizer(t),
		"--host", "127.0.0.1", "--port", "0", "--device", device, "--kv-cache-memory", "8MiB",
		"--served-model-name", "tiny", "--max-num-seqs", "8"}
	ready := 60 * time.Second
	if device != "cpu" {
		// Short warm-up steps: the emulator runs a 2,048-token step slowly.
		args = append(args, "--max-num-batched-tokens", "512")
		ready = 10 * time.Minute
	}
	args = append(args, extra...)
	if slices.Contains(extra, "--skip-tokenizer-init") {
		args = slices.Delete(args, 2, 4) // no --tokenizer
	}
	cfg, err := parseFlags(args, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	l := &live{done: make(chan error, 1), logs: &syncBuf{}}
	b, err := os.ReadFile(filepath.Join(mdir, "golden.json"))
	if err != nil || json.Unmarshal(b, &l.golden) != nil {
		t.Fatalf("golden: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.stop = cancel
	addr := make(chan string, 1)
	log := slog.New(slog.NewTextHandler(l.logs, nil))
	go func() { l.done <- serve(ctx, cfg, log, func(a string) { addr <- a }) }()
	select {
	case a := <-addr:
		l.url = "http://" + a
		if client != nil {
			l.url = "https://" + a
		}
	case err := <-l.done:
		t.Fatalf("serve: %v\n%s", err, l.logs)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-l.done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	if client == nil {
		client = http.DefaultClient
	}
	deadline := time.Now().Add(ready)
	for {
		resp, err := client.Get(l.url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v\n%s", err, l.logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return l
}

func (l *live) post(t *testing.T, path, body string) (int, []byte) {
	t.Helper()
	resp, err := http.Post(l.url+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (l *live) metric(t *testing.T, name string) string {
	t.Helper()
	resp, err := http.Get(l.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name) {
			f := strings.Fields(line)
			return f[len(f)-1]
		}
	}
	t.Fatalf("no metric %s", name)
	return ""
}

func idsJSON(ids []int) string {
	b, _ := json.Marshal(ids)
	return string(b)
}

// greedyMatchesGolden asks the live server for the golden prompt's greedy
// continuation up to the first near-tie and checks the tokens against
// transformers'; it returns that many tokens and the completion's text.
func greedyMatchesGolden(t *testing.T, l *live) (n int, text string) {
	t.Helper()
	for n < len(l.golden.Greedy) && l.golden.Greedy[n].Margin > 0.01 {
		n++
	}
	var want []string
	for _, g := range l.golden.Greedy[:n] {
		want = append(want, fmt.Sprintf("token_id:%d", g.Token))
	}
	body := fmt.Sprintf(`{"model":"tiny","prompt":%s,"max_tokens":%d,"temperature":0,"ignore_eos":true,"logprobs":0,"return_tokens_as_token_ids":true}`,
		idsJSON(l.golden.PromptIDs), n)
	code, b := l.post(t, "/v1/completions", body)
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	var r struct {
		Choices []struct {
			Text     string `json:"text"`
			Logprobs struct {
				Tokens []string `json:"tokens"`
			} `json:"logprobs"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.Choices[0].Logprobs.Tokens, " "); got != strings.Join(want, " ") || r.Choices[0].FinishReason != "length" {
		t.Fatalf("greedy tokens\n got %s\nwant %s", got, strings.Join(want, " "))
	}
	return n, r.Choices[0].Text
}

func TestLiveGreedyMatchesTransformers(t *testing.T) {
	l := startLive(t)
	n, want := greedyMatchesGolden(t, l)

	// The SDK, streaming and not, sees the same text.
	c := oai.NewClient(option.WithBaseURL(l.url+"/v1/"), option.WithAPIKey("x"), option.WithMaxRetries(0))
	prompt := make([]int64, len(l.golden.PromptIDs))
	for i, id := range l.golden.PromptIDs {
		prompt[i] = int64(id)
	}
	params := oai.CompletionNewParams{Model: "tiny", Prompt: oai.CompletionNewParamsPromptUnion{OfArrayOfTokens: prompt},
		MaxTokens: oai.Int(int64(n)), Temperature: oai.Float(0)}
	ctx := context.Background()
	resp, err := c.Completions.New(ctx, params)
	if err != nil || resp.Choices[0].Text != want {
		t.Fatalf("SDK: %v %+v, want %q", err, resp, want)
	}
	stream := c.Completions.NewStreaming(ctx, params)
	var text strings.Builder
	for stream.Next() {
		for _, ch := range stream.Current().Choices {
			text.WriteString(ch.Text)
		}
	}
	if err := stream.Err(); err != nil || text.String() != want {
		t.Fatalf("SDK stream: %v %q, want %q", err, text.String(), want)
	}
	if l.metric(t, `vllm:generation_tokens_total{model_name="tiny"}`) == "0" {
		t.Fatal("generation tokens not counted")
	}
}

func TestLiveVocabularyChecks(t *testing.T) {
	l := startLive(t)
	code, b := l.post(t, "/v1/completions", `{"prompt":[1,512],"max_tokens":2}`)
	if code != 400 || !strings.Contains(string(b), `"param":"prompt"`) || !strings.Contains(string(b), "512") {
		t.Fatalf("%d %s", code, b)
	}
	code, b = l.post(t, "/v1/completions", `{"prompt":[1,2],"max_tokens":2047}`)
	if code != 400 || !strings.Contains(string(b), "2048") || !strings.Contains(string(b), "2049") {
		t.Fatalf("%d %s", code, b)
	}
	// Text requests work: the tokenizer fits the model.
	code, b = l.post(t, "/tokenize", `{"prompt":"hello world"}`)
	if code != 200 || !strings.Contains(string(b), `"count":`) {
		t.Fatalf("%d %s", code, b)
	}
	for _, c := range []struct{ path, body string }{
		{"/v1/completions", `{"prompt":"hello world","max_tokens":2}`},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`},
	} {
		if code, b := l.post(t, c.path, c.body); code != 200 {
			t.Fatalf("%s: %d %s", c.path, code, b)
		}
	}
}

func TestLiveCancelFreesBlocks(t *testing.T) {
	l := startLive(t)
	total := l.metric(t, `llmserve_kv_cache_blocks{model_name="tiny"}`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body := fmt.Sprintf(`{"prompt":%s,"max_tokens":2000,"ignore_eos":true,"stream":true}`, idsJSON(l.golden.PromptIDs))
	req, _ := http.NewRequestWithContext(ctx, "POST", l.url+"/v1/completions", strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // hang up mid-stream
	deadline := time.Now().Add(30 * time.Second)
	for l.metric(t, `vllm:request_success_total{finished_reason="abort",model_name="tiny"}`) != "1" ||
		l.metric(t, `llmserve_kv_cache_blocks_free{model_name="tiny"}`) != total ||
		l.metric(t, `vllm:num_requests_running{model_name="tiny"}`) != "0" {
		if time.Now().After(deadline) {
			t.Fatalf("blocks not freed: free %s of %s", l.metric(t, `llmserve_kv_cache_blocks_free{model_name="tiny"}`), total)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if got := l.metric(t, `vllm:generation_tokens_total{model_name="tiny"}`); got == "2000" {
		t.Fatal("the request ran to the end")
	}
}

func TestLiveDrainFinishesStream(t *testing.T) {
	l := startLive(t, "--shutdown-timeout", "60s")
	body := fmt.Sprintf(`{"prompt":%s,"max_tokens":1500,"ignore_eos":true,"stream":true}`, idsJSON(l.golden.PromptIDs))
	resp, err := http.Post(l.url+"/generate", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	l.stop() // SIGTERM
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(rest, []byte("data: [DONE]\n\n")) || !bytes.Contains(rest, []byte(`"finish_reason":"length"`)) ||
		!bytes.Contains(rest, []byte(`"completion_tokens":1500`)) {
		t.Fatalf("stream cut: ...%s", rest[max(0, len(rest)-300):])
	}
	if err := <-l.done; err != nil {
		t.Fatal(err)
	}
	l.done <- nil // for Cleanup
	if !strings.Contains(l.logs.String(), "in_flight=1") {
		t.Logf("note: the stream had already finished when the drain began:\n%s", l.logs)
	}
}

// /health carries the reference's memory table: weights, KV capacity and the
// concurrency it allows at max_model_len.
func TestLiveHealthMemory(t *testing.T) {
	h := liveHealth(t, startLive(t).url)
	// qwen2-tiny: 2 layers × 2 KV heads × head_dim 16 × (K+V) × 4 bytes (f32) = 512 bytes a token.
	if h.Backend != e2eDevice() || h.WeightsBytes <= 0 || h.BlockSize != 16 || h.KVBlocksTotal <= 0 ||
		h.KVCacheCapacityTokens != h.KVBlocksTotal*16 || h.KVCacheBytes != int64(h.KVCacheCapacityTokens)*512 ||
		h.MaxConcurrency != float64(h.KVCacheCapacityTokens)/float64(h.MaxModelLen) {
		t.Fatalf("health %+v", h)
	}
}

// TestLiveMaxModelLenDefault: without --max-model-len the context is the
// model's max_position_embeddings (2048 for qwen2-tiny) when the KV cache
// holds it, and the cache's capacity, with a warning, when it does not; a
// prompt past it is a 400 naming the limit.
func TestLiveMaxModelLenDefault(t *testing.T) {
	if h := liveHealth(t, startLive(t).url); h.MaxModelLen != 2048 {
		t.Errorf("8 MiB of cache (%d tokens): max_model_len %d, want the model's 2048", h.KVCacheCapacityTokens, h.MaxModelLen)
	}
	// 256 KiB at 512 bytes a token: 512 tokens.
	l := startLive(t, "--kv-cache-memory", "256KiB")
	if h := liveHealth(t, l.url); h.MaxModelLen != 512 || h.KVCacheCapacityTokens != 512 {
		t.Errorf("256 KiB of cache: max_model_len %d (capacity %d), want 512", h.MaxModelLen, h.KVCacheCapacityTokens)
	}
	if !strings.Contains(l.logs.String(), "max_model_len lowered") {
		t.Errorf("no warning about the lowered max_model_len:\n%s", l.logs)
	}
	ids := make([]int, 600)
	for i := range ids {
		ids[i] = 1 + i%100
	}
	body, _ := json.Marshal(map[string]any{"model": "tiny", "prompt": ids, "max_tokens": 1})
	resp, err := http.Post(l.url+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(msg), "512") {
		t.Errorf("a 600-token prompt: %d %s, want 400 naming 512", resp.StatusCode, msg)
	}
}
