package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// ReportVersion is the JSON schema version written by this package.
const ReportVersion = 1

// Config records how a sweep was run.
type Config struct {
	URL         string  `json:"url,omitempty"`
	Endpoint    string  `json:"endpoint,omitempty"`
	Model       string  `json:"model,omitempty"`
	Stream      bool    `json:"stream"`
	Workload    string  `json:"workload"` // "fixed", "random", a file path, or "engine"
	Prompt      string  `json:"prompt,omitempty"`
	MaxTokens   int     `json:"max_tokens,omitempty"`
	InputLen    string  `json:"input_len,omitempty"`
	OutputLen   string  `json:"output_len,omitempty"`
	Requests    int     `json:"requests_per_level,omitempty"`
	DurationS   float64 `json:"duration_s,omitempty"`
	Warmup      int     `json:"warmup,omitempty"`
	IgnoreEOS   bool    `json:"ignore_eos,omitempty"`
	JSONSchema  string  `json:"json_schema,omitempty"` // the schema file every request was constrained by
	Seed        uint64  `json:"seed"`
	Temperature float64 `json:"temperature"`
	TimeoutS    float64 `json:"timeout_s,omitempty"`
	SLOTTFTms   float64 `json:"slo_ttft_ms,omitempty"`
	SLOTPOTms   float64 `json:"slo_tpot_ms,omitempty"`
	SLOE2Ems    float64 `json:"slo_e2e_ms,omitempty"`
	// Notes are free-form facts about the run (server flags, say).
	Notes map[string]string `json:"notes,omitempty"`
}

// Report is a whole sweep: what ran, where, and each level's numbers.
type Report struct {
	Version     int           `json:"version"`
	Environment Environment   `json:"environment"`
	Config      Config        `json:"config"`
	Levels      []LevelResult `json:"levels"`
}

// WriteJSON writes r, indented, to path.
func (r *Report) WriteJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// ReadReport loads a report written by WriteJSON.
func ReadReport(path string) (*Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(r.Levels) == 0 {
		return nil, fmt.Errorf("%s: no levels", path)
	}
	return &r, nil
}

// Saturation thresholds: throughput gains under SaturationGain while p99
// TTFT grows by SaturationTTFTJump or more mark the saturation point.
const (
	SaturationGain     = 0.10
	SaturationTTFTJump = 2.0
)

// Saturation finds the first level (index into levels, which must be in
// increasing load order) whose output throughput grew less than 10% over
// the previous level while its p99 TTFT at least doubled. It returns -1
// when there is none; plateau is the first level where throughput alone
// stopped growing (-1 if none), for runs that flatten without a TTFT jump.
func Saturation(levels []LevelResult) (saturated, plateau int) {
	saturated, plateau = -1, -1
	for i := 1; i < len(levels); i++ {
		prev, cur := levels[i-1], levels[i]
		if prev.OutputThroughput <= 0 {
			continue
		}
		gain := cur.OutputThroughput/prev.OutputThroughput - 1
		if gain >= SaturationGain {
			continue
		}
		if plateau < 0 {
			plateau = i
		}
		if prev.TTFTms.P99 > 0 && cur.TTFTms.P99/prev.TTFTms.P99 >= SaturationTTFTJump {
			return i, plateau
		}
	}
	return -1, plateau
}

// baseline is the level that scaling factors compare against: concurrency
// 1 in a closed-loop sweep, else the first.
func baseline(levels []LevelResult) int {
	for i, l := range levels {
		if l.RequestRate == 0 && l.Concurrency == 1 {
			return i
		}
	}
	return 0
}

// Markdown renders r like the reference's results_table.md: throughput
// with the scaling factor against concurrency 1 and the saturation point
// marked, latency percentiles, outcomes and goodput, and KV cache use.
func (r *Report) Markdown() string {
	var b strings.Builder
	env := r.Environment
	levels := r.Levels
	openLoop := len(levels) > 0 && levels[0].RequestRate > 0
	col := "Concurrency"
	if openLoop {
		col = "Rate (req/s)"
	}
	key := func(l LevelResult) string {
		if openLoop {
			return formatRate(float64(l.RequestRate))
		}
		return strconv.Itoa(l.Concurrency)
	}

	b.WriteString("# Benchmark results\n\n")
	hw := env.CPUModel
	if hw == "" {
		hw = "unknown CPU"
	}
	fmt.Fprintf(&b, "- Hardware: %s, %d cores", hw, env.Cores)
	if env.MemoryBytes > 0 {
		fmt.Fprintf(&b, ", %.1f GiB RAM", float64(env.MemoryBytes)/(1<<30))
	}
	for _, g := range env.GPUs {
		fmt.Fprintf(&b, "; GPU %s", g)
	}
	fmt.Fprintf(&b, " (%s/%s, %s)\n", env.GOOS, env.GOARCH, env.GoVersion)
	if env.Model != "" || r.Config.Model != "" {
		m := r.Config.Model
		if m == "" {
			m = env.Model
		}
		fmt.Fprintf(&b, "- Model: %s\n", m)
	}
	c := r.Config
	fmt.Fprintf(&b, "- Endpoint: %s %s (stream=%v)\n", c.Endpoint, c.URL, c.Stream)
	wl := c.Workload
	switch {
	case c.Workload == "random":
		wl = fmt.Sprintf("random prompts, input %s tokens, output %s tokens", c.InputLen, c.OutputLen)
	case c.Prompt != "":
		wl = fmt.Sprintf("fixed prompt %q, max_tokens %d", c.Prompt, c.MaxTokens)
	}
	if c.IgnoreEOS {
		wl += ", ignore_eos"
	}
	fmt.Fprintf(&b, "- Workload: %s\n", wl)
	per := ""
	if c.Requests > 0 {
		per = fmt.Sprintf("%d requests", c.Requests)
	}
	if c.DurationS > 0 {
		per = strings.TrimPrefix(per+fmt.Sprintf(" / %gs", c.DurationS), " / ")
	}
	fmt.Fprintf(&b, "- Per level: %s; warm-up %d\n", per, c.Warmup)
	if env.GitCommit != "" {
		dirty := ""
		if env.GitDirty {
			dirty = " (dirty)"
		}
		fmt.Fprintf(&b, "- Commit: %s%s, %s\n", short(env.GitCommit), dirty, env.Time)
	}

	sat, plateau := Saturation(levels)
	base := baseline(levels)
	fmt.Fprintf(&b, "\n## Throughput vs %s\n\n", strings.ToLower(strings.Fields(col)[0]))
	fmt.Fprintf(&b, "| %s | OK | Failed | 429 | Req/s | Output tok/s (TPS) | Total tok/s | Scaling Factor |\n", col)
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for i, l := range levels {
		scale := "-"
		if bt := levels[base].OutputThroughput; bt > 0 {
			scale = fmt.Sprintf("%.1fx", l.OutputThroughput/bt)
		}
		switch {
		case i == base:
			scale += " (baseline)"
		case i == sat:
			scale += " (saturated)"
		case sat < 0 && i == plateau:
			scale += " (plateau)"
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %.2f | %.1f | %.1f | %s |\n", key(l), l.Successes,
			l.Failures, l.Rejected429, l.RequestThroughput, l.OutputThroughput, l.TotalTokenThroughput, scale)
	}
	switch {
	case sat > 0:
		p, s := levels[sat-1], levels[sat]
		fmt.Fprintf(&b, "\nSaturation point: %s %s — output throughput %+.1f%% over %s while p99 TTFT went %s → %s (%.1fx).\n",
			strings.ToLower(col), key(s), 100*(s.OutputThroughput/p.OutputThroughput-1), key(p),
			fmtMs(p.TTFTms.P99), fmtMs(s.TTFTms.P99), s.TTFTms.P99/p.TTFTms.P99)
	case plateau > 0:
		p, s := levels[plateau-1], levels[plateau]
		fmt.Fprintf(&b, "\nThroughput plateau at %s %s (%+.1f%% over %s) without a p99 TTFT jump (%s → %s).\n",
			strings.ToLower(col), key(s), 100*(s.OutputThroughput/p.OutputThroughput-1), key(p),
			fmtMs(p.TTFTms.P99), fmtMs(s.TTFTms.P99))
	default:
		b.WriteString("\nNo saturation within the levels run (throughput grew ≥10% at every step).\n")
	}

	b.WriteString("\n## Latency\n\n")
	fmt.Fprintf(&b, "| %s | Avg TTFT | P50 TTFT | P95 TTFT | P99 TTFT | P50 TPOT | P99 TPOT | P50 ITL | P99 ITL | P50 E2E | P95 E2E | P99 E2E |\n", col)
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, l := range levels {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", key(l),
			fmtMs(l.TTFTms.Mean), fmtMs(l.TTFTms.P50), fmtMs(l.TTFTms.P95), fmtMs(l.TTFTms.P99),
			fmtMs(l.TPOTms.P50), fmtMs(l.TPOTms.P99), fmtMs(l.ITLms.P50), fmtMs(l.ITLms.P99),
			fmtMs(l.E2Ems.P50), fmtMs(l.E2Ems.P95), fmtMs(l.E2Ems.P99))
	}

	if slices.ContainsFunc(levels, func(l LevelResult) bool { return l.Goodput != nil }) {
		fmt.Fprintf(&b, "\n## Goodput (SLO: TTFT ≤ %s, TPOT ≤ %s, E2E ≤ %s)\n\n",
			sloText(c.SLOTTFTms), sloText(c.SLOTPOTms), sloText(c.SLOE2Ems))
		fmt.Fprintf(&b, "| %s | Good requests | Goodput (req/s) | Share of successes |\n|---|---|---|---|\n", col)
		for _, l := range levels {
			if l.Goodput == nil {
				continue
			}
			share := 0.0
			if l.Successes > 0 {
				share = 100 * float64(*l.GoodRequests) / float64(l.Successes)
			}
			fmt.Fprintf(&b, "| %s | %d | %.2f | %.0f%% |\n", key(l), *l.GoodRequests, *l.Goodput, share)
		}
	}

	b.WriteString("\n## Memory and KV cache\n\n| Component | Value |\n|---|---|\n")
	fmt.Fprintf(&b, "| Model weights | %s |\n", bytesText(env.WeightsBytes))
	if env.KVCacheBytes != nil {
		fmt.Fprintf(&b, "| KV cache memory | %s |\n", bytesText(env.KVCacheBytes))
	}
	capTok := "not reported"
	switch {
	case env.KVCacheCapacityTokens != nil:
		capTok = fmt.Sprintf("%.0f tokens", *env.KVCacheCapacityTokens)
		if env.KVCacheBlocks != nil && env.KVBlockSize != nil {
			capTok += fmt.Sprintf(" (%.0f blocks of %.0f)", *env.KVCacheBlocks, *env.KVBlockSize)
		}
	case env.KVCacheBlocks != nil:
		capTok = fmt.Sprintf("%.0f blocks (block size not reported)", *env.KVCacheBlocks)
	}
	fmt.Fprintf(&b, "| KV cache capacity | %s |\n", capTok)
	if slices.ContainsFunc(levels, func(l LevelResult) bool { return l.Server != nil }) {
		fmt.Fprintf(&b, "\n| %s | KV cache used (max) | KV cache used (mean) | Running (max) | Waiting (max) | Preemptions |\n|---|---|---|---|---|---|\n", col)
		for _, l := range levels {
			s := l.Server
			if s == nil {
				fmt.Fprintf(&b, "| %s | - | - | - | - | - |\n", key(l))
				continue
			}
			pre := "-"
			if s.Preemptions != nil {
				pre = strconv.FormatFloat(*s.Preemptions, 'f', 0, 64)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %.0f | %.0f | %s |\n", key(l),
				kvText(s.KVCacheUsageMax, env.KVCacheCapacityTokens), kvText(s.KVCacheUsageMean, env.KVCacheCapacityTokens),
				s.RunningMax, s.WaitingMax, pre)
		}
	} else {
		b.WriteString("\nThe server's /metrics was not sampled (or exported no KV cache gauge).\n")
	}

	var errs []string
	for _, l := range levels {
		for msg, n := range l.Errors {
			errs = append(errs, fmt.Sprintf("- %s: %d× %s", key(l), n, msg))
		}
	}
	if len(errs) > 0 {
		slices.Sort(errs)
		b.WriteString("\n## Errors\n\n" + strings.Join(errs, "\n") + "\n")
	}
	return b.String()
}

func fmtMs(v float64) string {
	switch {
	case v == 0 || math.IsNaN(v):
		return "-"
	case v >= 1000:
		return fmt.Sprintf("%.2fs", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0fms", v)
	default:
		return fmt.Sprintf("%.1fms", v)
	}
}

func sloText(v float64) string {
	if v <= 0 {
		return "—"
	}
	return fmtMs(v)
}

func bytesText(v *float64) string {
	if v == nil {
		return "not reported"
	}
	return fmt.Sprintf("%.2f GiB", *v/(1<<30))
}

func kvText(frac float64, capacity *float64) string {
	s := fmt.Sprintf("%.1f%%", 100*frac)
	if capacity != nil {
		s += fmt.Sprintf(" (%.0f tok)", frac**capacity)
	}
	return s
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

func formatFloat(x float64, prec int) string { return strconv.FormatFloat(x, 'f', prec, 64) }
