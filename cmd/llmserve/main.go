// Command llmserve serves an LLM over HTTP: the reference server's
// endpoints and the OpenAI API, on llmserve's own engine. Flags use vLLM's
// names (see -help).
//
//	llmserve --model Qwen/Qwen2.5-1.5B-Instruct --max-model-len 4096 --max-concurrent-requests 64
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/hub"
	"github.com/llmserve/llmserve/metrics"
	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/decoder"
	_ "github.com/llmserve/llmserve/model/models" // registers every architecture
	"github.com/llmserve/llmserve/server"
	"github.com/llmserve/llmserve/tokenizer"
)

// defaultMaxModelLen is the context without --max-model-len for a model
// whose config states no max_position_embeddings.
const defaultMaxModelLen = 8192

// defaultCPUKVMemory is the KV cache on the CPU without --kv-cache-memory.
const defaultCPUKVMemory = 1 << 30

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Getenv, os.Stdout)
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, errVersion) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmserve:", err)
		os.Exit(2)
	}
	log := newLogger(cfg, os.Stderr)
	slog.SetDefault(log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go onSignals(sigs, cancel, func() { os.Exit(1) }, log)
	if err := serve(ctx, cfg, log, nil); err != nil {
		log.Error("llmserve failed", "err", err)
		os.Exit(1)
	}
}

// onSignals cancels the server's context (a drain) on the first SIGTERM or
// SIGINT and calls exit on the second: an operator pressing Ctrl-C twice,
// or an orchestrator that gave up waiting, wants the process gone now.
func onSignals(sigs <-chan os.Signal, drain context.CancelFunc, exit func(), log *slog.Logger) {
	sig, ok := <-sigs
	if !ok {
		return
	}
	log.Info("signal: shutting down (again to exit at once)", "signal", sig.String())
	drain()
	if sig, ok = <-sigs; ok {
		log.Warn("second signal: exiting now", "signal", sig.String())
		exit()
	}
}

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serve runs until ctx ends (SIGTERM), then drains: /health and new
// requests get 503 while in-flight ones finish, for at most
// --shutdown-timeout. onListen, if set, gets the bound address (tests).
func serve(ctx context.Context, cfg *config, log *slog.Logger, onListen func(addr string)) error {
	phases := newPhaseLog(log)
	log.Info("starting", "version", versionString(), "model", cfg.Model)
	if len(cfg.Accepted) > 0 {
		log.Info("vLLM flags accepted that need nothing here", "flags", cfg.Accepted)
	}
	tlsCfg, err := tlsConfig(cfg) // before a download: a bad key fails at once
	if err != nil {
		return err
	}
	dir, mcfg, err := resolveModel(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped while resolving the model") // a signal during a download
			return nil
		}
		return err
	}
	phases.done("resolve model")
	if n := cfg.TensorParallelSize; n > 1 {
		// Before any device is opened: heads, KV heads, intermediate sizes.
		if err := decoder.CheckTensorParallel(mcfg, decoder.Spec{MoE: decoder.MoEFromConfig(mcfg)}, n); err != nil {
			return err
		}
	}
	// The device opens, and its kernels start compiling, while the
	// tokenizer loads and the server starts listening.
	devCh := make(chan openedDevice, 1)
	go func() { devCh <- openDevice(cfg) }()
	devTaken := false
	defer func() {
		if !devTaken { // an early return: nothing else will close it
			(<-devCh).close(log)
		}
	}()
	var tok *tokenizer.Tokenizer
	if !cfg.SkipTokenizerInit {
		tdir := cfg.Tokenizer
		if tdir == "" {
			tdir = dir
		}
		if tdir == "" {
			return fmt.Errorf("built-in model %s has no tokenizer: give --tokenizer DIR or --skip-tokenizer-init", cfg.Model)
		}
		if tok, err = tokenizer.LoadDir(tdir); err != nil {
			return fmt.Errorf("loading the tokenizer from %s (or pass --skip-tokenizer-init): %w", tdir, err)
		}
		if err := checkTokenizerVocab(tok.VocabSize(), tdir, mcfg); err != nil {
			return err
		}
		if cfg.ChatTemplate != "" {
			src, err := chatTemplateSource(cfg.ChatTemplate)
			if err != nil {
				return err
			}
			if err := tok.SetChatTemplate(src); err != nil {
				return fmt.Errorf("--chat-template: %w", err)
			}
		}
		phases.done("load tokenizer", "vocab", tok.VocabSize())
	}
	defaults, genPath, err := generationDefaults(cfg, dir)
	if err != nil {
		return err
	}
	if !defaults.IsZero() {
		log.Info("default sampling parameters from the model's generation config (for requests that do not set them)", "file", genPath,
			"temperature", ptrAttr(defaults.Temperature), "top_p", ptrAttr(defaults.TopP), "top_k", ptrAttr(defaults.TopK),
			"repetition_penalty", ptrAttr(defaults.RepetitionPenalty))
	}
	// Without --max-model-len, the model's whole context, as vLLM: lowered
	// to what the KV cache holds once it is sized (where vLLM refuses to
	// start).
	maxLen := cfg.MaxModelLen
	if maxLen == 0 {
		maxLen = defaultMaxModelLen
		if mcfg.MaxPositionEmbeddings > 0 {
			maxLen = mcfg.MaxPositionEmbeddings
		}
	} else if mcfg.MaxPositionEmbeddings > 0 && maxLen > mcfg.MaxPositionEmbeddings {
		log.Warn("--max-model-len exceeds the model's max_position_embeddings", "max_model_len", maxLen, "max_position_embeddings", mcfg.MaxPositionEmbeddings)
	}
	names := cfg.ServedModelNames
	if len(names) == 0 {
		names = []string{cfg.Model}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	sopts := server.Options{
		ModelNames: names, ModelRoot: cfg.Model, MaxModelLen: maxLen, VocabSize: mcfg.VocabSize,
		MaxConcurrentRequests: cfg.MaxConcurrentRequests, MaxQueueWait: cfg.MaxQueueWait, APIKey: cfg.APIKey,
		MaxLogprobs: cfg.MaxLogprobs, MaxNumSeqs: cfg.MaxNumSeqs, Registry: reg, Logger: log,
		RequestLog: server.RequestLogOptions{Disabled: cfg.DisableLogRequests || cfg.DisableAccessLog,
			Verbose: cfg.EnableLogRequests, MaxLen: cfg.MaxLogLen},
		SamplingDefaults: defaults, ReturnTokensAsTokenIDs: cfg.ReturnTokensAsTokenIDs, Version: readBuildInfo(),
		StreamWriteTimeout: cfg.StreamWriteTimeout, ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		BodyReadTimeout: cfg.BodyReadTimeout, IdleTimeout: cfg.IdleTimeout,
		MaxConnections: maxConnections(cfg.MaxConnections, log),

		EnableAutoToolChoice: cfg.EnableAutoToolChoice, ToolCallParser: cfg.ToolCallParser,
		ReasoningParser: cfg.ReasoningParser, EOSTokenIDs: eosIDs(dir, mcfg, tok),

		CORS: &server.CORSOptions{AllowedOrigins: cfg.AllowedOrigins, AllowedMethods: cfg.AllowedMethods,
			AllowedHeaders: cfg.AllowedHeaders, AllowCredentials: cfg.AllowCredentials},
		TLSConfig: tlsCfg,
	}
	if tok != nil {
		sopts.Tokenizer = tok
	}
	srv, err := server.New(sopts)
	if err != nil {
		return err
	}

	// Listen before loading, so /health answers 503 "loading" meanwhile.
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		return err
	}
	httpSrv := srv.NewHTTPServer()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(httpSrv, ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	if onListen != nil {
		onListen(ln.Addr().String())
	}
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	log.Info("listening (loading the model)", "address", ln.Addr().String(), "scheme", scheme)

	// Loading, profiling and warm-up stop on a signal (gctx); the engine
	// runs on its own context, stopped after the drain.
	engCtx, stopEngine := context.WithCancel(context.Background())
	defer stopEngine()
	var eng *engine.Local
	var m model.Model
	var be ml.Backend
	var group *model.TensorParallel // --tensor-parallel-size > 1
	closeAll := func() {
		if group == nil {
			closeModel(m, be, log)
			return
		}
		closeModel(m, nil, log)
		closeGroup(group, log)
	}
	loadErr := func() error {
		dev := <-devCh
		devTaken = true
		if dev.err != nil {
			return dev.err
		}
		be, group = dev.be, dev.group
		if cfg.MaxNumBatchedTokens == 0 {
			cfg.MaxNumBatchedTokens = defaultBatchedTokens(be)
		}
		phases.done("device init", "backend", be.Name(), "tensor_parallel_size", cfg.TensorParallelSize,
			"max_num_batched_tokens", cfg.MaxNumBatchedTokens)
		path := dir
		if path == "" {
			path = cfg.Model // a built-in config with dummy weights
		}
		m, err = model.LoadContext(gctx, path, model.LoadOptions{Backend: be, DType: cfg.DType, KVCacheDType: cfg.KVCacheDType,
			Quantization: cfg.Quantization, LoadFormat: cfg.LoadFormat, Seed: cfg.Seed, Logger: log, TensorParallel: group})
		if err != nil {
			return err
		}
		phases.done("load weights", "weight_memory", humanBytes(m.WeightBytes()))
		numBlocks, err := kvBlocks(gctx, cfg, be, m)
		if err != nil {
			return err
		}
		phases.done("size KV cache", "blocks", numBlocks)
		if capTokens := numBlocks * cfg.BlockSize; cfg.MaxModelLen == 0 && capTokens < maxLen {
			log.Warn("max_model_len lowered to the KV cache's capacity (set --max-model-len, or give the cache more memory: --kv-cache-memory, --gpu-memory-utilization)",
				"max_position_embeddings", maxLen, "max_model_len", capTokens)
			maxLen = capTokens
			srv.SetMaxModelLen(maxLen)
		}
		eopts := engine.Options{
			MaxNumSeqs: cfg.MaxNumSeqs, MaxNumBatchedTokens: cfg.MaxNumBatchedTokens, MaxModelLen: maxLen,
			BlockSize: cfg.BlockSize, NumBlocks: numBlocks, EnablePrefixCaching: cfg.EnablePrefixCaching,
			EOSTokenIDs: eosIDs(dir, mcfg, tok), Logger: log, Seed: cfg.Seed, MaxLogprobs: cfg.MaxLogprobs,
			OnStep: srv.Metrics().ObserveIterationTokens,
		}
		if tok != nil {
			eopts.Detokenizer = tok
		}
		if eng, err = engine.New(m, eopts); err != nil {
			return err
		}
		if be.Name() == "cuda" {
			warmUp(gctx, be, m, numBlocks, cfg.BlockSize, cfg.MaxNumSeqs, cfg.MaxNumBatchedTokens, log)
			phases.done("warm-up")
		}
		srv.Metrics().SetCacheConfig(metrics.CacheConfig{BlockSize: cfg.BlockSize, CacheDType: cfg.KVCacheDType,
			EnablePrefixCaching: cfg.EnablePrefixCaching, GPUMemoryUtilization: cfg.GPUMemoryUtilization,
			NumBlocks: numBlocks, NumBlocksOverride: cfg.NumGPUBlocks,
			MemoryBytes: int64(numBlocks) * int64(cfg.BlockSize) * m.KVBytesPerToken()})
		return gctx.Err()
	}()
	if loadErr != nil {
		_ = httpSrv.Close()
		gerr := g.Wait()
		closeAll()
		if ctx.Err() != nil {
			// A signal while loading: a prompt, clean exit.
			log.Info("stopped while loading")
			return nil
		}
		if gerr != nil {
			return gerr
		}
		return loadErr
	}
	offHeap := int64(0)
	if be.Name() == "cpu" {
		// The CPU backend maps its weights and KV cache outside the Go heap.
		offHeap = m.WeightBytes() + int64(eng.KVCapacityTokens())*m.KVBytesPerToken()
	}
	setMemoryLimit(offHeap, os.Getenv, os.ReadFile, log)
	engDone := make(chan error, 1)
	go func() { engDone <- eng.Run(engCtx) }()
	dtype := cfg.DType
	if dtype == "auto" {
		dtype = mcfg.TorchDType + mcfg.DType
	}
	srv.SetModelInfo(server.ModelInfo{Backend: be.Name(), DType: dtype, WeightsBytes: m.WeightBytes(),
		KVCacheBytes: int64(eng.KVCapacityTokens()) * m.KVBytesPerToken()})
	srv.SetEngine(eng)
	if !cfg.DisableLogStats {
		go metrics.NewStatsLogger(log, eng.Stats, time.Now()).Run(engCtx, metrics.StatsLogInterval)
	}
	log.Info("ready", "startup_seconds", phases.total(),
		"model", cfg.Model, "served_model_name", names, "backend", be.Name(), "dtype", dtype, "quantization", cfg.Quantization,
		"weight_memory", humanBytes(m.WeightBytes()), "kv_cache_memory", humanBytes(int64(eng.KVCapacityTokens())*m.KVBytesPerToken()),
		"kv_capacity_tokens", eng.KVCapacityTokens(), "max_model_len", maxLen,
		"max_concurrency", fmt.Sprintf("%.2fx", eng.MaxConcurrency()), "max_concurrent_requests", cfg.MaxConcurrentRequests,
		"address", "http://"+ln.Addr().String())

	var runErr error
	select {
	case <-gctx.Done(): // signal, or the HTTP server failed
	case err := <-engDone:
		runErr = fmt.Errorf("engine stopped: %w", err)
		engDone <- err
	}
	drain(srv, httpSrv, cfg.ShutdownTimeout, log)
	stopEngine()
	<-engDone
	if err := g.Wait(); err != nil && runErr == nil {
		runErr = err
	}
	closeAll()
	log.Info("stopped")
	return runErr
}

// ptrAttr renders an optional default for the log.
func ptrAttr[T any](p *T) any {
	if p == nil {
		return "unset"
	}
	return *p
}

// drain shuts the HTTP side down within timeout: new requests get 503 while
// in-flight ones run on; at timeout less endGrace those still running are
// ended (a final error event and [DONE] for streams, a 503 otherwise), and
// endGrace lets their handlers write that before the connections close.
// Only a client that reads nothing then is cut.
func drain(srv *server.Server, httpSrv *http.Server, timeout time.Duration, log *slog.Logger) {
	srv.Drain()
	// Responses now say "Connection: close" and idle connections close, so
	// clients and load balancers reconnect to another replica.
	httpSrv.SetKeepAlivesEnabled(false)
	grace := endGrace(timeout)
	log.Info("draining", "in_flight", srv.Admitted(), "timeout", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout-grace)
	if err := srv.WaitIdle(ctx); err != nil {
		log.Warn("shutdown timeout: ending in-flight requests with an error", "in_flight", srv.Admitted())
		srv.EndInFlight()
	}
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.WaitIdle(ctx); err != nil {
		log.Warn("requests still writing after the shutdown grace: closing their connections", "in_flight", srv.Admitted())
	}
	if err := httpSrv.Shutdown(ctx); err != nil {
		_ = httpSrv.Close()
	}
}

// endGrace is the part of --shutdown-timeout kept for ending the requests
// still running at its end: an engine step and a write.
func endGrace(timeout time.Duration) time.Duration {
	return min(5*time.Second, max(timeout/4, 100*time.Millisecond), timeout)
}

func closeModel(m model.Model, be ml.Backend, log *slog.Logger) {
	if m != nil {
		if err := m.Close(); err != nil {
			log.Warn("closing the model", "err", err)
		}
	}
	if be != nil {
		if err := be.Close(); err != nil {
			log.Warn("closing the backend", "err", err)
		}
	}
}

// resolveModel finds the model directory (downloading a repo id when
// needed) and its config. dir is "" for a built-in config (dummy weights).
func resolveModel(ctx context.Context, cfg *config, log *slog.Logger) (string, *model.Config, error) {
	if cfg.LoadFormat == "dummy" {
		if _, err := os.Stat(cfg.Model); err != nil {
			if mc, ok := model.BuiltinConfig(cfg.Model); ok {
				return "", mc, nil
			}
		}
	}
	hopts := hub.OptionsFromEnv()
	hopts.Revision = cfg.Revision
	if cfg.HFToken != "" {
		hopts.Token = cfg.HFToken
	}
	if cfg.DownloadDir != "" {
		hopts.CacheDir = cfg.DownloadDir
	}
	hopts.Logger = log
	hopts.Progress = os.Stderr
	hopts.SkipWeights = cfg.LoadFormat == "dummy"
	dir, err := hub.Resolve(ctx, cfg.Model, hopts)
	if err != nil {
		if cfg.LoadFormat == "dummy" {
			return "", nil, notBuiltin(cfg.Model, err)
		}
		return "", nil, err
	}
	mc, err := model.ReadConfig(dir)
	if err != nil {
		return "", nil, err
	}
	return dir, mc, nil
}

// eosIDs gathers end-of-sequence ids from generation_config.json,
// config.json and the tokenizer, as transformers' generate does.
func eosIDs(dir string, mc *model.Config, tok *tokenizer.Tokenizer) []int {
	var ids []int
	add := func(v any) {
		switch x := v.(type) {
		case float64:
			ids = append(ids, int(x))
		case int:
			ids = append(ids, x)
		case []any:
			for _, e := range x {
				if f, ok := e.(float64); ok {
					ids = append(ids, int(f))
				}
			}
		}
	}
	if dir != "" {
		if b, err := os.ReadFile(filepath.Join(dir, "generation_config.json")); err == nil {
			var gc struct {
				EOS any `json:"eos_token_id"`
			}
			if json.Unmarshal(b, &gc) == nil {
				add(gc.EOS)
			}
		}
	}
	add(mc.EOSTokenID)
	if tok != nil {
		ids = append(ids, tok.EOSTokenIDs()...)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	// Ids outside the model's vocabulary can never be sampled.
	return slices.DeleteFunc(ids, func(id int) bool { return id < 0 || (mc.VocabSize > 0 && id >= mc.VocabSize) })
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
