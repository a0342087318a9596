package metrics

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/llmserve/llmserve/engine"
)

func TestStatsLoggerLogsOnlyWhileBusy(t *testing.T) {
	var buf bytes.Buffer
	st := engine.Stats{}
	l := NewStatsLogger(slog.New(slog.NewTextHandler(&buf, nil)), func() engine.Stats { return st }, time.Unix(0, 0))
	at := func(s int) time.Time { return time.Unix(int64(s), 0) }
	if l.Tick(at(10)) || buf.Len() != 0 {
		t.Fatalf("idle engine logged: %s", buf.String())
	}
	// Busy: 1000 prompt and 250 generated tokens in 10 s, half the prompt
	// tokens found in the prefix cache.
	st = engine.Stats{Running: 3, Waiting: 1, KVUsage: 0.125, PromptTokens: 1000, GenerationTokens: 250,
		PrefixQueries: 1000, PrefixHits: 500}
	if !l.Tick(at(20)) {
		t.Fatal("busy interval not logged")
	}
	line := buf.String()
	for _, want := range []string{`msg="engine stats"`, `avg_prompt_throughput="100.0 tokens/s"`, `avg_generation_throughput="25.0 tokens/s"`,
		"running=3", "waiting=1", "kv_cache_usage=12.5%", "prefix_cache_hit_rate=50.0%"} {
		if !strings.Contains(line, want) {
			t.Errorf("%s lacks %s", line, want)
		}
	}
	// Requests finished during the next interval: still logged (tokens
	// moved), then silence.
	st.Running, st.Waiting, st.GenerationTokens = 0, 0, 300
	if !l.Tick(at(30)) {
		t.Fatal("the interval that finished the work not logged")
	}
	buf.Reset()
	if l.Tick(at(40)) || l.Tick(at(50)) || buf.Len() != 0 {
		t.Fatalf("idle engine logged: %s", buf.String())
	}
}

func TestRequestParamMetrics(t *testing.T) {
	var cs collectors
	m, err := New(&cs, Options{ModelName: "m", MaxModelLen: 1024})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	m.ObserveRequest(Request{FinishReason: "length", Arrival: now, End: now, N: 4, MaxTokens: 100, MaxGenerationTokens: 37})
	m.ObserveRequest(Request{FinishReason: "length", Arrival: now, End: now}) // unknown params: not observed
	for c, want := range map[string]string{"vllm:request_params_n": "4", "vllm:request_params_max_tokens": "100",
		"vllm:request_max_num_generation_tokens": "37"} {
		if got := histSum(t, cs, c); got != want {
			t.Errorf("%s sum %s, want %s", c, got, want)
		}
	}
}
