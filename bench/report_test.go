package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmserve/llmserve/bench/benchtest"
)

// referenceLevels are the reference README's RTX 4090 numbers.
func referenceLevels() []LevelResult {
	conc := []int{1, 2, 4, 8, 16, 32}
	tps := []float64{213.5, 402.7, 699.0, 1289.8, 2367.8, 2413.3}
	p99 := []float64{13.1, 10.6, 22.2, 23.6, 33.4, 547.8}
	var out []LevelResult
	for i := range conc {
		out = append(out, LevelResult{Level: Level{Concurrency: conc[i]}, Successes: 50, NumRequests: 50,
			OutputThroughput: tps[i], TTFTms: Summary{Count: 50, P99: p99[i], Mean: p99[i] / 2}})
	}
	return out
}

func TestSaturation(t *testing.T) {
	levels := referenceLevels()
	if sat, plateau := Saturation(levels); sat != 5 || plateau != 5 {
		t.Fatalf("saturation %d plateau %d, want 5 5", sat, plateau)
	}
	levels[5].TTFTms.P99 = 40 // throughput flat, TTFT steady: plateau only
	if sat, plateau := Saturation(levels); sat != -1 || plateau != 5 {
		t.Fatalf("saturation %d plateau %d, want -1 5", sat, plateau)
	}
	if sat, plateau := Saturation(levels[:5]); sat != -1 || plateau != -1 {
		t.Fatalf("saturation %d plateau %d, want none", sat, plateau)
	}
}

func TestMarkdownAndJSONRoundTrip(t *testing.T) {
	w := 3.1 * (1 << 30)
	capTok := 665872.0
	r := &Report{Version: ReportVersion, Levels: referenceLevels(),
		Environment: Environment{CPUModel: "Test CPU", Cores: 2, GOOS: "linux", GOARCH: "amd64", WeightsBytes: &w, KVCacheCapacityTokens: &capTok},
		Config:      Config{Endpoint: "generate", Stream: true, Workload: "fixed", Prompt: "hi", MaxTokens: 100, Requests: 50}}
	r.Levels[4].Server = &ServerStats{Samples: 3, KVCacheUsageMax: 0.1, KVCacheUsageMean: 0.05, RunningMax: 16}
	md := r.Markdown()
	for _, want := range []string{"1.0x (baseline)", "11.1x", "11.3x (saturated)", "Saturation point: concurrency 32",
		"3.10 GiB", "665872 tokens", "10.0% (66587 tok)", "Test CPU, 2 cores"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := r.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadReport(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Levels) != 6 || back.Levels[5].OutputThroughput != 2413.3 || *back.Environment.WeightsBytes != w ||
		back.Levels[4].Server.RunningMax != 16 {
		t.Fatalf("round trip: %+v", back)
	}
}

func TestParseMetricsAndMonitor(t *testing.T) {
	text := `# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} %g
vllm:num_requests_running{engine="0",model_name="m"} %d
vllm:num_requests_waiting{engine="0",model_name="m"} 0
vllm:num_preemptions_total{engine="0",model_name="m"} %d
llmserve_something 1.5e3
garbage line here
`
	ms, err := ParseMetrics(strings.NewReader(fmt.Sprintf(text, 0.25, 3, 7)))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := metricValue(ms, kvUsageNames); !ok || v != 0.25 {
		t.Fatalf("kv %v %v", v, ok)
	}
	if v, ok := metricValue(ms, []string{"llmserve_something"}); !ok || v != 1500 {
		t.Fatalf("plain %v %v", v, ok)
	}

	// A server whose KV use climbs 0.1 per scrape and preempts once per
	// scrape: the monitor reports the max it saw and the counter's growth.
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := n.Add(1)
		fmt.Fprintf(w, text, 0.1*float64(min(k, 5)), k, 10+k)
	}))
	defer srv.Close()
	s := &Scraper{Base: srv.URL, Interval: 5 * time.Millisecond}
	stop := s.Monitor(context.Background())
	for n.Load() < 6 {
		time.Sleep(time.Millisecond)
	}
	st := stop()
	if st == nil || st.Samples < 5 || !near(st.KVCacheUsageMax, 0.5, 1e-9) || st.KVCacheUsageMean > 0.5 {
		t.Fatalf("%+v", st)
	}
	// Preemptions: the last read (after stop) minus the first.
	if st.Preemptions == nil || *st.Preemptions != float64(n.Load()-1) {
		t.Fatalf("preemptions %v, scrapes %d", st.Preemptions, n.Load())
	}

	// A server without metrics yields nil stats, not an error.
	bare := httptest.NewServer(http.NotFoundHandler())
	defer bare.Close()
	if st := (&Scraper{Base: bare.URL, Interval: time.Millisecond}).Monitor(context.Background())(); st != nil {
		t.Fatalf("want nil, got %+v", st)
	}
}

func TestCollectEnvironment(t *testing.T) {
	fs := &benchtest.Server{}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	e := CollectEnvironment(context.Background(), &Scraper{Base: srv.URL})
	if e.Model != "fake-model" || e.WeightsBytes == nil || *e.WeightsBytes != 1<<30 ||
		e.KVCacheCapacityTokens == nil || *e.KVCacheCapacityTokens != 4096 || e.Cores < 1 || e.GOOS == "" {
		t.Fatalf("%+v", e)
	}
}

func TestCapacityFromMetrics(t *testing.T) {
	ms, _ := ParseMetrics(strings.NewReader(
		"llmserve_kv_cache_blocks_total{model_name=\"m\"} 100\n" +
			"vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"100\"} 1\n"))
	var e Environment
	e.SetMetrics(ms)
	if e.KVCacheCapacityTokens == nil || *e.KVCacheCapacityTokens != 1600 {
		t.Fatalf("%+v", e)
	}
	// Blocks without a block size: no token capacity is invented.
	ms, _ = ParseMetrics(strings.NewReader("llmserve_kv_cache_blocks_total 100\n"))
	e = Environment{}
	e.SetMetrics(ms)
	if e.KVCacheCapacityTokens != nil || *e.KVCacheBlocks != 100 {
		t.Fatalf("%+v", e)
	}
}
