// Package benchtest is a fake LLM server with known delays, for testing
// load generators without a model.
package benchtest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// Server answers /generate, /v1/completions and /v1/chat/completions, each
// streamed or not, with delays the prompt names: "ttft=MS itl=MS n=EVENTS"
// (missing fields default to 0, 0, 4). It reports 2*n completion tokens
// when Usage is set, so tests can tell server counts from event counts.
// It also serves /health, /v1/models and /metrics.
type Server struct {
	// Reject answers every Reject-th generation request (1-based) with a
	// 429; 0 never.
	Reject int64
	// Usage reports token counts (false exercises clients' fallbacks).
	Usage bool

	hits atomic.Int64
	busy atomic.Int64
}

// Hits is how many generation requests arrived (429s included).
func (f *Server) Hits() int64 { return f.hits.Load() }

type spec struct {
	ttft, itl time.Duration
	n         int
}

func parseSpec(prompt string) spec {
	s := spec{n: 4}
	for _, f := range strings.Fields(prompt) {
		k, v, _ := strings.Cut(f, "=")
		var x int
		fmt.Sscan(v, &x)
		switch k {
		case "ttft":
			s.ttft = time.Duration(x) * time.Millisecond
		case "itl":
			s.itl = time.Duration(x) * time.Millisecond
		case "n":
			s.n = x
		}
	}
	return s
}

func (f *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		fmt.Fprint(w, `{"status":"ok","model":"fake","weights_bytes":1073741824,"kv_cache_capacity_tokens":4096}`)
		return
	}
	if r.URL.Path == "/metrics" {
		// KV use is 1% per request in flight, as a real paged cache grows.
		b := f.busy.Load()
		fmt.Fprintf(w, "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"fake\"} %g\n"+
			"vllm:num_requests_running{model_name=\"fake\"} %d\nvllm:num_requests_waiting{model_name=\"fake\"} 0\n", float64(b)/100, b)
		return
	}
	if r.URL.Path == "/v1/models" {
		fmt.Fprint(w, `{"object":"list","data":[{"id":"fake-model","object":"model"}]}`)
		return
	}
	hit := f.hits.Add(1)
	if f.Reject > 0 && hit%f.Reject == 0 {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprint(w, `{"error":{"message":"overloaded","type":"overloaded","code":429}}`)
		return
	}
	f.busy.Add(1)
	defer f.busy.Add(-1)
	var req struct {
		Prompt   string `json:"prompt"`
		Messages []struct {
			Content string `json:"content"`
		} `json:"messages"`
		Stream        bool `json:"stream"`
		StreamOptions *struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, `{"error":{"message":"bad json"}}`, http.StatusBadRequest)
		return
	}
	prompt := req.Prompt
	if len(req.Messages) > 0 {
		prompt = req.Messages[0].Content
	}
	spec := parseSpec(prompt)
	// Server-side token count differs from the event count (2 tokens per
	// event), so the tests can tell which one the client used.
	completion := 2 * spec.n
	kind := map[string]string{"/generate": "generate", "/v1/completions": "completions", "/v1/chat/completions": "chat"}[r.URL.Path]
	if kind == "" {
		http.NotFound(w, r)
		return
	}
	start := time.Now()
	if !req.Stream {
		time.Sleep(spec.ttft + time.Duration(max(spec.n-1, 0))*spec.itl)
		text := strings.Repeat("tok ", spec.n)
		var body map[string]any
		switch kind {
		case "generate":
			body = map[string]any{"text": text, "finish_reason": "length", "ttft_ms": float64(spec.ttft) / 1e6,
				"total_ms": float64(time.Since(start)) / 1e6}
			if f.Usage {
				body["prompt_tokens"], body["completion_tokens"] = 3, completion
			}
		case "completions":
			body = map[string]any{"choices": []any{map[string]any{"text": text, "finish_reason": "length"}}}
		case "chat":
			body = map[string]any{"choices": []any{map[string]any{"message": map[string]any{"role": "assistant", "content": text}, "finish_reason": "length"}}}
		}
		if kind != "generate" && f.Usage {
			body["usage"] = map[string]any{"prompt_tokens": 3, "completion_tokens": completion}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(body)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	fl := w.(http.Flusher)
	send := func(v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(w, "data: %s\n\n", b)
		fl.Flush()
	}
	if kind == "chat" { // OpenAI's first chunk carries only the role
		send(map[string]any{"choices": []any{map[string]any{"delta": map[string]any{"role": "assistant"}}}})
	}
	fmt.Fprint(w, ": keep-alive\n\n")
	fl.Flush()
	time.Sleep(spec.ttft)
	for i := range spec.n {
		if i > 0 {
			time.Sleep(spec.itl)
		}
		last := i == spec.n-1
		switch kind {
		case "generate":
			ev := map[string]any{"text": "tok "}
			if last {
				ev["finish_reason"] = "length"
				if f.Usage {
					ev["prompt_tokens"], ev["completion_tokens"] = 3, completion
				}
			}
			send(ev)
		case "completions":
			ch := map[string]any{"text": "tok ", "finish_reason": nil}
			if last {
				ch["finish_reason"] = "length"
			}
			send(map[string]any{"choices": []any{ch}, "usage": nil})
		case "chat":
			ch := map[string]any{"delta": map[string]any{"content": "tok "}, "finish_reason": nil}
			if last {
				ch["finish_reason"] = "length"
			}
			send(map[string]any{"choices": []any{ch}})
		}
	}
	if kind != "generate" && f.Usage && req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		send(map[string]any{"choices": []any{}, "usage": map[string]any{"prompt_tokens": 3, "completion_tokens": completion}})
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	fl.Flush()
}
