package metrics

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/llmserve/llmserve/engine"
)

// StatsLogInterval is vLLM's: an engine stats line every 10 s.
const StatsLogInterval = 10 * time.Second

// StatsLogger writes vLLM's periodic engine line (prompt and generation
// throughput, running, waiting, KV cache usage, prefix cache hit rate) for
// each interval in which the engine was busy; an idle engine logs nothing.
type StatsLogger struct {
	log   *slog.Logger
	stats func() engine.Stats
	prev  engine.Stats
	at    time.Time
}

// NewStatsLogger reads stats at each Tick.
func NewStatsLogger(log *slog.Logger, stats func() engine.Stats, now time.Time) *StatsLogger {
	return &StatsLogger{log: log, stats: stats, prev: stats(), at: now}
}

// Tick logs the interval that ends at now, if the engine was busy in it
// (tokens processed, or requests running or waiting); it reports whether
// it logged.
func (l *StatsLogger) Tick(now time.Time) bool {
	cur := l.stats()
	prev, at := l.prev, l.at
	l.prev, l.at = cur, now
	dt := now.Sub(at).Seconds()
	promptTok := cur.PromptTokens - prev.PromptTokens
	genTok := cur.GenerationTokens - prev.GenerationTokens
	if promptTok == 0 && genTok == 0 && cur.Running == 0 && cur.Waiting == 0 || dt <= 0 {
		return false
	}
	hitRate := 0.0
	if q := cur.PrefixQueries - prev.PrefixQueries; q > 0 {
		hitRate = float64(cur.PrefixHits-prev.PrefixHits) / float64(q)
	}
	attrs := []slog.Attr{
		slog.String("avg_prompt_throughput", formatRate(float64(promptTok)/dt)),
		slog.String("avg_generation_throughput", formatRate(float64(genTok)/dt)),
		slog.Int("running", cur.Running),
		slog.Int("waiting", cur.Waiting),
		slog.String("kv_cache_usage", formatPercent(cur.KVUsage)),
		slog.String("prefix_cache_hit_rate", formatPercent(hitRate)),
	}
	if p := cur.Preemptions - prev.Preemptions; p > 0 {
		attrs = append(attrs, slog.Uint64("preemptions", p))
	}
	l.log.LogAttrs(context.Background(), slog.LevelInfo, "engine stats", attrs...)
	return true
}

// Run ticks every interval until ctx ends.
func (l *StatsLogger) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			l.Tick(now)
		}
	}
}

func formatRate(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) + " tokens/s" }

func formatPercent(f float64) string { return strconv.FormatFloat(100*f, 'f', 1, 64) + "%" }
