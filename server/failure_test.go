package server_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/server"
	"github.com/llmserve/llmserve/server/servertest"
)

// Issue 17 item 9: when the drain deadline passes, EndInFlight ends every
// admitted request cleanly: streams get an error event and [DONE] (not a
// connection cut mid-chunk), a request not yet answered gets a 503, and the
// engine requests are aborted.
func TestEndInFlight(t *testing.T) {
	fe := &servertest.Engine{Hold: make(chan struct{})}
	e := newTransportEnv(t, fe, func(o *server.Options) { o.MaxModelLen = 1 << 20 })
	ctx := ctxT(t)
	// Far more tokens than generated before EndInFlight.
	streams := []struct{ path, body string }{
		{"/v1/completions", `{"prompt":"abc","max_tokens":100000,"stream":true,"stream_options":{"include_usage":true}}`},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":100000,"stream":true}`},
		{"/generate", `{"prompt":"abc","max_tokens":100000,"stream":true}`},
	}
	type res struct {
		code int
		body string
		err  error
	}
	results := make([]chan res, len(streams))
	started := make(chan struct{}, len(streams))
	for i, st := range streams {
		results[i] = make(chan res, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "POST", e.ts.URL+st.path, strings.NewReader(st.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				results[i] <- res{err: err}
				return
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			first, err := br.ReadString('\n') // the stream has started
			started <- struct{}{}
			var rest strings.Builder
			if err == nil {
				_, err = br.WriteTo(&rest)
			}
			results[i] <- res{code: resp.StatusCode, body: first + rest.String(), err: err}
		}()
	}
	nonStream := e.postAsync(ctx, "/v1/completions", `{"prompt":"abc","max_tokens":100000}`)
	if err := fe.WaitSubmitted(ctx, len(streams)+1); err != nil {
		t.Fatal(err)
	}
	// Generate until every stream has sent its first event.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case fe.Hold <- struct{}{}:
			case <-stop:
				return
			}
		}
	}()
	for range streams {
		<-started
	}
	close(stop)
	wg.Wait()

	e.srv.Drain()
	e.srv.EndInFlight()
	for i, ch := range results {
		r := <-ch
		if r.err != nil || r.code != 200 {
			t.Fatalf("%s: %+v", streams[i].path, r)
		}
		events := sseEvents(t, []byte(r.body))
		ae := streamError(t, events)
		if ae == nil || ae.Error.Code != "draining" || ae.Error.Type != "service_unavailable_error" {
			t.Fatalf("%s: no draining error event:\n%s", streams[i].path, r.body)
		}
		if !strings.HasPrefix(events[len(events)-1], `{"error"`) || strings.Contains(r.body, `"abort"`) || strings.Contains(r.body, `"usage"`) {
			t.Fatalf("%s: the error event must end the stream, with no abort finish or usage:\n%s", streams[i].path, r.body)
		}
	}
	r := <-nonStream
	if r.err != nil || r.code != 503 || decode[apiErr](t, []byte(r.body)).Error.Code != "draining" {
		t.Fatalf("non-streaming: %+v", r)
	}
	if err := e.srv.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "engine requests aborted", func() bool { return fe.Aborted() == 4 && fe.BlocksInUse() == 0 })
}

// A request that completed before EndInFlight is answered in full.
func TestEndInFlightSparesFinished(t *testing.T) {
	e := newTransportEnv(t, nil, nil)
	e.srv.EndInFlight() // every later call's context is cancelled at once
	// Drain was not called, so new requests are still admitted: one that
	// the engine finishes before it sees the cancellation is a success,
	// else it is a clean 503; never a cut or an empty 200.
	for range 20 {
		code, b := e.post("/v1/completions", `{"prompt":"abc","max_tokens":1}`)
		switch {
		case code == 200 && strings.Contains(string(b), `"finish_reason":"length"`):
		case code == 503 && decode[apiErr](t, b).Error.Code == "draining":
		default:
			t.Fatalf("%d %s", code, b)
		}
	}
}

// Issue 17 item 10: a failed engine step is an error, not a 200 with
// finish_reason "abort": 500 before the first byte, an error event in a
// stream that has started.
func TestEngineStepFailure(t *testing.T) {
	boom := fmt.Errorf("%w: CUDA_ERROR_OUT_OF_MEMORY", engine.ErrStepFailed)
	t.Run("before the first token", func(t *testing.T) {
		e := newEnv(t, &servertest.Engine{Err: boom}, nil)
		for _, body := range []string{`{"prompt":"abc","max_tokens":5}`, `{"prompt":"abc","max_tokens":5,"stream":true}`} {
			code, b, h := e.do("POST", "/v1/completions", body)
			if ae := decode[apiErr](t, b); code != 500 || ae.Error.Code != "engine_error" || ae.Error.Type != "server_error" || h.Get("Content-Type") != "application/json" {
				t.Fatalf("%s: %d %s", body, code, b)
			}
		}
	})
	t.Run("mid-stream", func(t *testing.T) {
		fe := &servertest.Engine{Err: boom, ErrAfter: 3}
		e := newEnv(t, fe, nil)
		for _, path := range []string{"/v1/completions", "/generate"} {
			code, b := e.post(path, `{"prompt":"abcdef","max_tokens":10,"stream":true}`)
			if code != 200 {
				t.Fatalf("%s: %d %s", path, code, b)
			}
			events := sseEvents(t, b)
			ae := streamError(t, events)
			if ae == nil || ae.Error.Code != "engine_error" || !strings.HasPrefix(events[len(events)-1], `{"error"`) || strings.Contains(string(b), `"abort"`) {
				t.Fatalf("%s: %s", path, b)
			}
			if got := streamText(t, events); got != "abc" {
				t.Fatalf("%s: text before the failure %q, want abc: %s", path, got, b)
			}
		}
		// Not streaming: no byte was sent yet, so a plain 500.
		code, b := e.post("/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":10}`)
		if code != 500 || decode[apiErr](t, b).Error.Code != "engine_error" {
			t.Fatalf("%d %s", code, b)
		}
		// n > 1: one failing sequence fails the request.
		code, b = e.post("/v1/completions", `{"prompt":["abcdef","ghijkl"],"max_tokens":10}`)
		if code != 500 {
			t.Fatalf("%d %s", code, b)
		}
		eventually(t, "slots released", func() bool { return e.srv.Admitted() == 0 })
	})
}

// Issue 17 item 10: an engine that reports itself unhealthy (a sticky device
// error) makes /health answer 503 so an orchestrator restarts the server,
// and new requests get a 503 instead of garbage.
func TestUnhealthyEngine(t *testing.T) {
	fe := &servertest.Engine{}
	e := newEnv(t, fe, nil)
	if code, _, _ := e.do("GET", "/health", ""); code != 200 {
		t.Fatal(code)
	}
	fe.SetUnhealthy(fmt.Errorf("%w: cuLaunchKernel: CUDA_ERROR_ILLEGAL_ADDRESS", engine.ErrUnhealthy))
	code, b, _ := e.do("GET", "/health", "")
	h := decode[server.HealthResponse](t, b)
	if code != 503 || h.Status != "unhealthy" || !strings.Contains(h.Error, "ILLEGAL_ADDRESS") {
		t.Fatalf("%d %s", code, b)
	}
	for _, body := range []string{`{"prompt":"abc"}`, `{"prompt":"abc","stream":true}`} {
		code, b := e.post("/v1/completions", body)
		if code != 503 || decode[apiErr](t, b).Error.Code != "unhealthy" {
			t.Fatalf("%d %s", code, b)
		}
	}
	if fe.Submitted() != 0 {
		t.Fatal("a request reached the unhealthy engine")
	}
	if !errors.Is(fe.Health(), engine.ErrUnhealthy) {
		t.Fatal("fake")
	}
}

// streamText joins the text of /generate or completion stream events.
func streamText(t *testing.T, events []string) string {
	t.Helper()
	var out strings.Builder
	for _, ev := range events {
		var v struct {
			Text    string `json:"text"`
			Choices []struct {
				Text string `json:"text"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(ev), &v); err != nil {
			t.Fatal(err)
		}
		out.WriteString(v.Text)
		for _, c := range v.Choices {
			out.WriteString(c.Text)
		}
	}
	return out.String()
}
