package metrics

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmserve/llmserve/engine"
)

func TestPercentilesNearestRank(t *testing.T) {
	xs := make([]float64, 100)
	for i := range xs {
		xs[i] = float64(100 - i) // 100..1, unsorted
	}
	p := percentiles(xs, 1)
	if p.Count != 100 || p.P50 != 50 || p.P95 != 95 || p.P99 != 99 || p.Mean != 50.5 {
		t.Fatalf("%+v", p)
	}
	if p := percentiles([]float64{7}, 1000); p.P50 != 7000 || p.P99 != 7000 {
		t.Fatalf("%+v", p)
	}
	if p := percentiles(nil, 1); p.Count != 0 {
		t.Fatalf("%+v", p)
	}
}

func TestBuckets125(t *testing.T) {
	if got := fmt.Sprint(buckets125(120)); got != "[1 2 5 10 20 50 100]" {
		t.Fatal(got)
	}
}

func TestWindowAndSnapshot(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	stats := engine.Stats{Running: 2, Waiting: 3, KVUsage: 0.25}
	m, err := New(prometheus.NewRegistry(), Options{ModelName: "m", Window: 10 * time.Second, MaxSamples: 4, Now: clock,
		Stats: func() engine.Stats { return stats }})
	if err != nil {
		t.Fatal(err)
	}
	add := func(end time.Time, ttft time.Duration, n int, reason string) {
		a := end.Add(-time.Second)
		m.ObserveRequest(Request{FinishReason: reason, PromptTokens: 3, CompletionTokens: n, Arrival: a, Scheduled: a,
			FirstToken: a.Add(ttft), End: end})
	}
	add(now.Add(-20*time.Second), 900*time.Millisecond, 10, engine.FinishStop) // outside the window
	add(now, 100*time.Millisecond, 10, engine.FinishLength)
	add(now, 300*time.Millisecond, 4, engine.FinishAbort)
	m.Reject(RejectCapacity)
	s := m.Snapshot()
	if s.Requests.Total != 3 || s.Requests.Aborted != 1 || s.Requests.Rejected != 1 || s.Requests.InWindow != 2 {
		t.Fatalf("%+v", s.Requests)
	}
	if s.TTFTms.Count != 2 || s.TTFTms.P50 != 100 || s.TTFTms.P99 != 300 {
		t.Fatalf("ttft %+v", s.TTFTms)
	}
	if s.E2Ems.P99 != 1000 || s.TokensPerSec.P99 != 10 || s.TPOTms.P50 != 100 { // (1000-100)/9
		t.Fatalf("e2e %+v tps %+v tpot %+v", s.E2Ems, s.TokensPerSec, s.TPOTms)
	}
	if s.Running != 2 || s.Waiting != 3 || s.KVCacheUsage != 0.25 {
		t.Fatalf("%+v", s)
	}
	// The ring keeps MaxSamples: old records are overwritten.
	for range 4 {
		add(now, 200*time.Millisecond, 2, engine.FinishStop)
	}
	if s := m.Snapshot(); s.Requests.InWindow != 4 || s.TTFTms.P99 != 200 {
		t.Fatalf("%+v %+v", s.Requests, s.TTFTms)
	}
}

func TestPrometheusSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	stats := engine.Stats{Running: 1, Waiting: 4, KVUsage: 0.5, Preemptions: 2, PrefixQueries: 10, PrefixHits: 6, PromptTokens: 30, GenerationTokens: 40}
	m, err := New(reg, Options{ModelName: "qwen", Stats: func() engine.Stats { return stats }})
	if err != nil {
		t.Fatal(err)
	}
	m.Reject(RejectQueueTimeout)
	m.ObserveInterToken(20 * time.Millisecond)
	got := map[string]float64{}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		for _, mt := range f.GetMetric() {
			key := f.GetName()
			for _, l := range mt.GetLabel() {
				if l.GetName() != "model_name" {
					key += "/" + l.GetValue()
				} else if l.GetValue() != "qwen" {
					t.Errorf("%s: model_name %q", f.GetName(), l.GetValue())
				}
			}
			switch {
			case mt.Counter != nil:
				got[key] = mt.Counter.GetValue()
			case mt.Gauge != nil:
				got[key] = mt.Gauge.GetValue()
			case mt.Histogram != nil:
				got[key] = float64(mt.Histogram.GetSampleCount())
			}
		}
	}
	for k, v := range map[string]float64{
		"vllm:num_requests_running": 1, "vllm:num_requests_waiting": 4, "vllm:kv_cache_usage_perc": 0.5,
		"vllm:num_preemptions_total": 2, "vllm:prefix_cache_queries_total": 10, "vllm:prefix_cache_hits_total": 6,
		"vllm:prompt_tokens_total": 30, "vllm:generation_tokens_total": 40, "vllm:inter_token_latency_seconds": 1,
		"llmserve_requests_rejected_total/queue_timeout": 1, "llmserve_requests_rejected_total/capacity": 0,
		"vllm:request_success_total/abort": 0, "vllm:time_to_first_token_seconds": 0,
	} {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	// A second registration on the same registry fails cleanly.
	if _, err := New(reg, Options{ModelName: "qwen"}); err == nil {
		t.Fatal("duplicate registration accepted")
	}
}
