// Command cudabench measures the engine alone (no HTTP): closed-loop
// clients submit fixed-length greedy requests (ignore_eos) to an in-process
// engine.Local over a model on the CUDA (or CPU) backend, at several
// concurrency levels, and prints a JSON report and a markdown table.
//
//	cudabench -model Qwen/Qwen2.5-1.5B -load-format dummy -dtype bfloat16 -out engine.json
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/ml/cuda"
	"github.com/llmserve/llmserve/model"
	_ "github.com/llmserve/llmserve/model/models" // registers every architecture
	"github.com/llmserve/llmserve/sample"
)

type result struct {
	Concurrency  int     `json:"concurrency"`
	Requests     int     `json:"requests"`
	OutputTokens int     `json:"output_tokens"`
	Seconds      float64 `json:"seconds"`
	TokPerS      float64 `json:"output_tok_per_s"`
	TTFTP50ms    float64 `json:"ttft_p50_ms"`
	TTFTP99ms    float64 `json:"ttft_p99_ms"`
	TPOTms       float64 `json:"tpot_mean_ms"`
}

func main() {
	var (
		modelName  = flag.String("model", "Qwen/Qwen2.5-1.5B", "model directory or built-in name")
		loadFormat = flag.String("load-format", "dummy", "auto | dummy")
		dtype      = flag.String("dtype", "bfloat16", "weight dtype")
		device     = flag.String("device", "cuda", "cuda | cpu")
		conc       = flag.String("concurrency", "1,2,4,8,16,32,64,128,256", "comma-separated concurrency levels")
		promptLen  = flag.Int("prompt-tokens", 12, "prompt length")
		outLen     = flag.Int("output-tokens", 100, "output tokens per request (ignore_eos)")
		rounds     = flag.Int("rounds", 0, "requests per client per level (0: max(2, 16/c), as the HTTP sweep's max(2c, 16) requests)")
		skinny     = flag.Int("skinny-max-t", 0, "cuda.Options.SkinnyMaxT (0: the backend's default; -1: cuBLAS always)")
		gemv       = flag.Int("gemv-max-t", 0, "cuda.Options.GemvMaxT (0: the backend's default; -1: cuBLAS for bf16 decode MatMuls)")
		fusedMaxT  = flag.Int("fused-decode-max-t", 0, "cuda.Options.FusedDecodeMaxT (0: the backend's default; -1: unfused decode)")
		pdl        = flag.Bool("pdl", false, "launch with programmatic dependent launch (cuda.Options.EnablePDL)")
		noStep     = flag.Bool("no-step-kernel", false, "run one-token steps layer by layer (cuda.Options.DisableStepKernel)")
		numBlocks  = flag.Int("num-blocks", 4096, "KV blocks of 16 tokens")
		maxLen     = flag.Int("max-model-len", 4096, "max model length")
		noGraphs   = flag.Bool("no-graphs", false, "disable CUDA graphs")
		out        = flag.String("out", "", "write the JSON report here")
	)
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := run(log, *modelName, *loadFormat, *dtype, *device, *conc, *promptLen, *outLen, *rounds, *numBlocks, *maxLen, cuda.Options{Logger: log, DisableGraphs: *noGraphs, SkinnyMaxT: *skinny, GemvMaxT: *gemv,
		FusedDecodeMaxT: *fusedMaxT, EnablePDL: *pdl, DisableStepKernel: *noStep}, *out); err != nil {
		fmt.Fprintln(os.Stderr, "cudabench:", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, modelName, loadFormat, dtype, device, conc string, promptLen, outLen, rounds, numBlocks, maxLen int, co cuda.Options, out string) error {
	var be ml.Backend
	devName := "cpu"
	switch device {
	case "cuda":
		b, err := cuda.NewBackend(co)
		if err != nil {
			return err
		}
		be, devName = b, b.DeviceName()
	case "cpu":
		be = cpu.New(cpu.Options{Logger: log})
	default:
		return fmt.Errorf("unknown device %q", device)
	}
	defer be.Close()
	t0 := time.Now()
	m, err := model.Load(modelName, model.LoadOptions{Backend: be, LoadFormat: loadFormat, DType: dtype, Logger: log})
	if err != nil {
		return err
	}
	defer m.Close()
	log.Info("model loaded", "seconds", time.Since(t0).Seconds(), "weight_bytes", m.WeightBytes())
	e, err := engine.New(m, engine.Options{NumBlocks: numBlocks, MaxModelLen: maxLen, MaxNumSeqs: 256, Logger: log})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()

	vocab := m.Config().VocabSize
	var levels []int
	for _, s := range strings.Split(conc, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || c <= 0 {
			return fmt.Errorf("bad concurrency %q", s)
		}
		levels = append(levels, c)
	}
	var results []result
	// Warm-up: one short round at every level first, so that lazily
	// loaded kernels and graph captures are not measured.
	for _, c := range levels {
		if _, err := level(ctx, e, c, 1, promptLen, 8, vocab); err != nil {
			return err
		}
	}
	for _, c := range levels {
		n := rounds
		if n <= 0 {
			n = max(2, (16+c-1)/c)
		}
		r, err := level(ctx, e, c, n, promptLen, outLen, vocab)
		if err != nil {
			return err
		}
		log.Info("level done", "concurrency", c, "tok_per_s", r.TokPerS, "ttft_p99_ms", r.TTFTP99ms)
		results = append(results, r)
	}
	cancel()
	<-done
	fmt.Printf("\n| concurrency | output tok/s | TTFT p50 ms | TTFT p99 ms | TPOT ms |\n|---|---|---|---|---|\n")
	for _, r := range results {
		fmt.Printf("| %d | %.0f | %.1f | %.1f | %.2f |\n", r.Concurrency, r.TokPerS, r.TTFTP50ms, r.TTFTP99ms, r.TPOTms)
	}
	if out != "" {
		rep := map[string]any{"engine": "llmserve engine.Local (no HTTP), backend " + be.Name(), "device": devName,
			"model": modelName, "dtype": dtype, "prompt_tokens": promptLen, "output_tokens": outLen, "results": results}
		data, _ := json.MarshalIndent(rep, "", " ")
		return os.WriteFile(out, data, 0o644)
	}
	return nil
}

// level runs c closed-loop clients, each sending rounds requests.
func level(ctx context.Context, e *engine.Local, c, rounds, promptLen, outLen, vocab int) (result, error) {
	var mu sync.Mutex
	var ttfts []float64
	var tpots []float64
	tokens := 0
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), uint64(c)))
			for i := 0; i < rounds; i++ {
				prompt := make([]int, promptLen)
				for j := range prompt {
					prompt[j] = 100 + r.IntN(vocab-200)
				}
				p := sample.Defaults()
				p.Temperature, p.MaxTokens, p.IgnoreEOS = 0, outLen, true
				ch, err := e.Submit(ctx, &engine.Request{ID: fmt.Sprintf("%d-%d-%d", c, w, i), PromptIDs: prompt, Params: p})
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					return
				}
				n := 0
				var first, last, arrival time.Time
				for o := range ch {
					n += len(o.TokenIDs)
					if first.IsZero() && len(o.TokenIDs) > 0 {
						first, arrival = o.FirstToken, o.ArrivalTime
					}
					last = o.Time
					if o.FinishReason != "" && o.FinishReason != engine.FinishLength {
						mu.Lock()
						firstErr = fmt.Errorf("request %s finished with %q after %d tokens (ignore_eos: want %q)",
							o.RequestID, o.FinishReason, n, engine.FinishLength)
						mu.Unlock()
					}
				}
				mu.Lock()
				tokens += n
				if !first.IsZero() {
					ttfts = append(ttfts, first.Sub(arrival).Seconds()*1e3)
					if n > 1 {
						tpots = append(tpots, last.Sub(first).Seconds()*1e3/float64(n-1))
					}
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	sec := time.Since(start).Seconds()
	if firstErr != nil {
		return result{}, firstErr
	}
	slices.Sort(ttfts)
	pct := func(p float64) float64 {
		if len(ttfts) == 0 {
			return 0
		}
		return ttfts[min(len(ttfts)-1, int(p*float64(len(ttfts))))]
	}
	mean := 0.0
	for _, v := range tpots {
		mean += v / float64(len(tpots))
	}
	return result{Concurrency: c, Requests: c * rounds, OutputTokens: tokens, Seconds: sec,
		TokPerS: float64(tokens) / sec, TTFTP50ms: pct(0.5), TTFTP99ms: pct(0.99), TPOTms: mean}, nil
}
