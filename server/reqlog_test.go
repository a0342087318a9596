package server_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmserve/llmserve/server"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// records returns the JSON log records with msg starting "request".
func (l *lockedBuf) records(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		var r map[string]any
		if line == "" || json.Unmarshal([]byte(line), &r) != nil {
			continue
		}
		if msg, _ := r["msg"].(string); strings.HasPrefix(msg, "request") {
			out = append(out, r)
		}
	}
	return out
}

func (l *lockedBuf) wait(t *testing.T, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if rs := l.records(t); len(rs) >= n {
			return rs
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d request records:\n%s", n, l.b.String())
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRequestLogJSON(t *testing.T) {
	logs := &lockedBuf{}
	e := newEnv(t, nil, func(o *server.Options) {
		o.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	code, _, hdr := e.do("POST", "/v1/completions", `{"model":"alias","prompt":"hi","max_tokens":3}`, "X-Request-Id", "abc-123")
	if code != 200 || hdr.Get("X-Request-Id") != "abc-123" {
		t.Fatalf("%d %v", code, hdr)
	}
	r := logs.wait(t, 1)[0]
	want := map[string]any{"request_id": "abc-123", "route": "/v1/completions", "status": 200.0, "model": "alias",
		"completion_tokens": 3.0, "finish_reason": "length", "client_disconnected": false, "level": "INFO"}
	for k, v := range want {
		if r[k] != v {
			t.Errorf("%s = %v, want %v (%v)", k, r[k], v, r)
		}
	}
	if r["prompt_tokens"].(float64) < 1 || r["total_ms"] == nil || r["ttft_ms"] == nil {
		t.Errorf("%v", r)
	}
	// An unusable id (spaces, too long) is replaced, not echoed.
	_, _, hdr = e.do("GET", "/v1/models", "", "X-Request-Id", "a b")
	if id := hdr.Get("X-Request-Id"); id == "" || id == "a b" {
		t.Fatalf("X-Request-Id %q", id)
	}
	_, _, hdr = e.do("GET", "/v1/models", "", "X-Request-Id", strings.Repeat("x", 200))
	if len(hdr.Get("X-Request-Id")) > 128 {
		t.Fatal("long id echoed")
	}
	// The 404 names the served models, and the log carries the message.
	code, b, _ := e.do("POST", "/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"x"}]}`, "X-Request-Id", "e404")
	if code != 404 || !strings.Contains(string(b), "`test-model`, `alias`") {
		t.Fatalf("%d %s", code, b)
	}
	rs := logs.wait(t, 4)
	r = rs[len(rs)-1]
	if r["request_id"] != "e404" || r["level"] != "WARN" || !strings.Contains(r["error"].(string), "`nope` does not exist") {
		t.Fatalf("%v", r)
	}
	// Probes log at debug.
	e.do("GET", "/health", "", "X-Request-Id", "probe")
	rs = logs.wait(t, 5)
	if r := rs[len(rs)-1]; r["request_id"] != "probe" || r["level"] != "DEBUG" {
		t.Fatalf("%v", r)
	}
}

func TestRequestLogDisabledKeepsErrors(t *testing.T) {
	logs := &lockedBuf{}
	e := newEnv(t, nil, func(o *server.Options) {
		o.Logger = slog.New(slog.NewJSONHandler(logs, nil))
		o.RequestLog.Disabled = true
	})
	e.do("POST", "/v1/completions", `{"prompt":"hi","max_tokens":2}`, "X-Request-Id", "ok")
	e.do("POST", "/v1/completions", `{"prompt":"hi","max_tokens":-1}`, "X-Request-Id", "bad")
	logs.wait(t, 1)
	time.Sleep(20 * time.Millisecond)
	rs := logs.records(t)
	if len(rs) != 1 || rs[0]["request_id"] != "bad" || rs[0]["status"] != 400.0 || !strings.Contains(rs[0]["error"].(string), "max_tokens") {
		t.Fatalf("%v", rs)
	}
}

func TestModelRetrieveAndVersion(t *testing.T) {
	e := newEnv(t, nil, func(o *server.Options) { o.Version = map[string]string{"version": "v9"} })
	code, b, _ := e.do("GET", "/v1/models/alias", "")
	if code != 200 || !strings.Contains(string(b), `"id":"alias"`) || !strings.Contains(string(b), `"object":"model"`) {
		t.Fatalf("%d %s", code, b)
	}
	if code, b, _ = e.do("GET", "/v1/models/other", ""); code != 404 || !strings.Contains(string(b), "`test-model`") {
		t.Fatalf("%d %s", code, b)
	}
	if code, b, _ = e.do("GET", "/version", ""); code != 200 || strings.TrimSpace(string(b)) != `{"version":"v9"}` {
		t.Fatalf("%d %s", code, b)
	}
}
