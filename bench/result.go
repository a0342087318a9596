package bench

import (
	"encoding/json"
	"math"
	"time"
)

// Result is one request's outcome as the client measured it. Package users
// other than the HTTP runner (an engine-only sweep, say) fill it themselves
// and hand a slice of them to Aggregate.
type Result struct {
	Start      time.Time // when the request was sent
	OK         bool      // a complete, well-formed response arrived
	StatusCode int       // HTTP status; 0 when none came
	Rejected   bool      // the server answered 429 (never retried)
	Err        string    // why it failed; "" when OK

	// TTFT is the time from sending to the first token. For streams it is
	// measured; for non-streamed responses it is what the server reported
	// (0 when it reported nothing, and then it is left out of TTFT/TPOT).
	TTFT    time.Duration
	Latency time.Duration // end to end: sending to the last byte
	// ITL are the gaps between successive streamed token events (the first
	// gap starts at the first token), as vLLM's bench serve records them.
	ITL []time.Duration

	PromptTokens int
	OutputTokens int
	// OutputFromServer tells whether OutputTokens came from the server's
	// usage/completion_tokens (true) or was counted from stream events or
	// estimated from text (false).
	OutputFromServer bool
	FinishReason     string
}

// TPOT is the time per output token after the first, (e2e - ttft) / (n - 1),
// vLLM's definition. ok is false when it is undefined (n < 2 or no TTFT).
func (r *Result) TPOT() (d time.Duration, ok bool) {
	if r.OutputTokens < 2 || r.TTFT <= 0 {
		return 0, false
	}
	return (r.Latency - r.TTFT) / time.Duration(r.OutputTokens-1), true
}

// Level is one point of a sweep.
type Level struct {
	// Concurrency caps requests in flight. In closed loop (RequestRate 0)
	// exactly this many clients send back to back; in open loop it is the
	// cap (vLLM's --max-concurrency), 0 meaning none.
	Concurrency int `json:"concurrency"`
	// RequestRate is the open-loop mean arrival rate in requests per
	// second; 0 is closed loop, +Inf sends everything at once.
	RequestRate Rate `json:"request_rate,omitempty"`
	// Burstiness is the gamma shape of inter-arrival times (1 = Poisson).
	Burstiness float64 `json:"burstiness,omitempty"`
}

// Rate is requests per second; it encodes +Inf as the JSON string "inf".
type Rate float64

func (r Rate) MarshalJSON() ([]byte, error) {
	if math.IsInf(float64(r), 1) {
		return []byte(`"inf"`), nil
	}
	return json.Marshal(float64(r))
}

func (r *Rate) UnmarshalJSON(b []byte) error {
	if string(b) == `"inf"` {
		*r = Rate(math.Inf(1))
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*r = Rate(f)
	return nil
}

// Label names the level for tables and plots.
func (l Level) Label() string {
	if l.RequestRate > 0 {
		return "rate " + formatRate(float64(l.RequestRate))
	}
	return "c=" + itoa(l.Concurrency)
}

// X is the level's value on a plot's x axis: the rate in open loop, the
// concurrency in closed loop.
func (l Level) X() float64 {
	if l.RequestRate > 0 {
		return float64(l.RequestRate)
	}
	return float64(l.Concurrency)
}

// SLO are per-request service level objectives for goodput; zero fields are
// not checked.
type SLO struct {
	TTFT time.Duration
	TPOT time.Duration
	E2E  time.Duration
}

// Set reports whether any objective is set.
func (s SLO) Set() bool { return s.TTFT > 0 || s.TPOT > 0 || s.E2E > 0 }

// Meets reports whether r is successful and within every set objective.
func (s SLO) Meets(r *Result) bool {
	if !r.OK {
		return false
	}
	if s.TTFT > 0 && (r.TTFT <= 0 || r.TTFT > s.TTFT) {
		return false
	}
	if s.TPOT > 0 {
		// A one-token answer has no TPOT and so cannot miss it (as in vLLM).
		if tpot, ok := r.TPOT(); ok && tpot > s.TPOT {
			return false
		}
	}
	if s.E2E > 0 && r.Latency > s.E2E {
		return false
	}
	return true
}

// ServerStats are what the server's /metrics said while a level ran.
// KV cache usage is a fraction in [0,1], as vllm:kv_cache_usage_perc is.
type ServerStats struct {
	Samples          int     `json:"samples"`
	KVCacheUsageMax  float64 `json:"kv_cache_usage_max"`
	KVCacheUsageMean float64 `json:"kv_cache_usage_mean"`
	RunningMax       float64 `json:"num_requests_running_max"`
	RunningMean      float64 `json:"num_requests_running_mean"`
	WaitingMax       float64 `json:"num_requests_waiting_max"`
	WaitingMean      float64 `json:"num_requests_waiting_mean"`
	// Preemptions is the increase of vllm:num_preemptions_total over the
	// level; absent when the server does not export it.
	Preemptions *float64 `json:"preemptions,omitempty"`
}

// LevelResult is the aggregate of one level, in the units its JSON names.
type LevelResult struct {
	Level
	NumRequests int            `json:"num_requests"`
	Successes   int            `json:"successes"`
	Failures    int            `json:"failures"`     // errors other than 429
	Rejected429 int            `json:"rejected_429"` // counted, never retried
	Errors      map[string]int `json:"errors,omitempty"`

	DurationS            float64 `json:"duration_s"`
	RequestThroughput    float64 `json:"request_throughput"`     // successes/s
	OutputThroughput     float64 `json:"output_throughput"`      // output tok/s (the reference's TPS)
	TotalTokenThroughput float64 `json:"total_token_throughput"` // (prompt+output) tok/s
	TotalInputTokens     int     `json:"total_input_tokens"`
	TotalOutputTokens    int     `json:"total_output_tokens"`
	// OutputTokensFromServer is the share of successful requests whose
	// output count came from the server's usage rather than a client count.
	OutputTokensFromServer float64 `json:"output_tokens_from_server"`

	// Goodput is successful requests within every SLO per second; nil when
	// no SLO was given.
	Goodput      *float64 `json:"goodput,omitempty"`
	GoodRequests *int     `json:"good_requests,omitempty"`

	TTFTms Summary `json:"ttft_ms"`
	TPOTms Summary `json:"tpot_ms"`
	ITLms  Summary `json:"itl_ms"`
	E2Ems  Summary `json:"e2e_ms"`

	Server *ServerStats `json:"server,omitempty"`
}

// maxErrorKinds bounds the distinct error messages kept per level.
const maxErrorKinds = 10

// Aggregate turns one level's results into its LevelResult. duration is the
// level's wall time (first send to last completion); throughputs are per
// second of it.
func Aggregate(level Level, results []Result, duration time.Duration, slo SLO) LevelResult {
	lr := LevelResult{Level: level, NumRequests: len(results), DurationS: duration.Seconds()}
	var ttft, tpot, itl, e2e []float64
	good, fromServer := 0, 0
	for i := range results {
		r := &results[i]
		switch {
		case r.OK:
			lr.Successes++
		case r.Rejected:
			lr.Rejected429++
			continue
		default:
			lr.Failures++
			if lr.Errors == nil {
				lr.Errors = map[string]int{}
			}
			if _, seen := lr.Errors[r.Err]; seen || len(lr.Errors) < maxErrorKinds {
				lr.Errors[r.Err]++
			}
			continue
		}
		lr.TotalInputTokens += r.PromptTokens
		lr.TotalOutputTokens += r.OutputTokens
		if r.OutputFromServer {
			fromServer++
		}
		if r.TTFT > 0 {
			ttft = append(ttft, ms(r.TTFT))
		}
		if d, ok := r.TPOT(); ok {
			tpot = append(tpot, ms(d))
		}
		for _, d := range r.ITL {
			itl = append(itl, ms(d))
		}
		e2e = append(e2e, ms(r.Latency))
		if slo.Set() && slo.Meets(r) {
			good++
		}
	}
	if secs := duration.Seconds(); secs > 0 {
		lr.RequestThroughput = float64(lr.Successes) / secs
		lr.OutputThroughput = float64(lr.TotalOutputTokens) / secs
		lr.TotalTokenThroughput = float64(lr.TotalInputTokens+lr.TotalOutputTokens) / secs
		if slo.Set() {
			g := float64(good) / secs
			lr.Goodput, lr.GoodRequests = &g, &good
		}
	} else if slo.Set() {
		g := 0.0
		lr.Goodput, lr.GoodRequests = &g, &good
	}
	if lr.Successes > 0 {
		lr.OutputTokensFromServer = float64(fromServer) / float64(lr.Successes)
	}
	lr.TTFTms = Summarize(ttft)
	lr.TPOTms = Summarize(tpot)
	lr.ITLms = Summarize(itl)
	lr.E2Ems = Summarize(e2e)
	return lr
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func itoa(n int) string {
	return formatFloat(float64(n), 0)
}

func formatRate(r float64) string {
	if math.IsInf(r, 1) {
		return "inf"
	}
	return formatFloat(r, -1) + "/s"
}
