// Command loadgen sweeps an LLM server with concurrent requests and writes
// one JSON report with every level plus a markdown table.
//
// It takes the reference loadgen.py's flags (--url --prompt --max-tokens
// --concurrency-levels --requests --output) and vLLM bench serve's load
// shapes: closed-loop concurrency, or open-loop --request-rate with gamma
// --burstiness; fixed, random or file workloads; SLO goodput.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/llmserve/llmserve/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, term.IsTerminal(int(os.Stderr.Fd()))); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
		}
		os.Exit(1)
	}
}

type options struct {
	url, endpoint, model, apiKey string
	prompt                       string
	maxTokens                    int
	levels                       string
	requests                     int
	output, table                string
	rates                        string
	burstiness                   float64
	maxConcurrency               int
	duration                     time.Duration
	warmup                       int
	inputLen, outputLen          string
	dataset                      string
	ignoreEOS, stream            bool
	seed                         uint64
	temperature, topP            float64
	topK                         int
	sloTTFT, sloTPOT, sloE2E     float64
	timeout                      time.Duration
	metricsInterval              time.Duration
	noMetrics                    bool
	notes                        string
	jsonSchema                   string
}

func parseFlags(args []string, stderr io.Writer) (*options, *flag.FlagSet, error) {
	o := &options{}
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.url, "url", "http://localhost:8000/generate", "endpoint URL, or the server's base URL")
	fs.StringVar(&o.endpoint, "endpoint", "", "generate, completions or chat (default: guessed from --url, else generate)")
	fs.StringVar(&o.model, "model", "", "model name for the OpenAI endpoints (default: the server's first /v1/models entry)")
	fs.StringVar(&o.apiKey, "api-key", os.Getenv("LLMSERVE_API_KEY"), "bearer token (default $LLMSERVE_API_KEY)")
	fs.StringVar(&o.prompt, "prompt", "Explain the theory of relativity in simple terms.", "fixed prompt (used unless --dataset or --input-len)")
	fs.IntVar(&o.maxTokens, "max-tokens", 100, "max_tokens per request (fixed prompt; default for --output-len and datasets)")
	fs.StringVar(&o.levels, "concurrency-levels", "1,2,4,8,16,32", "closed-loop concurrency levels, comma separated")
	fs.IntVar(&o.requests, "requests", 50, "requests per level (with --duration and not set: unbounded)")
	fs.StringVar(&o.output, "output", "results/benchmark_results.json", "JSON report path")
	fs.StringVar(&o.table, "table", "", "markdown table path (default: --output with .md)")
	fs.StringVar(&o.rates, "request-rate", "", "open loop: request rates in req/s, comma separated ('inf' = all at once); levels are then rates")
	fs.Float64Var(&o.burstiness, "burstiness", 1, "gamma shape of inter-arrival times (1 = Poisson, <1 burstier)")
	fs.IntVar(&o.maxConcurrency, "max-concurrency", 0, "open loop: cap on requests in flight (0 = none)")
	fs.DurationVar(&o.duration, "duration", 0, "stop issuing requests in a level after this long (e.g. 60s)")
	fs.IntVar(&o.warmup, "warmup", 0, "warm-up requests before the sweep, not measured")
	fs.StringVar(&o.inputLen, "input-len", "", "random prompts of N or LO:HI words (~tokens)")
	fs.StringVar(&o.outputLen, "output-len", "", "max_tokens N or LO:HI for random prompts (default --max-tokens)")
	fs.StringVar(&o.dataset, "dataset", "", "workload file: JSONL {prompt,max_tokens} or ShareGPT JSON")
	fs.BoolVar(&o.ignoreEOS, "ignore-eos", false, "ask the server to always generate max_tokens")
	fs.StringVar(&o.jsonSchema, "json-schema", "", "JSON Schema file constraining every request (response_format json_schema; completions and chat)")
	fs.BoolVar(&o.stream, "stream", true, "stream responses (needed for measured TTFT and ITL)")
	fs.Uint64Var(&o.seed, "seed", 0, "seed for random prompts, dataset order and arrivals")
	fs.Float64Var(&o.temperature, "temperature", 0, "sampling temperature")
	fs.Float64Var(&o.topP, "top-p", 0, "top_p (0 = not sent)")
	fs.IntVar(&o.topK, "top-k", 0, "top_k (0 = not sent)")
	fs.Float64Var(&o.sloTTFT, "slo-ttft-ms", 0, "goodput SLO on TTFT in ms (0 = none)")
	fs.Float64Var(&o.sloTPOT, "slo-tpot-ms", 0, "goodput SLO on TPOT in ms (0 = none)")
	fs.Float64Var(&o.sloE2E, "slo-e2e-ms", 0, "goodput SLO on end-to-end latency in ms (0 = none)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "per-request timeout")
	fs.DurationVar(&o.metricsInterval, "metrics-interval", 250*time.Millisecond, "how often to sample the server's /metrics")
	fs.BoolVar(&o.noMetrics, "no-metrics", false, "do not sample /metrics or read /health")
	fs.StringVar(&o.notes, "notes", "", "key=value,... recorded in the report's config (server flags, say)")
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	if fs.NArg() > 0 {
		return nil, nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return o, fs, nil
}

func parseLevels(o *options) ([]bench.Level, error) {
	var levels []bench.Level
	if o.rates != "" {
		for _, f := range strings.Split(o.rates, ",") {
			f = strings.TrimSpace(f)
			r := math.Inf(1)
			if f != "inf" {
				var err error
				if r, err = strconv.ParseFloat(f, 64); err != nil || r <= 0 {
					return nil, fmt.Errorf("--request-rate: bad rate %q", f)
				}
			}
			levels = append(levels, bench.Level{RequestRate: bench.Rate(r), Burstiness: o.burstiness, Concurrency: o.maxConcurrency})
		}
		return levels, nil
	}
	for _, f := range strings.Split(o.levels, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || c < 1 {
			return nil, fmt.Errorf("--concurrency-levels: bad level %q", f)
		}
		levels = append(levels, bench.Level{Concurrency: c})
	}
	return levels, nil
}

func workload(o *options, cfg *bench.Config) (bench.Workload, error) {
	switch {
	case o.dataset != "":
		l, err := bench.LoadFile(o.dataset, o.maxTokens)
		if err != nil {
			return nil, err
		}
		cfg.Workload = o.dataset
		if o.outputLen != "" { // an explicit output length overrides the file's
			r, err := bench.ParseRange(o.outputLen)
			if err != nil {
				return nil, err
			}
			for i := range l {
				l[i].MaxTokens = r.Hi
			}
			cfg.OutputLen = r.String()
		}
		if o.seed != 0 {
			l = l.Shuffled(o.seed)
		}
		return l, nil
	case o.inputLen != "":
		in, err := bench.ParseRange(o.inputLen)
		if err != nil {
			return nil, err
		}
		outS := o.outputLen
		if outS == "" {
			outS = strconv.Itoa(o.maxTokens)
		}
		out, err := bench.ParseRange(outS)
		if err != nil {
			return nil, err
		}
		cfg.Workload, cfg.InputLen, cfg.OutputLen = "random", in.String(), out.String()
		return bench.Random{InputLen: in, OutputLen: out, Seed: o.seed}, nil
	default:
		if o.prompt == "" {
			return nil, errors.New("empty --prompt")
		}
		cfg.Workload, cfg.Prompt, cfg.MaxTokens = "fixed", o.prompt, o.maxTokens
		return bench.Fixed{Prompt: o.prompt, MaxTokens: o.maxTokens}, nil
	}
}

func run(ctx context.Context, args []string, stderr io.Writer, tty bool) error {
	o, fs, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	if o.duration > 0 && !explicit["requests"] {
		o.requests = 0 // time-bound levels
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	levels, err := parseLevels(o)
	if err != nil {
		return err
	}
	var ep bench.Endpoint
	if o.endpoint != "" {
		if ep, err = bench.ParseEndpoint(o.endpoint); err != nil {
			return err
		}
	}
	var schema []byte
	if o.jsonSchema != "" {
		if schema, err = os.ReadFile(o.jsonSchema); err != nil {
			return fmt.Errorf("--json-schema: %w", err)
		}
	}
	client, err := bench.NewClient(bench.ClientOptions{
		URL: o.url, Endpoint: ep, Model: o.model, APIKey: o.apiKey, Stream: o.stream,
		IgnoreEOS: o.ignoreEOS, Temperature: o.temperature, TopP: o.topP, TopK: o.topK, Timeout: o.timeout,
		JSONSchema: schema,
	})
	if err != nil {
		return err
	}
	cfg := bench.Config{
		URL: client.URL(), Endpoint: string(client.Endpoint()), Model: o.model, Stream: o.stream,
		Requests: o.requests, DurationS: o.duration.Seconds(), Warmup: o.warmup, IgnoreEOS: o.ignoreEOS, JSONSchema: o.jsonSchema,
		Seed: o.seed, Temperature: o.temperature, TimeoutS: o.timeout.Seconds(),
		SLOTTFTms: o.sloTTFT, SLOTPOTms: o.sloTPOT, SLOE2Ems: o.sloE2E,
	}
	if o.notes != "" {
		cfg.Notes = map[string]string{}
		for _, kv := range strings.Split(o.notes, ",") {
			k, v, _ := strings.Cut(kv, "=")
			cfg.Notes[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	w, err := workload(o, &cfg)
	if err != nil {
		return err
	}

	scraper := &bench.Scraper{Base: client.BaseURL(), APIKey: o.apiKey, HTTP: client.HTTPClient(), Interval: o.metricsInterval}
	var env bench.Environment
	if o.noMetrics {
		env = bench.CollectEnvironment(ctx, nil)
		env.ServerURL = client.BaseURL()
	} else {
		env = bench.CollectEnvironment(ctx, scraper)
	}
	if client.Endpoint() != bench.EndpointGenerate && o.model == "" {
		if env.Model == "" {
			return errors.New("--model not given and the server's /v1/models named none")
		}
		client.SetModel(env.Model)
		cfg.Model = env.Model
	}
	if cfg.Model == "" {
		cfg.Model = env.Model
	}
	report := &bench.Report{Version: bench.ReportVersion, Environment: env, Config: cfg}
	slo := bench.SLO{TTFT: msDur(o.sloTTFT), TPOT: msDur(o.sloTPOT), E2E: msDur(o.sloE2E)}

	log.Info("sweep", "url", client.URL(), "endpoint", client.Endpoint(), "model", cfg.Model,
		"workload", cfg.Workload, "levels", len(levels), "requests", o.requests, "duration", o.duration)
	if o.warmup > 0 {
		failed, err := bench.Warmup(ctx, client, w, o.warmup, levels[0].Concurrency)
		if err != nil {
			return err
		}
		log.Info("warm-up done", "requests", o.warmup, "failed", failed)
	}

	var runErr error
	for i, lv := range levels {
		bar := &progressBar{out: stderr, tty: tty}
		opts := bench.RunOptions{Requests: o.requests, Duration: o.duration, Seed: o.seed + uint64(i), SLO: slo,
			Progress: bar.update}
		if !o.noMetrics {
			opts.Monitor = scraper.Monitor
		}
		lr, _, err := bench.RunLevel(ctx, client, w, lv, opts)
		bar.finish()
		report.Levels = append(report.Levels, lr)
		log.Info("level", "level", lv.Label(), "ok", lr.Successes, "failed", lr.Failures, "429", lr.Rejected429,
			"req/s", round(lr.RequestThroughput, 2), "out_tok/s", round(lr.OutputThroughput, 1),
			"ttft_p50_ms", round(lr.TTFTms.P50, 1), "ttft_p99_ms", round(lr.TTFTms.P99, 1),
			"tpot_p50_ms", round(lr.TPOTms.P50, 1), "e2e_p99_ms", round(lr.E2Ems.P99, 1))
		for msg, n := range lr.Errors {
			log.Warn("errors", "level", lv.Label(), "count", n, "error", msg)
		}
		if err != nil {
			runErr = err // interrupted: keep what finished
			break
		}
	}
	if err := writeOutputs(report, o.output, o.table); err != nil {
		return err
	}
	log.Info("wrote", "json", o.output, "table", tablePath(o.output, o.table))
	if runErr != nil {
		return runErr
	}
	total := 0
	for _, l := range report.Levels {
		total += l.Successes
	}
	if total == 0 {
		return errors.New("no request succeeded")
	}
	return nil
}

func tablePath(output, table string) string {
	if table != "" {
		return table
	}
	return strings.TrimSuffix(output, filepath.Ext(output)) + ".md"
}

func writeOutputs(r *bench.Report, output, table string) error {
	if dir := filepath.Dir(output); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if err := r.WriteJSON(output); err != nil {
		return err
	}
	tp := tablePath(output, table)
	if err := os.MkdirAll(filepath.Dir(tp), 0o755); err != nil {
		return err
	}
	return os.WriteFile(tp, []byte(r.Markdown()), 0o644)
}

func msDur(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }

func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}

// progressBar redraws one status line on a terminal, at most every 100 ms;
// elsewhere it prints nothing (the per-level log line suffices).
type progressBar struct {
	out  io.Writer
	tty  bool
	last time.Time
	drew bool
}

func (b *progressBar) update(p bench.Progress) {
	if !b.tty || time.Since(b.last) < 100*time.Millisecond && p.Done != p.Total {
		return
	}
	b.last = time.Now()
	frac := 0.0
	switch {
	case p.Total > 0:
		frac = float64(p.Done) / float64(p.Total)
	case p.Duration > 0:
		frac = min(1, p.Elapsed.Seconds()/p.Duration.Seconds())
	}
	const width = 30
	n := int(frac * width)
	total := "?"
	if p.Total > 0 {
		total = strconv.Itoa(p.Total)
	}
	fmt.Fprintf(b.out, "\r%-10s [%s%s] %d/%s ok %d 429 %d err %d %.1fs ", p.Level.Label(),
		strings.Repeat("#", n), strings.Repeat("-", width-n), p.Done, total, p.OK, p.Reject, p.Failed, p.Elapsed.Seconds())
	b.drew = true
}

func (b *progressBar) finish() {
	if b.drew {
		fmt.Fprint(b.out, "\r\033[K")
	}
}
