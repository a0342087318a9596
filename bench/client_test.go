package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeServer answers every endpoint shape with delays the prompt names:
// "ttft=MS itl=MS n=TOKENS" (missing fields default to 0, 0, 4). Every
// reject-th request (1-based, 0 = never) gets a 429.
type fakeServer struct {
	hits   atomic.Int64
	reject int64
	// usage: whether to report token counts (exercises the fallbacks).
	usage bool
}

type fakeSpec struct {
	ttft, itl time.Duration
	n         int
}

func parseSpec(prompt string) fakeSpec {
	s := fakeSpec{n: 4}
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

func (f *fakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		fmt.Fprint(w, `{"status":"ok","model":"fake","weights_bytes":1073741824,"kv_cache_capacity_tokens":4096}`)
		return
	}
	if r.URL.Path == "/v1/models" {
		fmt.Fprint(w, `{"object":"list","data":[{"id":"fake-model","object":"model"}]}`)
		return
	}
	hit := f.hits.Add(1)
	if f.reject > 0 && hit%f.reject == 0 {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprint(w, `{"error":{"message":"overloaded","type":"overloaded","code":429}}`)
		return
	}
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
			if f.usage {
				body["prompt_tokens"], body["completion_tokens"] = 3, completion
			}
		case "completions":
			body = map[string]any{"choices": []any{map[string]any{"text": text, "finish_reason": "length"}}}
		case "chat":
			body = map[string]any{"choices": []any{map[string]any{"message": map[string]any{"role": "assistant", "content": text}, "finish_reason": "length"}}}
		}
		if kind != "generate" && f.usage {
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
				if f.usage {
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
	if kind != "generate" && f.usage && req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		send(map[string]any{"choices": []any{}, "usage": map[string]any{"prompt_tokens": 3, "completion_tokens": completion}})
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	fl.Flush()
}

// slack bounds how late the client may see an event the fake server sent
// after a known delay: scheduling on a busy machine, never speed.
const slack = 60 * time.Millisecond

func within(t *testing.T, what string, got, lo, hi float64) {
	t.Helper()
	if got < lo || got > hi {
		t.Errorf("%s = %.2f, want in [%.2f, %.2f]", what, got, lo, hi)
	}
}

func TestClientShapes(t *testing.T) {
	for _, ep := range []Endpoint{EndpointGenerate, EndpointCompletions, EndpointChat} {
		for _, stream := range []bool{true, false} {
			for _, usage := range []bool{true, false} {
				name := fmt.Sprintf("%s/stream=%v/usage=%v", ep, stream, usage)
				t.Run(name, func(t *testing.T) {
					fs := &fakeServer{usage: usage}
					srv := httptest.NewServer(fs)
					defer srv.Close()
					c, err := NewClient(ClientOptions{URL: srv.URL, Endpoint: ep, Stream: stream, Model: "m"})
					if err != nil {
						t.Fatal(err)
					}
					r := c.Do(context.Background(), Item{Prompt: "ttft=30 itl=10 n=5", MaxTokens: 5, PromptTokens: 9})
					if !r.OK {
						t.Fatalf("not OK: %+v", r)
					}
					if r.FinishReason != "length" {
						t.Errorf("finish %q", r.FinishReason)
					}
					switch {
					case usage:
						if r.OutputTokens != 10 || !r.OutputFromServer || r.PromptTokens != 3 {
							t.Errorf("usage: out %d server %v prompt %d", r.OutputTokens, r.OutputFromServer, r.PromptTokens)
						}
					case stream:
						if r.OutputTokens != 5 || r.OutputFromServer || r.PromptTokens != 9 {
							t.Errorf("counted: out %d server %v prompt %d", r.OutputTokens, r.OutputFromServer, r.PromptTokens)
						}
					default:
						if r.OutputTokens != EstimateTokens(strings.Repeat("tok ", 5)) {
							t.Errorf("estimated: out %d", r.OutputTokens)
						}
					}
					e2e := ms(r.Latency)
					within(t, "e2e ms", e2e, 70, 70+ms(slack))
					switch {
					case stream:
						within(t, "ttft ms", ms(r.TTFT), 30, 30+ms(slack))
						if len(r.ITL) != 4 {
							t.Fatalf("ITL count %d want 4", len(r.ITL))
						}
					case ep == EndpointGenerate:
						// Non-streamed: TTFT is the server's ttft_ms.
						within(t, "server ttft ms", ms(r.TTFT), 30, 30+ms(slack))
					default:
						if r.TTFT != 0 || len(r.ITL) != 0 {
							t.Errorf("non-stream OpenAI should have no TTFT: %v", r.TTFT)
						}
					}
				})
			}
		}
	}
}

func TestPercentilesFromKnownDelays(t *testing.T) {
	fs := &fakeServer{usage: true}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	c, err := NewClient(ClientOptions{URL: srv.URL + "/generate", Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	// Ten requests with TTFTs of 20..200 ms and 5 ms token gaps.
	var items List
	var ttfts []float64
	for i := 1; i <= 10; i++ {
		items = append(items, Item{Prompt: fmt.Sprintf("ttft=%d itl=5 n=3", 20*i), MaxTokens: 3})
		ttfts = append(ttfts, float64(20*i))
	}
	lr, res, err := RunLevel(context.Background(), c, items, Level{Concurrency: 2}, RunOptions{Requests: 10})
	if err != nil {
		t.Fatal(err)
	}
	if lr.Successes != 10 || len(res) != 10 || fs.hits.Load() != 10 {
		t.Fatalf("successes %d results %d hits %d", lr.Successes, len(res), fs.hits.Load())
	}
	// Each measured TTFT lies in [known, known+slack], so every order
	// statistic, and so every interpolated percentile, does too.
	want := Summarize(ttfts)
	for _, p := range []struct {
		name      string
		got, want float64
	}{{"p50", lr.TTFTms.P50, want.P50}, {"p90", lr.TTFTms.P90, want.P90}, {"p95", lr.TTFTms.P95, want.P95},
		{"p99", lr.TTFTms.P99, want.P99}, {"max", lr.TTFTms.Max, want.Max}, {"mean", lr.TTFTms.Mean, want.Mean}} {
		within(t, "ttft "+p.name, p.got, p.want, p.want+ms(slack))
	}
	if lr.TotalOutputTokens != 60 || lr.ITLms.Count != 20 || lr.TPOTms.Count != 10 {
		t.Errorf("tokens %d itl %d tpot %d", lr.TotalOutputTokens, lr.ITLms.Count, lr.TPOTms.Count)
	}
	// Two clients over 10 requests: the busier one serves at least 1.1 s
	// of server time, so duration is bounded below by known delays alone.
	within(t, "request throughput", lr.RequestThroughput, 10/(1.1+10*ms(slack)/1000), 10/0.55)
	if !near(lr.OutputThroughput, float64(lr.TotalOutputTokens)/lr.DurationS, 1e-9) ||
		!near(lr.TotalTokenThroughput, float64(lr.TotalOutputTokens+lr.TotalInputTokens)/lr.DurationS, 1e-9) {
		t.Error("throughputs inconsistent with totals and duration")
	}
}

func TestClosedLoopThroughput(t *testing.T) {
	fs := &fakeServer{usage: true}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	c, err := NewClient(ClientOptions{URL: srv.URL + "/v1/completions", Model: "m"})
	if err != nil {
		t.Fatal(err)
	}
	// Every request takes 50 ms in the server; 4 clients, 16 requests:
	// at least 4 rounds, 200 ms, so at most 80 req/s.
	lr, _, err := RunLevel(context.Background(), c, Fixed{Prompt: "ttft=50 n=1", MaxTokens: 1},
		Level{Concurrency: 4}, RunOptions{Requests: 16})
	if err != nil {
		t.Fatal(err)
	}
	within(t, "req/s", lr.RequestThroughput, 16/(0.2+4*ms(slack)/1000), 80)
	within(t, "out tok/s", lr.OutputThroughput, 2*16/(0.2+4*ms(slack)/1000), 160)
	within(t, "e2e p50", lr.E2Ems.P50, 50, 50+ms(slack))
}

func TestRejectionsCountedNotRetried(t *testing.T) {
	fs := &fakeServer{reject: 3, usage: true}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	c, err := NewClient(ClientOptions{URL: srv.URL + "/v1/chat/completions", Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	lr, _, err := RunLevel(context.Background(), c, Fixed{Prompt: "n=2", MaxTokens: 2},
		Level{Concurrency: 3}, RunOptions{Requests: 30})
	if err != nil {
		t.Fatal(err)
	}
	if fs.hits.Load() != 30 {
		t.Errorf("server saw %d requests, want 30 (no retries)", fs.hits.Load())
	}
	if lr.Rejected429 != 10 || lr.Successes != 20 || lr.Failures != 0 {
		t.Errorf("429 %d ok %d failed %d", lr.Rejected429, lr.Successes, lr.Failures)
	}
}

func TestOpenLoopFollowsArrivals(t *testing.T) {
	fs := &fakeServer{usage: true}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	c, err := NewClient(ClientOptions{URL: srv.URL + "/generate", Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	const n, rate, seed = 40, 200.0, 7
	level := Level{RequestRate: rate, Burstiness: 1}
	t0 := time.Now()
	lr, res, err := RunLevel(context.Background(), c, Fixed{Prompt: "n=2"}, level, RunOptions{Requests: n, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	if lr.Successes != n {
		t.Fatalf("successes %d", lr.Successes)
	}
	// The i-th request is never sent before its scheduled arrival; results
	// arrive in completion order, so compare sorted send times.
	a := NewArrivals(rate, 1, seed)
	var sched []time.Duration
	at := time.Duration(0)
	for i := range n {
		if i > 0 {
			at += a.Next()
		}
		sched = append(sched, at)
	}
	var sent []time.Duration
	for _, r := range res {
		sent = append(sent, r.Start.Sub(t0))
	}
	sortDurations(sent)
	for i := range sent {
		if sent[i] < sched[i] {
			t.Fatalf("request %d sent at %v before its arrival %v", i, sent[i], sched[i])
		}
	}
}

func sortDurations(d []time.Duration) {
	for i := 1; i < len(d); i++ {
		for j := i; j > 0 && d[j] < d[j-1]; j-- {
			d[j], d[j-1] = d[j-1], d[j]
		}
	}
}

func TestDurationBoundLevel(t *testing.T) {
	fs := &fakeServer{usage: true}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	c, _ := NewClient(ClientOptions{URL: srv.URL, Stream: true})
	lr, _, err := RunLevel(context.Background(), c, Fixed{Prompt: "ttft=20 n=1"}, Level{Concurrency: 2},
		RunOptions{Duration: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// 2 clients, >= 20 ms each, for 200 ms: at most 2*(200/20+1) requests.
	if lr.Successes < 2 || lr.Successes > 22 {
		t.Errorf("successes %d", lr.Successes)
	}
}

func TestURLAndEndpoint(t *testing.T) {
	for _, tc := range []struct {
		url, ep, wantURL, wantBase string
	}{
		{"http://h:8000/generate", "", "http://h:8000/generate", "http://h:8000"},
		{"http://h:8000", "", "http://h:8000/generate", "http://h:8000"},
		{"http://h:8000/v1/chat/completions", "", "http://h:8000/v1/chat/completions", "http://h:8000"},
		{"http://h:8000/v1/completions/", "", "http://h:8000/v1/completions", "http://h:8000"},
		{"http://h:8000/generate", "chat", "http://h:8000/v1/chat/completions", "http://h:8000"},
		{"http://h/proxy/v1/completions", "", "http://h/proxy/v1/completions", "http://h/proxy"},
	} {
		var ep Endpoint
		if tc.ep != "" {
			ep = Endpoint(tc.ep)
		}
		c, err := NewClient(ClientOptions{URL: tc.url, Endpoint: ep})
		if err != nil {
			t.Fatal(err)
		}
		if c.URL() != tc.wantURL || c.BaseURL() != tc.wantBase {
			t.Errorf("%s %s: url %s base %s", tc.url, tc.ep, c.URL(), c.BaseURL())
		}
	}
	if _, err := NewClient(ClientOptions{URL: "localhost:8000"}); err == nil {
		t.Error("want error for URL without scheme")
	}
	if _, err := ParseEndpoint("grpc"); err == nil {
		t.Error("want error for unknown endpoint")
	}
}

func TestReadSSE(t *testing.T) {
	in := ": comment\n" +
		"event: message\ndata: {\"a\":1}\n\n" +
		"data: {\"b\":\ndata: 2}\n\n" + // multi-line data
		"data: {\"c\":3}\n" + // no blank line before the next event
		"data: {\"d\":4}\n\n" +
		"data:[DONE]\n\n" +
		"data: {\"never\":1}\n\n"
	var got []string
	err := ReadSSE(strings.NewReader(in), func(d []byte) bool {
		got = append(got, string(d))
		return string(d) != "[DONE]"
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`{"a":1}`, "{\"b\":\n2}", `{"c":3}`, `{"d":4}`, "[DONE]"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %q want %q", got, want)
	}
}

func TestErrorBodies(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":{"message":"prompt too long","type":"invalid_request_error"}}`)
	}))
	defer srv.Close()
	c, _ := NewClient(ClientOptions{URL: srv.URL})
	r := c.Do(context.Background(), Item{Prompt: "x"})
	if r.OK || r.Rejected || r.StatusCode != 400 || r.Err != "HTTP 400: prompt too long" {
		t.Fatalf("%+v", r)
	}
}

func TestTimeout(t *testing.T) {
	fs := &fakeServer{}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	c, _ := NewClient(ClientOptions{URL: srv.URL, Stream: true, Timeout: 30 * time.Millisecond})
	r := c.Do(context.Background(), Item{Prompt: "ttft=300 n=1"})
	if r.OK || r.Err != "timeout" {
		t.Fatalf("%+v", r)
	}
}
