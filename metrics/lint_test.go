package metrics

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmserve/llmserve/engine"
)

// collectors records what New registers, so each can be linted alone.
type collectors []prometheus.Collector

func (c *collectors) Register(x prometheus.Collector) error { *c = append(*c, x); return nil }
func (c *collectors) MustRegister(xs ...prometheus.Collector) {
	*c = append(*c, xs...)
}
func (c *collectors) Unregister(prometheus.Collector) bool { return false }

// vllmLintException tells promlint problems that come from keeping vLLM's
// metric names (dashboards and the Gateway API Inference Extension query
// them as they are) from real ones.
func vllmLintException(metric, text string) bool {
	if !strings.HasPrefix(metric, "vllm:") {
		return false
	}
	// Every vLLM name has the vllm: prefix, and vLLM named one histogram
	// _total; nothing else is excused.
	return text == "metric names should not contain ':'" ||
		metric == "vllm:iteration_tokens_total" && text == `non-counter metrics should not have "_total" suffix`
}

func TestMetricsLint(t *testing.T) {
	var cs collectors
	m, err := New(&cs, Options{ModelName: "m", MaxModelLen: 1024, Stats: func() engine.Stats {
		return engine.Stats{Running: 1, KVBlocksTotal: 10, KVBlocksFree: 5, BlockSize: 16, GenerationTokens: 3}
	}})
	if err != nil {
		t.Fatal(err)
	}
	// Give every series a sample.
	now := time.Now()
	m.ObserveRequest(Request{FinishReason: "stop", PromptTokens: 3, CompletionTokens: 2, Arrival: now, Scheduled: now,
		FirstToken: now, End: now.Add(time.Second), N: 1, MaxTokens: 16, MaxGenerationTokens: 2})
	m.ObserveInterToken(time.Millisecond)
	m.ObserveIterationTokens(8)
	m.Reject(RejectCapacity)
	m.SetAdmitted(1)
	m.SetCacheConfig(CacheConfig{BlockSize: 16, CacheDType: "auto", EnablePrefixCaching: true, GPUMemoryUtilization: 0.9, NumBlocks: 10})
	if len(cs) < 10 {
		t.Fatalf("%d collectors", len(cs))
	}
	seen := map[string]bool{}
	for _, c := range cs {
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			seen[p.Metric] = true
			if !vllmLintException(p.Metric, p.Text) {
				t.Errorf("promlint: %s: %s", p.Metric, p.Text)
			}
		}
	}
	// Our own names are clean; in particular the block count is a gauge
	// without the counters' _total suffix.
	for name := range seen {
		if strings.HasPrefix(name, "llmserve_") {
			t.Errorf("%s has lint problems", name)
		}
	}
	if n := testutil.CollectAndCount(cs[len(cs)-1], "llmserve_kv_cache_blocks"); n != 1 {
		t.Errorf("llmserve_kv_cache_blocks: %d series", n)
	}
}

// histSum gathers the named histogram's sum (and checks it has one sample).
func histSum(t *testing.T, cs collectors, name string) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	for _, c := range cs {
		reg.MustRegister(c)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			h := mf.GetMetric()[0].GetHistogram()
			if h.GetSampleCount() != 1 {
				t.Errorf("%s: %d samples", name, h.GetSampleCount())
			}
			return strconv.FormatFloat(h.GetSampleSum(), 'g', -1, 64)
		}
	}
	t.Fatalf("%s not found", name)
	return ""
}
