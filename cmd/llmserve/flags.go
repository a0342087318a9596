package main

import (
	"errors"
	"flag"
	"fmt"
	"github.com/llmserve/llmserve/model"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// config is the parsed command line (vLLM's flag names).
type config struct {
	Model                 string
	Host                  string
	Port                  int
	MaxModelLen           int
	MaxNumSeqs            int
	MaxNumBatchedTokens   int
	DType                 string
	KVCacheDType          string
	Quantization          string
	BlockSize             int
	GPUMemoryUtilization  float64
	EnablePrefixCaching   bool
	ServedModelNames      []string
	Tokenizer             string
	SkipTokenizerInit     bool
	LoadFormat            string
	Seed                  int64
	APIKey                string
	Revision              string
	MaxConcurrentRequests int
	MaxQueueWait          time.Duration
	ShutdownTimeout       time.Duration
	StreamWriteTimeout    time.Duration
	ReadHeaderTimeout     time.Duration
	BodyReadTimeout       time.Duration
	IdleTimeout           time.Duration
	MaxConnections        int // 0 = from the descriptor limit
	Device                string
	KVCacheMemory         int64 // bytes; 0 = default for the device
	MaxLogprobs           int
	LogFormat             string
	LogLevel              string
}

// listFlag collects a repeatable flag whose values may also be comma lists.
type listFlag struct{ v *[]string }

func (l listFlag) String() string {
	if l.v == nil {
		return ""
	}
	return strings.Join(*l.v, ",")
}

func (l listFlag) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l.v = append(*l.v, p)
		}
	}
	return nil
}

// bytesFlag accepts 1073741824, 1GiB, 1.5GB, 512MiB, 2G, 800M.
type bytesFlag struct{ v *int64 }

func (b bytesFlag) String() string {
	if b.v == nil || *b.v == 0 {
		return ""
	}
	return strconv.FormatInt(*b.v, 10)
}

func (b bytesFlag) Set(s string) error {
	n, err := parseBytes(s)
	if err != nil {
		return err
	}
	*b.v = n
	return nil
}

// parseBytes parses a byte size with an optional decimal (KB, MB, GB, TB)
// or binary (KiB, MiB, GiB, TiB; K, M, G, T) suffix.
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsDigit(r) && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("invalid size %q (e.g. 2GiB, 512MiB, 1073741824)", s)
	}
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
		"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
		"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
		"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	}[strings.ToLower(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("invalid size unit in %q", s)
	}
	v := f * mult
	if v > math.MaxInt64 {
		return 0, fmt.Errorf("size %q too large", s)
	}
	return int64(v), nil
}

// parseFlags parses args; getenv supplies LLMSERVE_API_KEY.
func parseFlags(args []string, getenv func(string) string, out io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("llmserve", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.Model, "model", "", "model directory, Hugging Face repo id, or built-in name (with --load-format dummy)")
	fs.StringVar(&c.Host, "host", "", "address to listen on (empty: all interfaces)")
	fs.IntVar(&c.Port, "port", 8000, "port to listen on")
	fs.IntVar(&c.MaxModelLen, "max-model-len", 0, "max tokens per sequence, prompt plus output (default: min(max_position_embeddings, 8192))")
	fs.IntVar(&c.MaxNumSeqs, "max-num-seqs", 256, "max sequences per engine step")
	fs.IntVar(&c.MaxNumBatchedTokens, "max-num-batched-tokens", 2048, "max tokens per engine step")
	fs.StringVar(&c.DType, "dtype", "auto", "auto|float32|bfloat16|float16")
	fs.StringVar(&c.KVCacheDType, "kv-cache-dtype", "auto", "auto|float32|bfloat16|float16")
	fs.StringVar(&c.Quantization, "quantization", "", `"" or int8 (weight-only)`)
	fs.IntVar(&c.BlockSize, "block-size", 16, "tokens per KV cache block")
	fs.Float64Var(&c.GPUMemoryUtilization, "gpu-memory-utilization", 0.9, "fraction of GPU memory for weights, activations and KV cache (CUDA)")
	fs.BoolVar(&c.EnablePrefixCaching, "enable-prefix-caching", true, "reuse KV blocks of shared prompt prefixes")
	noPrefix := fs.Bool("no-enable-prefix-caching", false, "disable prefix caching")
	fs.Var(listFlag{&c.ServedModelNames}, "served-model-name", "name(s) the API serves the model as (repeatable or comma list; default: --model)")
	fs.StringVar(&c.Tokenizer, "tokenizer", "", "tokenizer directory (default: the model's)")
	fs.BoolVar(&c.SkipTokenizerInit, "skip-tokenizer-init", false, "no tokenizer: prompts must be token ids, outputs carry token ids")
	fs.StringVar(&c.LoadFormat, "load-format", "auto", "auto|safetensors|dummy")
	fs.Int64Var(&c.Seed, "seed", 0, "seed for dummy weights and for requests without a seed")
	fs.StringVar(&c.APIKey, "api-key", "", "require this Bearer token on the API (or LLMSERVE_API_KEY)")
	fs.StringVar(&c.Revision, "revision", "main", "Hugging Face revision (branch, tag or commit)")
	fs.IntVar(&c.MaxConcurrentRequests, "max-concurrent-requests", 512, "admitted requests (running plus waiting) before 429; 0 = unbounded")
	fs.DurationVar(&c.MaxQueueWait, "max-queue-wait", 0, "503 for requests still queued (not scheduled) after this long; 0 = wait")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long the drain may take: in-flight requests run until min(5s, timeout/4) before it, then end with an error event or a 503; a second signal exits at once")
	fs.DurationVar(&c.StreamWriteTimeout, "stream-write-timeout", 30*time.Second, "cut a response whose client accepts no bytes for this long (per write, so long streams to reading clients are never cut), freeing its slot and KV cache; 0 = never")
	fs.DurationVar(&c.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "time to read a request's line and headers")
	fs.DurationVar(&c.BodyReadTimeout, "body-read-timeout", 30*time.Second, "time to read a request body once its headers are in (408 past it); 0 = none")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 90*time.Second, "close keep-alive connections idle this long (above load balancers' usual 60 s); 0 = never")
	fs.IntVar(&c.MaxConnections, "max-connections", 0, "open connections at most; past it idle keep-alive ones are closed first, and the last 1/16 serve only /health, /ping, /metrics, /v1/models (0 = the open-file limit minus 64)")
	fs.StringVar(&c.Device, "device", "auto", "auto|cpu|cuda")
	fs.Var(bytesFlag{&c.KVCacheMemory}, "kv-cache-memory", "KV cache size, e.g. 2GiB (default: 1GiB on CPU; from --gpu-memory-utilization on CUDA)")
	fs.IntVar(&c.MaxLogprobs, "max-logprobs", 20, "most logprobs a request may ask for")
	fs.StringVar(&c.LogFormat, "log-format", "text", "text|json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug|info|warn|error")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		// vLLM's `vllm serve MODEL` form.
		if c.Model == "" && fs.NArg() == 1 {
			c.Model = fs.Arg(0)
		} else {
			return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
		}
	}
	if *noPrefix {
		c.EnablePrefixCaching = false
	}
	if c.APIKey == "" {
		c.APIKey = getenv("LLMSERVE_API_KEY")
	}
	var errs []error
	if c.Model == "" {
		errs = append(errs, errors.New("--model is required"))
	}
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d out of range", c.Port))
	}
	if c.MaxModelLen < 0 || c.MaxNumSeqs < 1 || c.MaxNumBatchedTokens < 1 || c.BlockSize < 1 {
		errs = append(errs, errors.New("--max-model-len, --max-num-seqs, --max-num-batched-tokens and --block-size must be positive"))
	}
	if c.GPUMemoryUtilization <= 0 || c.GPUMemoryUtilization > 1 {
		errs = append(errs, fmt.Errorf("--gpu-memory-utilization %v must be in (0, 1]", c.GPUMemoryUtilization))
	}
	if c.MaxConcurrentRequests < 0 || c.MaxQueueWait < 0 || c.ShutdownTimeout < 0 {
		errs = append(errs, errors.New("--max-concurrent-requests, --max-queue-wait and --shutdown-timeout must not be negative"))
	}
	if c.StreamWriteTimeout < 0 || c.ReadHeaderTimeout < 0 || c.BodyReadTimeout < 0 || c.IdleTimeout < 0 || c.MaxConnections < 0 {
		errs = append(errs, errors.New("--stream-write-timeout, --read-header-timeout, --body-read-timeout, --idle-timeout and --max-connections must not be negative"))
	}
	switch c.Device {
	case "auto", "cpu", "cuda":
	default:
		errs = append(errs, fmt.Errorf("--device %q: want auto, cpu or cuda", c.Device))
	}
	if err := model.CheckOptions(model.LoadOptions{DType: c.DType, KVCacheDType: c.KVCacheDType,
		Quantization: c.Quantization, LoadFormat: c.LoadFormat}); err != nil {
		errs = append(errs, err)
	}
	if c.SkipTokenizerInit && c.Tokenizer != "" {
		errs = append(errs, errors.New("--tokenizer and --skip-tokenizer-init exclude each other"))
	}
	return c, errors.Join(errs...)
}
