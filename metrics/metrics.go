// Package metrics exports the server's Prometheus series under vLLM's names
// (on an injected registry) and keeps a rolling window of finished requests
// for the reference server's JSON view (p50/p95/p99 of TTFT, TPOT, end-to-end
// latency and tokens per second).
package metrics

import (
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmserve/llmserve/engine"
)

// Options configure Metrics.
type Options struct {
	ModelName   string        // value of the model_name label
	MaxModelLen int           // upper bound of the token-count histograms (default 4096)
	Window      time.Duration // rolling window of the JSON view (default 60s)
	MaxSamples  int           // requests kept in the window at most (default 10000)
	// Stats is read at scrape time for the engine's gauges and counters; nil = none.
	Stats func() engine.Stats
	Now   func() time.Time // default time.Now
}

// Rejection reasons (label "reason" of llmserve_requests_rejected_total).
const (
	RejectCapacity     = "capacity"      // 429: --max-concurrent-requests reached
	RejectQueueTimeout = "queue_timeout" // 503: --max-queue-wait passed
	RejectDraining     = "draining"      // 503: shutting down
	RejectNotReady     = "not_ready"     // 503: still loading
	RejectInvalid      = "invalid"       // 400/404/413
	RejectUnauthorized = "unauthorized"  // 401
	RejectEngine       = "engine_error"  // 5xx from the engine
)

// Metrics is safe for concurrent use.
type Metrics struct {
	opts Options

	ttft, itl, e2e, queue, prefill, decode, tpot prometheus.Observer
	promptHist, genHist                          prometheus.Observer
	paramsN, paramsMaxTokens, maxGenTokens       prometheus.Observer
	iterTokens                                   prometheus.Observer
	cacheInfo                                    *prometheus.GaugeVec
	success                                      *prometheus.CounterVec
	rejected                                     *prometheus.CounterVec
	inFlight                                     prometheus.Gauge

	start     time.Time
	total     atomic.Uint64
	aborted   atomic.Uint64
	rejectedN atomic.Uint64

	mu   sync.Mutex
	ring []record
	next int
	full bool
}

type record struct {
	end                time.Time
	ttft, tpot, e2e    float64 // seconds
	tps                float64
	completion, prompt int
}

// vLLM's histogram buckets.
var (
	ttftBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560}
	itlBuckets  = []float64{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}
	nBuckets    = []float64{1, 2, 5, 10, 20}
	// iterationBuckets are vLLM's for vllm:iteration_tokens_total.
	iterationBuckets = []float64{1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384}
	requestBuckets   = []float64{0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680}
)

// buckets125 is vLLM's build_1_2_5_buckets: 1, 2, 5, 10, ... up to max.
func buckets125(max int) []float64 {
	var out []float64
	for exp := 1.0; ; exp *= 10 {
		for _, m := range []float64{1, 2, 5} {
			v := m * exp
			if v > float64(max) {
				return out
			}
			out = append(out, v)
		}
	}
}

// New registers the series on reg.
func New(reg prometheus.Registerer, opts Options) (*Metrics, error) {
	if opts.Window <= 0 {
		opts.Window = time.Minute
	}
	if opts.MaxSamples <= 0 {
		opts.MaxSamples = 10000
	}
	if opts.MaxModelLen <= 0 {
		opts.MaxModelLen = 4096
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m := &Metrics{opts: opts, start: opts.Now(), ring: make([]record, opts.MaxSamples)}
	labels := prometheus.Labels{"model_name": opts.ModelName}
	hist := func(name, help string, buckets []float64) (*prometheus.HistogramVec, prometheus.Observer) {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, []string{"model_name"})
		return h, h.With(labels)
	}
	var cs []prometheus.Collector
	add := func(c prometheus.Collector) { cs = append(cs, c) }
	var h *prometheus.HistogramVec
	h, m.ttft = hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", ttftBuckets)
	add(h)
	h, m.itl = hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", itlBuckets)
	add(h)
	h, m.tpot = hist("vllm:request_time_per_output_token_seconds", "Histogram of time per output token in seconds.", itlBuckets)
	add(h)
	h, m.e2e = hist("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", requestBuckets)
	add(h)
	h, m.queue = hist("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", requestBuckets)
	add(h)
	h, m.prefill = hist("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", requestBuckets)
	add(h)
	h, m.decode = hist("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", requestBuckets)
	add(h)
	tok := buckets125(opts.MaxModelLen)
	h, m.promptHist = hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tok)
	add(h)
	h, m.genHist = hist("vllm:request_generation_tokens", "Number of generation tokens processed.", tok)
	add(h)
	h, m.paramsN = hist("vllm:request_params_n", "Histogram of the n request parameter.", nBuckets)
	add(h)
	h, m.paramsMaxTokens = hist("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", tok)
	add(h)
	h, m.maxGenTokens = hist("vllm:request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.", tok)
	add(h)
	// vLLM's name, a histogram despite the _total suffix (dashboards query it).
	h, m.iterTokens = hist("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", iterationBuckets)
	add(h)
	m.cacheInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "vllm:cache_config_info", Help: "Information of the LLMEngine CacheConfig",
	}, cacheInfoLabels)
	add(m.cacheInfo)
	m.success = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vllm:request_success_total", Help: "Count of successfully processed requests.",
	}, []string{"model_name", "finished_reason"})
	add(m.success)
	m.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llmserve_requests_rejected_total", Help: "Requests refused before reaching the engine, by reason.",
	}, []string{"model_name", "reason"})
	add(m.rejected)
	inFlight := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "llmserve_requests_admitted", Help: "Requests admitted by the server (running plus waiting in the engine).",
	}, []string{"model_name"})
	m.inFlight = inFlight.With(labels)
	add(inFlight)
	if opts.Stats != nil {
		add(newEngineCollector(opts.ModelName, opts.Stats))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Pre-create the common label values so the series exist from the start.
	for _, r := range []string{engine.FinishStop, engine.FinishLength, engine.FinishAbort} {
		m.success.WithLabelValues(opts.ModelName, r)
	}
	for _, r := range []string{RejectCapacity, RejectQueueTimeout, RejectDraining, RejectInvalid, RejectUnauthorized} {
		m.rejected.WithLabelValues(opts.ModelName, r)
	}
	return m, nil
}

// cacheInfoLabels are vllm:cache_config_info's labels (vLLM's names, the
// ones that apply here).
var cacheInfoLabels = []string{"block_size", "cache_dtype", "enable_prefix_caching", "gpu_memory_utilization",
	"num_cpu_blocks", "num_gpu_blocks", "num_gpu_blocks_override", "swap_space", "kv_cache_memory_bytes"}

// CacheConfig is the KV cache configuration vllm:cache_config_info exports.
type CacheConfig struct {
	BlockSize            int
	CacheDType           string // --kv-cache-dtype as given ("auto") or resolved
	EnablePrefixCaching  bool
	GPUMemoryUtilization float64
	NumBlocks            int // KV blocks (vLLM's num_gpu_blocks, whatever the device)
	NumBlocksOverride    int // --num-gpu-blocks-override; 0 = none
	MemoryBytes          int64
}

// SetCacheConfig publishes the KV cache configuration once it is known
// (after the model is loaded): vllm:cache_config_info{...} 1.
func (m *Metrics) SetCacheConfig(c CacheConfig) {
	m.cacheInfo.Reset()
	override := "None"
	if c.NumBlocksOverride > 0 {
		override = strconv.Itoa(c.NumBlocksOverride)
	}
	m.cacheInfo.WithLabelValues(strconv.Itoa(c.BlockSize), c.CacheDType, strconv.FormatBool(c.EnablePrefixCaching),
		strconv.FormatFloat(c.GPUMemoryUtilization, 'g', -1, 64), "0", strconv.Itoa(c.NumBlocks), override, "0",
		strconv.FormatInt(c.MemoryBytes, 10)).Set(1)
}

// ObserveIterationTokens records the tokens of one engine step
// (vllm:iteration_tokens_total).
func (m *Metrics) ObserveIterationTokens(n int) { m.iterTokens.Observe(float64(n)) }

// Request describes one finished engine request (or sequence).
type Request struct {
	FinishReason     string
	PromptTokens     int
	CompletionTokens int
	Arrival          time.Time // submitted
	Scheduled        time.Time // first scheduled (zero = unknown)
	FirstToken       time.Time // zero if none was produced
	End              time.Time
	// The request's n and max_tokens, and the most tokens one of its n
	// sequences generated; 0 = unknown (not observed).
	N, MaxTokens, MaxGenerationTokens int
}

func secs(a, b time.Time) float64 { return b.Sub(a).Seconds() }

// ObserveRequest records a finished request in the histograms, the success
// counter and the rolling window.
func (m *Metrics) ObserveRequest(r Request) {
	m.total.Add(1)
	reason := r.FinishReason
	if reason == "" {
		reason = engine.FinishAbort
	}
	m.success.WithLabelValues(m.opts.ModelName, reason).Inc()
	if reason == engine.FinishAbort {
		m.aborted.Add(1)
	}
	e2e := secs(r.Arrival, r.End)
	m.e2e.Observe(e2e)
	m.promptHist.Observe(float64(r.PromptTokens))
	m.genHist.Observe(float64(r.CompletionTokens))
	if r.N > 0 {
		m.paramsN.Observe(float64(r.N))
		m.maxGenTokens.Observe(float64(r.MaxGenerationTokens))
	}
	if r.MaxTokens > 0 {
		m.paramsMaxTokens.Observe(float64(r.MaxTokens))
	}
	if !r.Scheduled.IsZero() {
		m.queue.Observe(secs(r.Arrival, r.Scheduled))
	}
	rec := record{end: r.End, e2e: e2e, ttft: math.NaN(), tpot: math.NaN(), completion: r.CompletionTokens, prompt: r.PromptTokens}
	if !r.FirstToken.IsZero() {
		rec.ttft = secs(r.Arrival, r.FirstToken)
		m.ttft.Observe(rec.ttft)
		if !r.Scheduled.IsZero() {
			m.prefill.Observe(secs(r.Scheduled, r.FirstToken))
		}
		m.decode.Observe(secs(r.FirstToken, r.End))
		if r.CompletionTokens > 1 {
			rec.tpot = secs(r.FirstToken, r.End) / float64(r.CompletionTokens-1)
			m.tpot.Observe(rec.tpot)
		}
	}
	if e2e > 0 {
		rec.tps = float64(r.CompletionTokens) / e2e
	}
	m.mu.Lock()
	m.ring[m.next] = rec
	m.next++
	if m.next == len(m.ring) {
		m.next, m.full = 0, true
	}
	m.mu.Unlock()
}

// ObserveInterToken records the gap between two outputs of a sequence.
func (m *Metrics) ObserveInterToken(d time.Duration) { m.itl.Observe(d.Seconds()) }

// Reject counts a refused request.
func (m *Metrics) Reject(reason string) {
	m.rejectedN.Add(1)
	m.rejected.WithLabelValues(m.opts.ModelName, reason).Inc()
}

// SetAdmitted sets the number of requests the server has admitted.
func (m *Metrics) SetAdmitted(n int) { m.inFlight.Set(float64(n)) }

// Percentiles summarise one quantity over the window.
type Percentiles struct {
	Count int     `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
}

// Snapshot is the JSON view of /metrics.
type Snapshot struct {
	Model         string      `json:"model"`
	WindowSeconds float64     `json:"window_seconds"`
	UptimeSeconds float64     `json:"uptime_seconds"`
	Requests      Counts      `json:"requests"`
	TTFTms        Percentiles `json:"ttft_ms"`
	TPOTms        Percentiles `json:"tpot_ms"`
	E2Ems         Percentiles `json:"e2e_ms"`
	TokensPerSec  Percentiles `json:"tokens_per_second"`
	// ThroughputTokensPerSec is all tokens generated in the window over its length.
	ThroughputTokensPerSec float64 `json:"throughput_tokens_per_second"`
	Running                int     `json:"running"`
	Waiting                int     `json:"waiting"`
	KVCacheUsage           float64 `json:"kv_cache_usage"`
}

// Counts are request counts since start (InWindow: finished within the window).
type Counts struct {
	Total    uint64 `json:"total"`
	Aborted  uint64 `json:"aborted"`
	Rejected uint64 `json:"rejected"`
	InWindow int    `json:"in_window"`
}

// percentiles uses the nearest-rank method on xs (sorted in place); scale
// converts units.
func percentiles(xs []float64, scale float64) Percentiles {
	if len(xs) == 0 {
		return Percentiles{}
	}
	slices.Sort(xs)
	sum := 0.0
	for _, x := range xs {
		sum += x
	}
	rank := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(xs)))) - 1
		i = max(0, min(i, len(xs)-1))
		return xs[i] * scale
	}
	return Percentiles{Count: len(xs), Mean: sum / float64(len(xs)) * scale, P50: rank(0.50), P95: rank(0.95), P99: rank(0.99)}
}

// Snapshot computes the JSON view.
func (m *Metrics) Snapshot() Snapshot {
	now := m.opts.Now()
	cut := now.Add(-m.opts.Window)
	var ttft, tpot, e2e, tps []float64
	gen := 0
	m.mu.Lock()
	n := m.next
	if m.full {
		n = len(m.ring)
	}
	for i := 0; i < n; i++ {
		r := &m.ring[i]
		if r.end.Before(cut) {
			continue
		}
		e2e = append(e2e, r.e2e)
		if !math.IsNaN(r.ttft) {
			ttft = append(ttft, r.ttft)
		}
		if !math.IsNaN(r.tpot) {
			tpot = append(tpot, r.tpot)
		}
		if r.completion > 0 {
			tps = append(tps, r.tps)
		}
		gen += r.completion
	}
	m.mu.Unlock()
	uptime := now.Sub(m.start)
	span := min(uptime, m.opts.Window).Seconds()
	s := Snapshot{
		Model:         m.opts.ModelName,
		WindowSeconds: m.opts.Window.Seconds(),
		UptimeSeconds: uptime.Seconds(),
		Requests:      Counts{Total: m.total.Load(), Aborted: m.aborted.Load(), Rejected: m.rejectedN.Load(), InWindow: len(e2e)},
		TTFTms:        percentiles(ttft, 1000),
		TPOTms:        percentiles(tpot, 1000),
		E2Ems:         percentiles(e2e, 1000),
		TokensPerSec:  percentiles(tps, 1),
	}
	if span > 0 {
		s.ThroughputTokensPerSec = float64(gen) / span
	}
	if m.opts.Stats != nil {
		st := m.opts.Stats()
		s.Running, s.Waiting, s.KVCacheUsage = st.Running, st.Waiting, st.KVUsage
	}
	return s
}

// engineCollector reads engine.Stats at scrape time, so the engine needs no
// knowledge of Prometheus.
type engineCollector struct {
	model                            string
	stats                            func() engine.Stats
	running, waiting, kvUsage        *prometheus.Desc
	prompt, gen, preempt, pqs, phits *prometheus.Desc
	blocksTotal, blocksFree          *prometheus.Desc
}

func newEngineCollector(model string, stats func() engine.Stats) *engineCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, nil, prometheus.Labels{"model_name": model})
	}
	return &engineCollector{
		model: model, stats: stats,
		running:     d("vllm:num_requests_running", "Number of requests in model execution batches."),
		waiting:     d("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
		kvUsage:     d("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
		prompt:      d("vllm:prompt_tokens_total", "Number of prefill tokens processed."),
		gen:         d("vllm:generation_tokens_total", "Number of generation tokens processed."),
		preempt:     d("vllm:num_preemptions_total", "Cumulative number of preemption from the engine."),
		pqs:         d("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens."),
		phits:       d("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens."),
		blocksTotal: d("llmserve_kv_cache_blocks", "KV cache blocks in all (a gauge: the cache's size)."),
		blocksFree:  d("llmserve_kv_cache_blocks_free", "Free KV cache blocks."),
	}
}

func (c *engineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.running, c.waiting, c.kvUsage, c.prompt, c.gen, c.preempt, c.pqs, c.phits, c.blocksTotal, c.blocksFree} {
		ch <- d
	}
}

func (c *engineCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	k := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	g(c.running, float64(s.Running))
	g(c.waiting, float64(s.Waiting))
	g(c.kvUsage, s.KVUsage)
	g(c.blocksTotal, float64(s.KVBlocksTotal))
	g(c.blocksFree, float64(s.KVBlocksFree))
	k(c.prompt, s.PromptTokens)
	k(c.gen, s.GenerationTokens)
	k(c.preempt, s.Preemptions)
	k(c.pqs, s.PrefixQueries)
	k(c.phits, s.PrefixHits)
}
