package server_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/server"
	"github.com/llmserve/llmserve/server/servertest"
)

// instantEngine emits every token at once (one Output per token, as a real
// engine's steps do) and stamps when each was handed over, so the client
// can measure what the server adds between the engine and the socket.
type instantEngine struct {
	emitted sync.Map // request id -> []atomic.Int64 (unix ns per token)
	// step, when set, paces all requests like a batched engine: one token
	// for every running sequence per step (a burst of writes each step).
	step *stepper
}

// stepper broadcasts engine steps.
type stepper struct {
	mu   sync.Mutex
	next chan struct{}
	stop chan struct{}
}

func newStepper(every time.Duration) *stepper {
	s := &stepper{next: make(chan struct{}), stop: make(chan struct{})}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			s.mu.Lock()
			close(s.next)
			s.next = make(chan struct{})
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *stepper) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next
}

var tokText = [26]string{}

func init() {
	for i := range tokText {
		tokText[i] = string(rune('a' + i))
	}
}

func (e *instantEngine) Stats() engine.Stats { return engine.Stats{} }

func (e *instantEngine) Submit(ctx context.Context, req *engine.Request) (<-chan engine.Output, error) {
	n := req.Params.MaxTokens
	stamps := make([]atomic.Int64, n)
	e.emitted.Store(req.ID, stamps)
	ch := make(chan engine.Output, 16)
	go func() {
		defer close(ch)
		arrival := time.Now()
		ids := []int{int('a')}
		for i := range n {
			if e.step != nil {
				select {
				case <-e.step.wait():
				case <-ctx.Done():
				}
			}
			o := engine.Output{RequestID: req.ID, Text: tokText[i%26], TokenIDs: ids, PromptTokens: len(req.PromptIDs),
				CompletionTokens: i + 1, ArrivalTime: arrival, ScheduledTime: arrival}
			if i == n-1 {
				o.FinishReason = engine.FinishLength
			}
			now := time.Now()
			o.Time, o.FirstToken = now, arrival
			stamps[i].Store(now.UnixNano())
			select {
			case ch <- o:
			case <-ctx.Done():
				ch <- engine.Output{RequestID: req.ID, FinishReason: engine.FinishAbort}
				return
			}
		}
	}()
	return ch, nil
}

// stampWriter measures the server side alone: when a flush of the
// handler's writes returns (the bytes are in the kernel), each token in them
// gets its latency since the engine handed it over.
type stampWriter struct {
	http.ResponseWriter
	eng    *instantEngine
	stamps []atomic.Int64
	buf    []byte
	got    int
	lat    []time.Duration
	sink   func([]time.Duration)
}

func (s *stampWriter) Write(b []byte) (int, error) {
	s.buf = append(s.buf, b...)
	return s.ResponseWriter.Write(b)
}

func (s *stampWriter) Flush() {
	s.ResponseWriter.(http.Flusher).Flush()
	now := time.Now().UnixNano()
	if s.stamps == nil {
		if v, ok := s.eng.emitted.Load(s.Header().Get("X-Request-Id")); ok {
			s.stamps = v.([]atomic.Int64)
		}
	}
	key := []byte(`"text":"`)
	if bytes.Contains(s.buf, []byte(`"delta":`)) {
		key = []byte(`"content":"`)
	}
	for b := s.buf; s.stamps != nil; {
		i := bytes.Index(b, key)
		if i < 0 {
			break
		}
		b = b[i+len(key):]
		n := bytes.IndexByte(b, '"')
		for k := 0; k < n && s.got < len(s.stamps); k++ {
			s.lat = append(s.lat, time.Duration(now-s.stamps[s.got].Load()))
			s.got++
		}
	}
	s.buf = s.buf[:0]
}

// benchStats are one client's measurements.
type benchStats struct {
	tokens, events int
	tokenLat       []time.Duration // engine hand-over -> client read, per token
	ttft           []time.Duration // request sent -> first token read
}

// streamOnce runs one streaming request and reads it like a client.
func streamOnce(client *http.Client, url, body string, eng *instantEngine, st *benchStats) error {
	start := time.Now()
	resp, err := client.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	var stamps []atomic.Int64
	got := 0
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("after %d tokens: %w", got, err)
		}
		data, ok := bytes.CutPrefix(line, []byte("data: "))
		if !ok {
			continue
		}
		now := time.Now()
		if bytes.HasPrefix(data, []byte("[DONE]")) {
			return nil
		}
		if stamps == nil {
			id := resp.Header.Get("X-Request-Id")
			v, ok := eng.emitted.Load(id)
			if !ok {
				return fmt.Errorf("unknown request id %q", id)
			}
			stamps = v.([]atomic.Int64)
		}
		text := between(data, `"text":"`, `"`)
		if text == nil {
			text = between(data, `"content":"`, `"`)
		}
		if len(text) == 0 {
			continue // role chunk or finish-only chunk
		}
		if got == 0 {
			st.ttft = append(st.ttft, now.Sub(start))
		}
		st.events++
		for range text { // one byte per token
			st.tokenLat = append(st.tokenLat, time.Duration(now.UnixNano()-stamps[got].Load()))
			got++
		}
		st.tokens += len(text)
	}
}

func between(b []byte, open, close string) []byte {
	i := bytes.Index(b, []byte(open))
	if i < 0 {
		return nil
	}
	b = b[i+len(open):]
	j := bytes.Index(b, []byte(close))
	if j < 0 {
		return nil
	}
	return b[:j]
}

func pct(xs []time.Duration, p float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	i := int(p*float64(len(xs))+0.5) - 1
	return xs[max(0, min(i, len(xs)-1))]
}

// BenchmarkStreamOverhead: 256 concurrent streaming clients (in the same
// process, sharing the CPU) against an engine that emits tokens instantly
// (throughput: the server saturates the machine, deltas coalesce), and one
// that steps every 10 ms (latency). One op is one token delivered. Reports
// tokens/s read by the clients, SSE events/s, the per-token latency the
// server adds (engine hand-over to client read) and client TTFT, p50/p99.
func BenchmarkStreamOverhead(b *testing.B) {
	for _, ep := range []struct{ name, path, body string }{
		{"completions", "/v1/completions", `{"prompt":"abcd","max_tokens":%d,"stream":true}`},
		{"chat", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":%d,"stream":true}`},
		{"generate", "/generate", `{"prompt":"abcd","max_tokens":%d,"stream":true}`},
	} {
		b.Run(ep.name+"/instant/conc=256", func(b *testing.B) { benchStream(b, ep.path, ep.body, 256, 128, 0) })
	}
	// Latency at a realistic rate: 256 streams, one token each per 10 ms
	// engine step (25,600 tokens/s in bursts of 256).
	b.Run("completions/step=10ms/conc=256", func(b *testing.B) {
		benchStream(b, "/v1/completions", `{"prompt":"abcd","max_tokens":%d,"stream":true}`, 256, 64, 10*time.Millisecond)
	})
}

func benchStream(b *testing.B, path, bodyFmt string, conc, perReq int, step time.Duration) {
	eng := &instantEngine{}
	if step > 0 {
		eng.step = newStepper(step)
		defer close(eng.step.stop)
	}
	srv, err := server.New(server.Options{Engine: eng, Tokenizer: servertest.Tokenizer{}, ModelNames: []string{"m"},
		MaxModelLen: 4096, VocabSize: servertest.VocabSize, MaxConcurrentRequests: conc})
	if err != nil {
		b.Fatal(err)
	}
	var serverLat []time.Duration
	var latMu sync.Mutex
	measuring := atomic.Bool{}
	h := srv.Handler()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &stampWriter{ResponseWriter: w, eng: eng}
		h.ServeHTTP(sw, r)
		if measuring.Load() {
			latMu.Lock()
			serverLat = append(serverLat, sw.lat...)
			latMu.Unlock()
		}
	}))
	defer ts.Close()
	tr := &http.Transport{MaxIdleConns: conc, MaxIdleConnsPerHost: conc, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	body := fmt.Sprintf(bodyFmt, perReq)
	url := ts.URL + path
	// Warm the connections.
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() { defer wg.Done(); _ = streamOnce(client, url, body, eng, &benchStats{}) }()
	}
	wg.Wait()

	var budget atomic.Int64
	budget.Store(int64(b.N))
	stats := make([]benchStats, conc)
	errs := make(chan error, conc)
	b.ReportAllocs()
	measuring.Store(true)
	b.ResetTimer()
	start := time.Now()
	for c := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for budget.Add(-int64(perReq)) > -int64(perReq) {
				if err := streamOnce(client, url, body, eng, &stats[c]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	var all benchStats
	for _, s := range stats {
		all.tokens += s.tokens
		all.events += s.events
		all.tokenLat = append(all.tokenLat, s.tokenLat...)
		all.ttft = append(all.ttft, s.ttft...)
	}
	if all.tokens == 0 {
		return
	}
	b.ReportMetric(float64(all.tokens)/elapsed.Seconds(), "tokens/s")
	b.ReportMetric(float64(all.events)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(pct(all.tokenLat, 0.50).Microseconds())/1000, "client-tok-p50-ms")
	b.ReportMetric(float64(pct(all.tokenLat, 0.99).Microseconds())/1000, "client-tok-p99-ms")
	latMu.Lock()
	b.ReportMetric(float64(pct(serverLat, 0.50).Microseconds())/1000, "server-tok-p50-ms")
	b.ReportMetric(float64(pct(serverLat, 0.99).Microseconds())/1000, "server-tok-p99-ms")
	latMu.Unlock()
	b.ReportMetric(float64(pct(all.ttft, 0.50).Microseconds())/1000, "ttft-p50-ms")
	b.ReportMetric(float64(pct(all.ttft, 0.99).Microseconds())/1000, "ttft-p99-ms")
}
