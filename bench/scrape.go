package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MetricSample is one line of the Prometheus text format.
type MetricSample struct {
	Name   string
	Labels string // raw, without braces
	Value  float64
}

// ParseMetrics reads the Prometheus text exposition format, skipping
// comments and lines it cannot parse (tolerant by design: we only read a
// few gauges).
func ParseMetrics(r io.Reader) ([]MetricSample, error) {
	var out []MetricSample
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		var name, labels, rest string
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			name, labels, rest = line[:i], line[i+1:j], line[j+1:]
		} else {
			var ok bool
			name, rest, ok = strings.Cut(line, " ")
			if !ok {
				continue
			}
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out = append(out, MetricSample{Name: strings.TrimSpace(name), Labels: labels, Value: v})
	}
	return out, sc.Err()
}

// Metric names we read, with the aliases older vLLM releases used.
var (
	kvUsageNames     = []string{"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm_kv_cache_usage_perc"}
	runningNames     = []string{"vllm:num_requests_running", "vllm_num_requests_running"}
	waitingNames     = []string{"vllm:num_requests_waiting", "vllm_num_requests_waiting"}
	preemptionsNames = []string{"vllm:num_preemptions_total", "vllm:num_preemptions", "vllm_num_preemptions_total"}
)

// metricValue sums the series of the first of names present (vLLM labels
// them by model and engine); ok is false when none is.
func metricValue(ms []MetricSample, names []string) (v float64, ok bool) {
	for _, n := range names {
		for _, m := range ms {
			if m.Name == n && !math.IsNaN(m.Value) {
				v += m.Value
				ok = true
			}
		}
		if ok {
			return v, true
		}
	}
	return 0, false
}

// Scraper reads a server's /metrics, /health and /v1/models.
type Scraper struct {
	Base     string // server root URL
	APIKey   string
	HTTP     *http.Client
	Interval time.Duration // Monitor's sampling period; 0 means 250ms
}

func (s *Scraper) get(ctx context.Context, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Base+path, nil)
	if err != nil {
		return nil, err
	}
	if s.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+s.APIKey)
	}
	hc := s.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: HTTP %d", path, resp.StatusCode)
	}
	return body, nil
}

// Metrics fetches and parses /metrics.
func (s *Scraper) Metrics(ctx context.Context) ([]MetricSample, error) {
	body, err := s.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	return ParseMetrics(strings.NewReader(string(body)))
}

// Health fetches /health as a generic JSON object (tolerating any fields).
// A 503 body (still loading) is returned with the error.
func (s *Scraper) Health(ctx context.Context) (map[string]any, error) {
	body, err := s.get(ctx, "/health")
	var m map[string]any
	if jerr := json.Unmarshal(body, &m); jerr != nil && err == nil {
		err = fmt.Errorf("health: %w", jerr)
	}
	return m, err
}

// Models fetches /v1/models (or the reference's /models) as generic JSON.
func (s *Scraper) Models(ctx context.Context) (any, error) {
	body, err := s.get(ctx, "/v1/models")
	if err != nil {
		if body, err = s.get(ctx, "/models"); err != nil {
			return nil, err
		}
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, err
	}
	return v, nil
}

// FirstModelID returns data[0].id of a /v1/models answer, "" if none.
func FirstModelID(models any) string {
	m, _ := models.(map[string]any)
	data, _ := m["data"].([]any)
	if len(data) == 0 {
		return ""
	}
	first, _ := data[0].(map[string]any)
	id, _ := first["id"].(string)
	return id
}

// Monitor samples /metrics every Interval until the returned stop is
// called, then returns the KV cache and queue gauges' max and mean (nil
// when no sample had them). It fits RunOptions.Monitor.
func (s *Scraper) Monitor(ctx context.Context) (stop func() *ServerStats) {
	interval := s.Interval
	if interval <= 0 {
		interval = 250 * time.Millisecond
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	var (
		mu                sync.Mutex
		kv, run, wait     []float64
		preFirst, preLast float64
		havePre           bool
	)
	sample := func(ctx context.Context, gauges bool) {
		ms, err := s.Metrics(ctx)
		if err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if v, ok := metricValue(ms, preemptionsNames); ok {
			if !havePre {
				preFirst, havePre = v, true
			}
			preLast = v
		}
		if !gauges {
			return
		}
		if v, ok := metricValue(ms, kvUsageNames); ok {
			kv = append(kv, v)
		}
		if v, ok := metricValue(ms, runningNames); ok {
			run = append(run, v)
		}
		if v, ok := metricValue(ms, waitingNames); ok {
			wait = append(wait, v)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			sample(ctx, true)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() *ServerStats {
		cancel()
		<-done
		// One last read after the level for the counters' final value; the
		// gauges are idle by now and would only dilute the means.
		sample(context.WithoutCancel(parent), false)
		mu.Lock()
		defer mu.Unlock()
		if len(kv)+len(run)+len(wait) == 0 && !havePre {
			return nil
		}
		st := &ServerStats{Samples: max(len(kv), len(run), len(wait))}
		st.KVCacheUsageMax, st.KVCacheUsageMean = maxMean(kv)
		st.RunningMax, st.RunningMean = maxMean(run)
		st.WaitingMax, st.WaitingMean = maxMean(wait)
		if havePre {
			d := preLast - preFirst
			st.Preemptions = &d
		}
		return st
	}
}

func maxMean(xs []float64) (mx, mean float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	mx = xs[0]
	for _, x := range xs {
		mx = max(mx, x)
	}
	return mx, Mean(xs)
}
