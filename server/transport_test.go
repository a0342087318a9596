package server_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmserve/llmserve/server"
	"github.com/llmserve/llmserve/server/servertest"
)

// newTransportEnv is newEnv on the server's own http.Server and listener
// (NewHTTPServer, Listener), so the transport bounds apply.
func newTransportEnv(t *testing.T, eng *servertest.Engine, mod func(*server.Options)) *env {
	t.Helper()
	if eng == nil {
		eng = &servertest.Engine{}
	}
	opts := server.Options{
		Engine:      eng,
		Tokenizer:   servertest.Tokenizer{},
		ModelNames:  []string{model},
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
	ts := httptest.NewUnstartedServer(srv.Handler())
	ts.Config = srv.NewHTTPServer()
	ts.Listener = srv.Listener(ts.Listener)
	ts.Start()
	t.Cleanup(ts.Close)
	return &env{t: t, srv: srv, ts: ts, eng: eng}
}

func (e *env) addr() string { return e.ts.Listener.Addr().String() }

// dial opens a raw TCP connection to the server.
func (e *env) dial() net.Conn {
	e.t.Helper()
	c, err := net.Dial("tcp", e.addr())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// rawRequest is an HTTP/1.1 request with a JSON body (none when empty).
func rawRequest(method, path, body string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: test\r\n", method, path)
	if body != "" {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	return b.String()
}

// roundTrip sends a request on c and reads the whole response.
func roundTrip(t *testing.T, c net.Conn, br *bufio.Reader, method, path, body string) (*http.Response, []byte) {
	t.Helper()
	if _, err := io.WriteString(c, rawRequest(method, path, body)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// waitClosed reads c until the server closes it (liveness bound, not timing).
func waitClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: the server did not close the connection", what)
	}
}

// settleGoroutines waits until the goroutine count is back to base.
func settleGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Issue 17 item 5: clients that stop reading held their admission slots
// forever. A stalled writer is cut after StreamWriteTimeout and its slot,
// engine request and KV blocks are freed; a new request is then admitted.
func TestStalledStreamsReleaseSlots(t *testing.T) {
	fe := &servertest.Engine{}
	e := newTransportEnv(t, fe, func(o *server.Options) {
		o.MaxConcurrentRequests = 4
		o.StreamWriteTimeout = 100 * time.Millisecond
		o.MaxModelLen = 1 << 30
	})
	// Endless streams of large events whose clients never read: the
	// socket buffers fill and the server's writes block.
	prompt := strings.Repeat("x", 512)
	body := fmt.Sprintf(`{"prompt":%q,"max_tokens":%d,"stream":true}`, prompt, 1<<29)
	var conns []net.Conn
	for _, path := range []string{"/v1/completions", "/v1/completions", "/generate", "/v1/completions"} {
		c := e.dial()
		if _, err := io.WriteString(c, rawRequest("POST", path, body)); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if err := fe.WaitSubmitted(ctxT(t), 4); err != nil {
		t.Fatal(err)
	}
	eventually(t, "stalled streams cut and their slots freed", func() bool {
		return fe.Aborted() == 4 && fe.Finished() == 4 && e.srv.Admitted() == 0
	})
	if fe.BlocksInUse() != 0 {
		t.Fatalf("%d KV blocks still held", fe.BlocksInUse())
	}
	if code, b := e.post("/v1/completions", `{"prompt":"ab","max_tokens":2}`); code != 200 {
		t.Fatalf("new request after the stalled ones: %d %s", code, b)
	}
	for i, c := range conns {
		waitClosed(t, c, fmt.Sprint("stalled connection ", i))
	}
}

// A client that reads slowly but steadily is never cut: the deadline is per
// write, not per response.
func TestSlowReaderNotCut(t *testing.T) {
	fe := &servertest.Engine{Hold: make(chan struct{})}
	e := newTransportEnv(t, fe, func(o *server.Options) { o.StreamWriteTimeout = 50 * time.Millisecond })
	done := e.postAsync(ctxT(t), "/v1/completions", `{"prompt":"abc","max_tokens":6,"stream":true}`)
	for range 6 {
		time.Sleep(75 * time.Millisecond) // longer than the write timeout between tokens
		fe.Hold <- struct{}{}
	}
	r := <-done
	if r.err != nil || r.code != 200 || !strings.HasSuffix(r.body, "data: [DONE]\n\n") || strings.Contains(r.body, `"error"`) {
		t.Fatalf("%+v", r)
	}
	if fe.Aborted() != 0 {
		t.Fatal("a stream to a reading client was aborted")
	}
}

// Issue 17 item 6: bodies sent a byte at a time are cut after
// BodyReadTimeout with a 408, and their goroutines end.
func TestSlowBodyCut(t *testing.T) {
	e := newTransportEnv(t, nil, func(o *server.Options) { o.BodyReadTimeout = 200 * time.Millisecond })
	base := runtime.NumGoroutine()
	const n = 30
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		c := e.dial()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			hdr := "POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
			if _, err := io.WriteString(c, hdr); err != nil {
				errs <- err
				return
			}
			stop := make(chan struct{})
			go func() { // a byte every 50 ms until the server answers
				for {
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
						if _, err := io.WriteString(c, " "); err != nil {
							return
						}
					}
				}
			}()
			defer close(stop)
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				errs <- err
				return
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), `"code":"request_timeout"`) {
				errs <- fmt.Errorf("status %d: %s", resp.StatusCode, b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	settleGoroutines(t, base)
	// A body that arrives in time is served, and so is a long response
	// after it: the read deadline ends with the body.
	if code, b := e.post("/v1/completions", `{"prompt":"abc","max_tokens":3}`); code != 200 {
		t.Fatalf("%d %s", code, b)
	}
}

// The body deadline does not reach the response phase: a stream that lasts
// longer than BodyReadTimeout is not cancelled.
func TestBodyTimeoutSparesLongStreams(t *testing.T) {
	fe := &servertest.Engine{Hold: make(chan struct{})}
	e := newTransportEnv(t, fe, func(o *server.Options) { o.BodyReadTimeout = 50 * time.Millisecond })
	done := e.postAsync(ctxT(t), "/v1/completions", `{"prompt":"abc","max_tokens":3,"stream":true}`)
	for range 3 {
		time.Sleep(60 * time.Millisecond)
		fe.Hold <- struct{}{}
	}
	if r := <-done; r.err != nil || r.code != 200 || !strings.HasSuffix(r.body, "data: [DONE]\n\n") || fe.Aborted() != 0 {
		t.Fatalf("%+v aborted=%d", r, fe.Aborted())
	}
}

// Issue 17 item 6: idle keep-alive connections are closed after IdleTimeout.
func TestIdleConnectionsReaped(t *testing.T) {
	e := newTransportEnv(t, nil, func(o *server.Options) { o.IdleTimeout = 100 * time.Millisecond })
	base := runtime.NumGoroutine()
	const n = 40
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = e.dial()
		if resp, b := roundTrip(t, conns[i], bufio.NewReader(conns[i]), "GET", "/health", ""); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
	}
	for i, c := range conns {
		waitClosed(t, c, fmt.Sprint("idle connection ", i))
		c.Close()
	}
	settleGoroutines(t, base)
}

// Issue 17 item 6: at the connection limit an idle keep-alive connection is
// closed to make room, so /health is still answered.
func TestConnectionLimitEvictsIdle(t *testing.T) {
	e := newTransportEnv(t, nil, func(o *server.Options) { o.MaxConnections = 8; o.ConnectionReserve = 2 })
	var conns []net.Conn
	for range 6 {
		c := e.dial()
		if resp, _ := roundTrip(t, c, bufio.NewReader(c), "GET", "/health", ""); resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
		conns = append(conns, c)
	}
	eventually(t, "6 idle connections", func() bool { st := e.srv.ConnStats(); return st.Open == 6 && st.Idle == 6 })
	for i := range 10 { // each new connection evicts the longest-idle one
		c := e.dial()
		if resp, b := roundTrip(t, c, bufio.NewReader(c), "GET", "/health", ""); resp.StatusCode != 200 {
			t.Fatalf("health on connection %d past the limit: %d %s", i, resp.StatusCode, b)
		}
		conns = append(conns, c)
	}
	st := e.srv.ConnStats()
	if st.Open > 8 || st.Evicted < 10 || st.Refused != 0 {
		t.Fatalf("%+v", st)
	}
	waitClosed(t, conns[0], "the longest-idle connection")
}

// Issue 17 item 6: when every normal connection is busy, the reserve still
// answers /health (and refuses generation), and past the limit with nothing
// idle a new connection is closed at once instead of hanging in the backlog.
func TestConnectionLimitReserve(t *testing.T) {
	fe := &servertest.Engine{Hold: make(chan struct{})}
	e := newTransportEnv(t, fe, func(o *server.Options) { o.MaxConnections = 8; o.ConnectionReserve = 2 })
	ctx := ctxT(t)
	var streams []net.Conn
	for range 6 {
		c := e.dial()
		if _, err := io.WriteString(c, rawRequest("POST", "/v1/completions", `{"prompt":"ab","max_tokens":2,"stream":true}`)); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, c)
	}
	if err := fe.WaitSubmitted(ctx, 6); err != nil {
		t.Fatal(err)
	}
	// A reserve connection: /health yes, generation no.
	r1 := e.dial()
	br := bufio.NewReader(r1)
	if resp, b := roundTrip(t, r1, br, "GET", "/health", ""); resp.StatusCode != 200 {
		t.Fatalf("health on a reserve connection: %d %s", resp.StatusCode, b)
	}
	resp, b := roundTrip(t, r1, br, "POST", "/v1/completions", `{"prompt":"ab"}`)
	if resp.StatusCode != 503 || !resp.Close || decode[apiErr](t, b).Error.Code != "too_many_connections" {
		t.Fatalf("generation on a reserve connection: %d close=%v %s", resp.StatusCode, resp.Close, b)
	}
	r1.Close()
	eventually(t, "the refused generation's connection closed", func() bool { return e.srv.ConnStats().Open == 6 })
	// Fill the reserve with connections that send nothing yet (not idle).
	for range 2 {
		e.dial()
	}
	eventually(t, "8 open", func() bool { return e.srv.ConnStats().Open == 8 })
	refused := e.dial()
	waitClosed(t, refused, "a connection past the limit")
	if st := e.srv.ConnStats(); st.Refused != 1 || st.Open != 8 {
		t.Fatalf("%+v", st)
	}
	close(fe.Hold)
	for i, c := range streams {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.HasSuffix(string(b), "data: [DONE]\n\n") {
			t.Fatalf("stream %d: %d %s", i, resp.StatusCode, b)
		}
	}
}

// streamError returns the error object of an SSE stream's error event.
func streamError(t *testing.T, events []string) *apiErr {
	t.Helper()
	for _, ev := range events {
		if strings.HasPrefix(ev, `{"error"`) {
			var ae apiErr
			if err := json.Unmarshal([]byte(ev), &ae); err != nil {
				t.Fatal(err)
			}
			return &ae
		}
	}
	return nil
}
