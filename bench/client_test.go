package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmserve/llmserve/bench/benchtest"
)

// slack bounds how late the client may see an event the fake server sent
// after a known delay. The lower bounds (never before the known delay) are
// the property; the upper ones only catch gross mis-measurement (timing
// from the wrong start, counting a retry), since on a shared 2-core machine
// under load goroutine scheduling alone has delayed events by over a
// second.
const slack = 2 * time.Second

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
					fs := &benchtest.Server{Usage: usage}
					srv := httptest.NewServer(fs)
					defer srv.Close()
					c, err := NewClient(ClientOptions{URL: srv.URL, Endpoint: ep, Stream: stream, Model: "m"})
					if err != nil {
						t.Fatal(err)
					}
					r := c.Do(context.Background(), Item{Prompt: "ttft=160 itl=40 n=5", MaxTokens: 5, PromptTokens: 9})
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
					within(t, "e2e ms", e2e, 320, 320+ms(slack))
					switch {
					case stream:
						within(t, "ttft ms", ms(r.TTFT), 160, 160+ms(slack))
						if len(r.ITL) != 4 {
							t.Fatalf("ITL count %d want 4", len(r.ITL))
						}
					case ep == EndpointGenerate:
						// Non-streamed: TTFT is the server's ttft_ms.
						within(t, "server ttft ms", ms(r.TTFT), 160, 160+ms(slack))
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
	fs := &benchtest.Server{Usage: true}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	c, err := NewClient(ClientOptions{URL: srv.URL + "/generate", Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	// Ten requests with TTFTs of 50..500 ms and 5 ms token gaps.
	var items List
	var ttfts []float64
	for i := 1; i <= 10; i++ {
		items = append(items, Item{Prompt: fmt.Sprintf("ttft=%d itl=5 n=3", 50*i), MaxTokens: 3})
		ttfts = append(ttfts, float64(50*i))
	}
	lr, res, err := RunLevel(context.Background(), c, items, Level{Concurrency: 2}, RunOptions{Requests: 10})
	if err != nil {
		t.Fatal(err)
	}
	if lr.Successes != 10 || len(res) != 10 || fs.Hits() != 10 {
		t.Fatalf("successes %d results %d hits %d", lr.Successes, len(res), fs.Hits())
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
	// Two clients share 2.75 s of server time (plus 10 ms of token gaps
	// each request), so the level lasts at least half of it; at most all
	// of it plus each request's slack.
	within(t, "request throughput", lr.RequestThroughput, 10/(2.85+10*ms(slack)/1000), 10/1.425)
	if !near(lr.OutputThroughput, float64(lr.TotalOutputTokens)/lr.DurationS, 1e-9) ||
		!near(lr.TotalTokenThroughput, float64(lr.TotalOutputTokens+lr.TotalInputTokens)/lr.DurationS, 1e-9) {
		t.Error("throughputs inconsistent with totals and duration")
	}
}

func TestClosedLoopThroughput(t *testing.T) {
	fs := &benchtest.Server{Usage: true}
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
	fs := &benchtest.Server{Reject: 3, Usage: true}
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
	if fs.Hits() != 30 {
		t.Errorf("server saw %d requests, want 30 (no retries)", fs.Hits())
	}
	if lr.Rejected429 != 10 || lr.Successes != 20 || lr.Failures != 0 {
		t.Errorf("429 %d ok %d failed %d", lr.Rejected429, lr.Successes, lr.Failures)
	}
}

func TestOpenLoopFollowsArrivals(t *testing.T) {
	fs := &benchtest.Server{Usage: true}
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
	fs := &benchtest.Server{Usage: true}
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
	fs := &benchtest.Server{}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	c, _ := NewClient(ClientOptions{URL: srv.URL, Stream: true, Timeout: 30 * time.Millisecond})
	r := c.Do(context.Background(), Item{Prompt: "ttft=300 n=1"})
	if r.OK || r.Err != "timeout" {
		t.Fatalf("%+v", r)
	}
}

// TestClientJSONSchema: with a schema, every completions or chat request
// carries it as a strict response_format json_schema; /generate, which
// has no such field, is refused up front, as is a schema that is not JSON.
func TestClientJSONSchema(t *testing.T) {
	schema := json.RawMessage(`{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}`)
	for _, ep := range []Endpoint{EndpointCompletions, EndpointChat} {
		var got map[string]any
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
				t.Error(err)
			}
			http.Error(w, `{"error":{"message":"stop here"}}`, http.StatusBadRequest)
		}))
		c, err := NewClient(ClientOptions{URL: srv.URL, Endpoint: ep, Model: "m", JSONSchema: schema})
		if err != nil {
			t.Fatal(err)
		}
		c.Do(context.Background(), Item{Prompt: "p", MaxTokens: 5})
		srv.Close()
		rf, _ := json.Marshal(got["response_format"])
		want := `{"json_schema":{"name":"loadgen","schema":{"properties":{"a":{"type":"integer"}},"required":["a"],"type":"object"},"strict":true},"type":"json_schema"}`
		if string(rf) != want {
			t.Errorf("%s: response_format %s, want %s", ep, rf, want)
		}
	}
	if _, err := NewClient(ClientOptions{URL: "http://x", Endpoint: EndpointGenerate, JSONSchema: schema}); err == nil {
		t.Error("a schema on /generate was accepted")
	}
	if _, err := NewClient(ClientOptions{URL: "http://x", Endpoint: EndpointChat, JSONSchema: json.RawMessage(`{"type":`)}); err == nil {
		t.Error("a schema that is not JSON was accepted")
	}
}
