package server

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/metrics"
	"github.com/llmserve/llmserve/openai"
	"github.com/prometheus/client_golang/prometheus"
)

func testCall(t testing.TB, ch chan engine.Output, n int) *call {
	m, err := metrics.New(prometheus.NewRegistry(), metrics.Options{ModelName: "m"})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{metrics: m}
	ctx, cancel := context.WithCancelCause(context.Background())
	return &call{s: s, ctx: ctx, cancel: cancel, stopEnd: func() bool { return true }, release: func() {}, n: n, ch: ch,
		seqs: make([]seqState, n), prompts: make([]promptState, 1)}
}

// Outputs that pile up while the client is slow are folded into one event.
func TestCoalesce(t *testing.T) {
	ch := make(chan engine.Output, 8)
	for i, s := range []string{"a", "b", "c"} {
		ch <- engine.Output{Index: 0, Text: s, TokenIDs: []int{i}, Logprobs: []engine.TokenLogprob{{TokenID: i}}}
	}
	ch <- engine.Output{Index: 0, Text: "d", TokenIDs: []int{3}, FinishReason: engine.FinishStop, StopReason: "x"}
	c := testCall(t, ch, 1)
	c.next()
	sq := &c.seqs[0]
	if string(sq.text) != "abcd" || len(sq.lps) != 3 || sq.finish != engine.FinishStop || sq.stop != "x" || sq.completion != 4 || !sq.pending {
		t.Fatalf("folded %+v", sq)
	}
	close(ch)
	c.next()
	if !c.closed {
		t.Fatal("closed channel not seen")
	}
}

// The streaming hot path (fold, encode an event) allocates nothing per token.
func TestStreamPathAllocs(t *testing.T) {
	ch := make(chan engine.Output, 1)
	c := testCall(t, ch, 1)
	enc := openai.NewEncoder(openai.KindChatChunk, "chatcmpl-1", 1, "m")
	buf := make([]byte, 0, 4096)
	one := make([]openai.Choice, 1)
	ids := []int{7}
	now := time.Now()
	allocs := testing.AllocsPerRun(1000, func() {
		ch <- engine.Output{Index: 0, Text: "tok", TokenIDs: ids, Time: now}
		c.next()
		sq := &c.seqs[0]
		one[0] = openai.Choice{Index: 0, Text: sq.text}
		buf = append(buf[:0], "data: "...)
		buf = enc.Append(buf, one, nil)
		buf = append(buf, '\n', '\n')
		sq.text = sq.text[:0]
		sq.pending = false
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per token", allocs)
	}
}

type failingWriter struct {
	*httptest.ResponseRecorder
	writes int
}

func (f *failingWriter) Write(b []byte) (int, error) {
	f.writes++
	return 0, errors.New("broken pipe")
}

func TestSSEFlush(t *testing.T) {
	rec := httptest.NewRecorder()
	e := startSSE(rec)
	e.event()
	e.buf = append(e.buf, "x"...)
	e.end()
	if err := e.flush(); err != nil || rec.Body.String() != "data: x\n\n" || !rec.Flushed || rec.Header().Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%v %q", err, rec.Body.String())
	}
	// After a failed write the client is gone: later events are dropped.
	fw := &failingWriter{ResponseRecorder: httptest.NewRecorder()}
	e = startSSE(fw)
	e.event()
	if err := e.flush(); err == nil || !e.gone {
		t.Fatal("write error not reported")
	}
	e.event()
	if err := e.flush(); err != nil || fw.writes != 1 {
		t.Fatalf("wrote after failure: %v, %d writes", err, fw.writes)
	}
}
