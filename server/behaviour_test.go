package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmserve/llmserve/openai"
	"github.com/llmserve/llmserve/server"
	"github.com/llmserve/llmserve/server/servertest"
)

// eventually polls cond until it holds or the test's deadline passes (a
// liveness wait, not a timing assertion).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

type result struct {
	code int
	body string
	err  error
}

// postAsync sends a request in the background.
func (e *env) postAsync(ctx context.Context, path, body string) <-chan result {
	out := make(chan result, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", e.ts.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			out <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		out <- result{code: resp.StatusCode, body: string(b), err: err}
	}()
	return out
}

func TestAdmissionExactCapacity(t *testing.T) {
	const capacity = 3
	fe := &servertest.Engine{Hold: make(chan struct{})}
	e := newEnv(t, fe, func(o *server.Options) { o.MaxConcurrentRequests = capacity })
	ctx := ctxT(t)
	var pending []<-chan result
	for i := range capacity {
		body := `{"prompt":"ab","max_tokens":2}`
		if i%2 == 1 {
			body = `{"prompt":"ab","max_tokens":2,"stream":true}`
		}
		pending = append(pending, e.postAsync(ctx, "/v1/completions", body))
	}
	if err := fe.WaitSubmitted(ctx, capacity); err != nil {
		t.Fatal(err)
	}
	// One past capacity: 429 for streaming and not, with Retry-After and an OpenAI error.
	for _, body := range []string{`{"prompt":"ab"}`, `{"prompt":"ab","stream":true}`} {
		code, b, h := e.do("POST", "/v1/completions", body)
		if code != 429 || h.Get("Retry-After") == "" || h.Get("Content-Type") != "application/json" {
			t.Fatalf("status %d retry-after %q: %s", code, h.Get("Retry-After"), b)
		}
		if ae := decode[apiErr](t, b); ae.Error.Type != "rate_limit_error" || ae.Error.Code != "rate_limit_exceeded" {
			t.Fatalf("error %s", b)
		}
	}
	if got := e.srv.Admitted(); got != capacity {
		t.Fatalf("admitted %d", got)
	}
	close(fe.Hold)
	for _, p := range pending {
		if r := <-p; r.err != nil || r.code != 200 {
			t.Fatalf("admitted request: %+v", r)
		}
	}
	eventually(t, "slots released", func() bool { return e.srv.Admitted() == 0 })
	if code, b := e.post("/v1/completions", `{"prompt":"ab","max_tokens":1}`); code != 200 {
		t.Fatalf("after release: %d %s", code, b)
	}
	// A multi-prompt request needs one slot per prompt.
	e2 := newEnv(t, nil, func(o *server.Options) { o.MaxConcurrentRequests = 2 })
	if code, _ := e2.post("/v1/completions", `{"prompt":["a","b"],"max_tokens":1}`); code != 200 {
		t.Fatalf("2 prompts with capacity 2: %d", code)
	}
}

// TestNeverFits: a request that needs more slots than the whole capacity
// (one per sequence: n per prompt) can never be admitted, so it is a 400
// that says why, not a 429 that a well-behaved client retries forever.
func TestNeverFits(t *testing.T) {
	fe := &servertest.Engine{Hold: make(chan struct{})}
	e := newEnv(t, fe, func(o *server.Options) { o.MaxConcurrentRequests = 4 })
	for _, c := range []struct{ path, body, param string }{
		{"/v1/completions", `{"prompt":["a","b","c","d","e"],"max_tokens":1}`, "prompt"},
		{"/v1/completions", `{"prompt":[[97],[98],[99]],"n":2,"max_tokens":1}`, "n"},
		{"/v1/completions", `{"prompt":"a","n":5,"max_tokens":1}`, "n"},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"n":5,"max_tokens":1}`, "n"},
	} {
		code, b, h := e.do("POST", c.path, c.body)
		ae := decode[apiErr](t, b)
		if code != 400 || h.Get("Retry-After") != "" || ae.Error.Param == nil || *ae.Error.Param != c.param ||
			!strings.Contains(ae.Error.Message, "--max-concurrent-requests") || !strings.Contains(ae.Error.Message, "never") {
			t.Errorf("%s: %d %s", c.body, code, b)
		}
	}
	// Without the flag, MaxChoices bounds n × prompts all the same.
	e2 := newEnv(t, nil, nil)
	prompts := strings.Repeat(`"a",`, openai.MaxChoices/2) + `"a"`
	code, b := e2.post("/v1/completions", `{"prompt":[`+prompts+`],"n":2,"max_tokens":1}`)
	if ae := decode[apiErr](t, b); code != 400 || ae.Error.Param == nil || *ae.Error.Param != "n" {
		t.Errorf("%d x 2 sequences: %d %s", openai.MaxChoices/2+1, code, b)
	}
	if fe.Submitted() != 0 {
		t.Fatalf("%d requests reached the engine", fe.Submitted())
	}
	// What fits the capacity but not the free slots now is a 429: n counts.
	ctx := ctxT(t)
	held := e.postAsync(ctx, "/v1/completions", `{"prompt":"ab","n":3,"max_tokens":1}`)
	if err := fe.WaitSubmitted(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if code, b, h := e.do("POST", "/v1/completions", `{"prompt":"ab","n":2,"max_tokens":1}`); code != 429 || h.Get("Retry-After") == "" {
		t.Fatalf("n=2 with 1 of 4 slots free: %d %s", code, b)
	}
	one := e.postAsync(ctx, "/generate", `{"prompt":"ab","max_tokens":1}`) // takes the last slot
	if err := fe.WaitSubmitted(ctx, 2); err != nil {
		t.Fatal(err)
	}
	close(fe.Hold)
	for _, ch := range []<-chan result{held, one} {
		if r := <-ch; r.err != nil || r.code != 200 {
			t.Fatalf("admitted request: %+v", r)
		}
	}
}

func TestQueueWait(t *testing.T) {
	// Slots is unbuffered with no receiver: requests wait forever.
	fe := &servertest.Engine{Slots: make(chan struct{})}
	e := newEnv(t, fe, func(o *server.Options) { o.MaxQueueWait = 20 * time.Millisecond })
	for _, body := range []string{`{"prompt":"a"}`, `{"prompt":"a","stream":true}`} {
		code, b, h := e.do("POST", "/v1/completions", body)
		if code != 503 || decode[apiErr](t, b).Error.Code != "queue_timeout" || h.Get("Retry-After") == "" {
			t.Fatalf("%d %s", code, b)
		}
	}
	// The requests left the engine's queue.
	eventually(t, "queued requests aborted", func() bool { return fe.Aborted() == 2 && fe.Stats().Waiting == 0 })
}

// A request the engine has scheduled is not a queued one: a first token
// slower than --max-queue-wait (a long prefill) is waited for.
func TestQueueWaitSpareScheduled(t *testing.T) {
	fe := &servertest.Engine{Hold: make(chan struct{})}
	e := newEnv(t, fe, func(o *server.Options) { o.MaxQueueWait = 20 * time.Millisecond })
	go func() {
		time.Sleep(100 * time.Millisecond) // five times the queue wait
		close(fe.Hold)
	}()
	code, b, _ := e.do("POST", "/v1/completions", `{"prompt":"a","max_tokens":2}`)
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
}

func TestCancelOnDisconnect(t *testing.T) {
	for _, stream := range []bool{false, true} {
		name := map[bool]string{false: "non-streaming", true: "streaming"}[stream]
		t.Run(name, func(t *testing.T) {
			fe := &servertest.Engine{Hold: make(chan struct{})}
			e := newEnv(t, fe, nil)
			ctx, cancel := context.WithCancel(ctxT(t))
			defer cancel()
			body := `{"prompt":"abc","max_tokens":100,"stream":` + map[bool]string{false: "false", true: "true"}[stream] + `}`
			req, _ := http.NewRequestWithContext(ctx, "POST", e.ts.URL+"/v1/completions", strings.NewReader(body))
			done := make(chan error, 1)
			hangup := make(chan struct{})
			go func() {
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					// Read the first event, then hang up when told.
					_, err = bufio.NewReader(resp.Body).ReadString('\n')
					done <- err
					<-hangup
					resp.Body.Close()
					return
				}
				done <- err
			}()
			if err := fe.WaitSubmitted(ctx, 1); err != nil {
				t.Fatal(err)
			}
			fe.Hold <- struct{}{} // one token
			if stream {
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
			if fe.BlocksInUse() == 0 {
				t.Fatal("request should hold KV blocks while running")
			}
			close(hangup) // streaming: the client closes the connection
			if !stream {
				cancel() // non-streaming: the client gives up waiting
				if err := <-done; !errors.Is(err, context.Canceled) {
					t.Fatalf("client error %v", err)
				}
			}
			eventually(t, "engine abort", func() bool { return fe.Aborted() == 1 && fe.Finished() == 1 })
			eventually(t, "blocks freed", func() bool { return fe.BlocksInUse() == 0 && fe.Stats().KVBlocksFree == fe.Stats().KVBlocksTotal })
			eventually(t, "slot released", func() bool { return e.srv.Admitted() == 0 })
			_, b, _ := e.do("GET", "/metrics", "")
			if !strings.Contains(string(b), `vllm:request_success_total{finished_reason="abort",model_name="test-model"} 1`) {
				t.Fatalf("abort not counted:\n%s", grep(string(b), "request_success"))
			}
		})
	}
}

func TestDrain(t *testing.T) {
	fe := &servertest.Engine{Hold: make(chan struct{})}
	e := newEnv(t, fe, nil)
	ctx := ctxT(t)
	inflight := e.postAsync(ctx, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hey"}],"max_tokens":6,"stream":true}`)
	if err := fe.WaitSubmitted(ctx, 1); err != nil {
		t.Fatal(err)
	}
	fe.Hold <- struct{}{} // the stream has started
	e.srv.Drain()
	code, b, _ := e.do("GET", "/health", "")
	if h := decode[server.HealthResponse](t, b); code != 503 || h.Status != "draining" {
		t.Fatalf("health while draining: %d %s", code, b)
	}
	if code, b := e.post("/v1/completions", `{"prompt":"a"}`); code != 503 || decode[apiErr](t, b).Error.Code != "draining" {
		t.Fatalf("new request while draining: %d %s", code, b)
	}
	idle := make(chan error, 1)
	go func() { idle <- e.srv.WaitIdle(ctx) }()
	select {
	case err := <-idle:
		t.Fatalf("WaitIdle returned %v with a stream in flight", err)
	default:
	}
	close(fe.Hold)
	r := <-inflight
	if r.err != nil || r.code != 200 || !strings.HasSuffix(r.body, "data: [DONE]\n\n") {
		t.Fatalf("in-flight stream: %+v", r)
	}
	if err := <-idle; err != nil {
		t.Fatal(err)
	}
	if fe.Aborted() != 0 {
		t.Fatal("drain aborted the in-flight request")
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// metricValue returns the value of the first sample line starting with prefix.
func metricValue(t *testing.T, text, prefix string) string {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			f := strings.Fields(l)
			return f[len(f)-1]
		}
	}
	t.Fatalf("no sample %q in\n%s", prefix, text)
	return ""
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, nil, func(o *server.Options) { o.MaxConcurrentRequests = 1 })
	names := []string{
		"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
		"vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds",
		"vllm:request_queue_time_seconds", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
		"vllm:num_preemptions_total", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
		"vllm:request_success_total", "llmserve_requests_rejected_total",
	}
	scrape := func() string {
		code, b, h := e.do("GET", "/metrics", "")
		if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/plain") {
			t.Fatalf("%d %s", code, h.Get("Content-Type"))
		}
		return string(b)
	}
	before := scrape()
	for _, n := range names {
		if !strings.Contains(before, "# TYPE "+n+" ") {
			t.Errorf("metric %s missing", n)
		}
	}
	if metricValue(t, before, `vllm:generation_tokens_total{model_name="test-model"}`) != "0" {
		t.Fatal("generation tokens should start at 0")
	}
	for _, body := range []string{`{"prompt":"abc","max_tokens":4}`, `{"prompt":"abc","max_tokens":4,"stream":true}`} {
		if code, b := e.post("/v1/completions", body); code != 200 {
			t.Fatalf("%d %s", code, b)
		}
	}
	e.post("/v1/completions", `{"prompt":"abc","temperature":-1}`)
	after := scrape()
	for prefix, want := range map[string]string{
		`vllm:generation_tokens_total{model_name="test-model"}`:                        "8",
		`vllm:prompt_tokens_total{model_name="test-model"}`:                            "6",
		`vllm:request_success_total{finished_reason="length",model_name="test-model"}`: "2",
		`vllm:time_to_first_token_seconds_count{model_name="test-model"}`:              "2",
		`vllm:e2e_request_latency_seconds_count{model_name="test-model"}`:              "2",
		`vllm:request_queue_time_seconds_count{model_name="test-model"}`:               "2",
		`vllm:inter_token_latency_seconds_count{model_name="test-model"}`:              "6",
		`llmserve_requests_rejected_total{model_name="test-model",reason="invalid"}`:   "1",
		`vllm:request_generation_tokens_sum{model_name="test-model"}`:                  "8",
		`vllm:kv_cache_usage_perc{model_name="test-model"}`:                            "0",
		`llmserve_requests_rejected_total{model_name="test-model",reason="capacity"}`:  "0",
	} {
		if got := metricValue(t, after, prefix); got != want {
			t.Errorf("%s = %s, want %s", prefix, got, want)
		}
	}
	// The JSON view, by query and by Accept.
	for _, hdr := range [][]string{nil, {"Accept", "application/json"}} {
		path := "/metrics"
		if hdr == nil {
			path += "?format=json"
		}
		code, b, _ := e.do("GET", path, "", hdr...)
		var s struct {
			Model    string `json:"model"`
			Requests struct {
				Total    int `json:"total"`
				Rejected int `json:"rejected"`
				InWindow int `json:"in_window"`
			} `json:"requests"`
			TTFT struct {
				Count         int `json:"count"`
				P50, P95, P99 float64
			} `json:"ttft_ms"`
			TPOT, E2E, TPS struct {
				Count int `json:"count"`
			}
		}
		if err := decodeInto(b, &s); code != 200 || err != nil || s.Model != model || s.Requests.Total != 2 ||
			s.Requests.Rejected != 1 || s.Requests.InWindow != 2 || s.TTFT.Count != 2 || s.TTFT.P99 < s.TTFT.P50 {
			t.Fatalf("%d %v %s", code, err, b)
		}
		for _, k := range []string{`"tpot_ms"`, `"e2e_ms"`, `"tokens_per_second"`, `"p95"`, `"throughput_tokens_per_second"`} {
			if !strings.Contains(string(b), k) {
				t.Fatalf("JSON view lacks %s: %s", k, b)
			}
		}
	}
}

func decodeInto(b []byte, v any) error { return json.Unmarshal(b, v) }

func TestConcurrentStreams(t *testing.T) {
	// Many interleaved streams each get exactly their own text.
	e := newEnv(t, &servertest.Engine{ChanCap: 1}, nil)
	var wg sync.WaitGroup
	errs := make(chan string, 32)
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prompt := string(rune('a'+i%26)) + "xyz"
			code, b := e.post("/generate", `{"prompt":"`+prompt+`","max_tokens":40,"stream":true}`)
			var text strings.Builder
			for _, ev := range sseEvents(t, b) {
				text.WriteString(decode[map[string]any](t, []byte(ev))["text"].(string))
			}
			if want := strings.Repeat(prompt, 10); code != 200 || text.String() != want {
				errs <- text.String()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for s := range errs {
		t.Errorf("wrong stream text %q", s)
	}
}
