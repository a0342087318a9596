package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/llmserve/llmserve/model"
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
	TensorParallelSize    int   // ranks the model is split over (GPUs, or CPU goroutines)
	KVCacheMemory         int64 // bytes; 0 = default for the device
	MaxLogprobs           int
	LogFormat             string
	LogLevel              string

	// vLLM flags with a meaning here.
	EnforceEager           bool   // no CUDA graphs (also from --compilation-config, -O0)
	GemmActivations        string // auto (bf16 on CUDA, f32 on the CPU), bf16 (rounded once, as vLLM) or split (f32-grade GEMM inputs)
	ReturnTokensAsTokenIDs bool   // logprobs tokens as "token_id:<id>" unless a request says otherwise
	ChatTemplate           string // a file or an inline Jinja template; "" = the tokenizer's
	GenerationConfig       string // auto (the model's generation_config.json), vllm (none), or a directory
	OverrideGenConfig      string // JSON merged over the generation config's defaults
	MaxLogLen              int    // prompt characters and ids in request logs; 0 = all
	EnableLogRequests      bool   // request lines carry the prompt and sampling params
	DisableLogRequests     bool   // no per-request lines for successful requests (errors still logged)
	DisableAccessLog       bool   // --disable-uvicorn-access-log: same as DisableLogRequests
	DisableLogStats        bool   // no periodic engine stats line
	NumGPUBlocks           int    // --num-gpu-blocks-override: KV blocks, 0 = sized from memory
	HFToken                string // --hf-token
	DownloadDir            string // --download-dir: the Hugging Face cache directory
	EnableAutoToolChoice   bool
	ToolCallParser         string // hermes|llama3_json|mistral
	ReasoningParser        string // qwen3|deepseek_r1

	// TLS (uvicorn's, through vLLM): HTTPS when SSLCertFile is set.
	SSLKeyFile  string // "" = the key is in SSLCertFile
	SSLCertFile string
	SSLCACerts  string // CA bundle for client certificates
	SSLCertReqs int    // 0 none, 1 optional, 2 required (Python's ssl.CERT_*)
	// CORS (FastAPI's CORSMiddleware, through vLLM): JSON lists, "*" = any.
	AllowedOrigins   []string
	AllowedMethods   []string
	AllowedHeaders   []string
	AllowCredentials bool
	// Accepted lists the vLLM flags given that ask for nothing here
	// (logged at start-up, so nobody wonders what they did).
	Accepted []string
}

// errVersion is returned by parseFlags for --version (after printing it).
var errVersion = errors.New("version printed")

// Values the tool and reasoning parsers accept (the parsers themselves are
// wired elsewhere).
var (
	toolCallParsers  = []string{"hermes", "llama3_json", "mistral"}
	reasoningParsers = []string{"qwen3", "deepseek_r1"}
)

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

// jsonListFlag is vLLM's type=json.loads list flag: --allowed-origins '["https://a.example"]'.
type jsonListFlag struct{ v *[]string }

func (l jsonListFlag) String() string {
	if l.v == nil {
		return ""
	}
	b, _ := json.Marshal(*l.v)
	return string(b)
}

func (l jsonListFlag) Set(s string) error {
	var v []string
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return fmt.Errorf(`want a JSON list of strings, e.g. '["https://example.com"]' or '["*"]'`)
	}
	*l.v = v
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

// flagGroups remembers which section of --help each flag belongs to
// (listed by name within a section).
type flagGroups struct {
	fs     *flag.FlagSet
	titles []string
	names  [][]string
	seen   map[string]bool
}

// section starts a --help section; the flags registered after it belong to it.
func (g *flagGroups) section(title string) {
	g.close()
	g.titles = append(g.titles, title)
	g.names = append(g.names, nil)
}

// close assigns the flags registered since the last section to it.
func (g *flagGroups) close() {
	if len(g.titles) == 0 {
		return
	}
	var added []string
	g.fs.VisitAll(func(f *flag.Flag) {
		if !g.seen[f.Name] {
			g.seen[f.Name] = true
			added = append(added, f.Name)
		}
	})
	g.names[len(g.names)-1] = append(g.names[len(g.names)-1], added...)
}

func (g *flagGroups) usage(w io.Writer) {
	fmt.Fprint(w, helpHeader())
	for i, title := range g.titles {
		fmt.Fprintf(w, "\n%s:\n", title)
		for _, name := range g.names[i] {
			f := g.fs.Lookup(name)
			typ, usage := flag.UnquoteUsage(f)
			line := "  --" + name
			if typ != "" {
				line += " " + typ
			}
			if def := f.DefValue; def != "" && def != "false" && def != "0" {
				usage += fmt.Sprintf(" (default %s)", def)
			}
			fmt.Fprintf(w, "%-36s %s\n", line, usage)
		}
	}
}

func helpHeader() string {
	return `llmserve serves an LLM over HTTP: the OpenAI API (/v1/completions,
/v1/chat/completions, /v1/models), vLLM's /tokenize, /detokenize, /metrics,
/health, /version, and the reference server's /generate.

Usage:
  llmserve serve MODEL [flags]        vLLM's form: vllm serve launch scripts run as they are
  llmserve --model MODEL [flags]
  llmserve --version

MODEL is a local Hugging Face directory, a Hugging Face repo id (downloaded
once into the HF cache), or, with --load-format dummy, a built-in name
(random weights of its config, no download):
  ` + strings.Join(model.BuiltinModels(), "\n  ") + `

Examples:
  # Offline: random weights of a built-in config, the test data's tokenizer
  llmserve serve Qwen/Qwen2.5-0.5B-Instruct --load-format dummy \
    --tokenizer ../shared/testdata/tokenizers/qwen3

  # A Hugging Face model on one GPU, as a vLLM launch script writes it
  llmserve serve Qwen/Qwen2.5-1.5B-Instruct --max-model-len 4096 \
    --gpu-memory-utilization 0.9 --tensor-parallel-size 1 --disable-log-requests

  # A local checkpoint on the CPU with int8 weights and a 2 GiB KV cache
  llmserve --model ./my-model --device cpu --quantization int8 --kv-cache-memory 2GiB

Flags take one or two dashes and vLLM's spellings (--max_model_len works too).
`
}

// vLLM's short aliases.
var shortFlags = map[string]string{
	"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size",
	"-dp": "--data-parallel-size", "-q": "--quantization",
	"-cc": "--compilation-config", "-O": "--optimization-level",
}

// isFlagArg tells flags from values: -1 and -0.5 are values.
func isFlagArg(a string) bool {
	return len(a) > 1 && a[0] == '-' && (a[1] == '-' || unicode.IsLetter(rune(a[1])))
}

// normalizeArgs turns vLLM's spellings (underscores, short aliases,
// --served-model-name with several values) into what the flag package
// parses, and drops the `serve` of `llmserve [flags] serve MODEL` (the
// first positional argument; fs tells flag values from positionals).
func normalizeArgs(args []string, fs *flag.FlagSet) []string {
	out := make([]string, 0, len(args))
	sawModel, sawServe := false, false
	isBool := func(name string) bool {
		f := fs.Lookup(name)
		if f == nil {
			return true // unknown: the parser reports it
		}
		b, ok := f.Value.(interface{ IsBoolFlag() bool })
		return ok && b.IsBoolFlag()
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			out = append(out, args[i:]...)
			break
		}
		if !isFlagArg(a) {
			if !sawModel && !sawServe && a == "serve" {
				sawServe = true
				continue
			}
			sawModel = true // a positional MODEL
			out = append(out, a)
			continue
		}
		// vLLM's -O spellings: -O3 is an optimization level, and -O with
		// JSON or -O.key=value (before vLLM 0.12) a compilation config.
		if cc, ok := dottedCompilationArg(a); ok {
			out = append(out, cc)
			continue
		}
		if lvl, ok := strings.CutPrefix(a, "-O"); ok && lvl != "" && strings.Trim(lvl, "0123456789") == "" {
			out = append(out, "--optimization-level="+lvl)
			continue
		}
		if v, ok := strings.CutPrefix(a, "-O="); ok && strings.HasPrefix(strings.TrimSpace(v), "{") {
			out = append(out, "--compilation-config="+v)
			continue
		}
		if a == "-O" && i+1 < len(args) && strings.HasPrefix(strings.TrimSpace(args[i+1]), "{") {
			out = append(out, "--compilation-config="+args[i+1])
			i++
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if long, ok := shortFlags["-"+name]; ok {
			name = strings.TrimPrefix(long, "--")
		}
		name = strings.ReplaceAll(name, "_", "-")
		a = "--" + name
		if hasVal {
			a += "=" + val
		}
		out = append(out, a)
		if name == "model" {
			sawModel = true
		}
		if hasVal || isBool(name) || i+1 >= len(args) {
			continue
		}
		// The flag's value.
		i++
		out = append(out, args[i])
		if name == "served-model-name" {
			// nargs='+': the names that follow, up to the next flag, once
			// the model is known (before, the next word is the model).
			for sawModel && i+1 < len(args) && !isFlagArg(args[i+1]) {
				out[len(out)-1] += "," + args[i+1]
				i++
			}
		}
	}
	return out
}

// parseFlags parses args (vLLM's `serve MODEL [flags]` or `--model MODEL
// [flags]`); getenv supplies LLMSERVE_API_KEY, VLLM_API_KEY and HF_TOKEN.
// --help and --version print to out and return flag.ErrHelp or errVersion.
func parseFlags(args []string, getenv func(string) string, out io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("llmserve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	g := &flagGroups{fs: fs, seen: map[string]bool{}}

	g.section("Model")
	fs.StringVar(&c.Model, "model", "", "model directory, Hugging Face repo id, or built-in name (with --load-format dummy); or the positional MODEL")
	fs.StringVar(&c.Revision, "revision", "main", "Hugging Face revision (branch, tag or commit)")
	fs.Var(listFlag{&c.ServedModelNames}, "served-model-name", "name(s) the API serves the model as (several values, repeatable or comma list; default: MODEL)")
	fs.StringVar(&c.Tokenizer, "tokenizer", "", "tokenizer directory (default: the model's)")
	fs.BoolVar(&c.SkipTokenizerInit, "skip-tokenizer-init", false, "no tokenizer: prompts must be token ids, outputs carry token ids (choices[].token_ids)")
	fs.StringVar(&c.LoadFormat, "load-format", "auto", "auto|safetensors|dummy (dummy: random weights from config.json or a built-in config)")
	fs.StringVar(&c.ChatTemplate, "chat-template", "", "chat template: a file, or the Jinja template inline (default: the tokenizer's)")
	fs.StringVar(&c.GenerationConfig, "generation-config", "auto", "auto: the model's generation_config.json sets default temperature, top_p, top_k, repetition_penalty; vllm: none; or a directory holding generation_config.json")
	fs.StringVar(&c.OverrideGenConfig, "override-generation-config", "", `JSON merged over the generation config's defaults, e.g. {"temperature": 0.5}`)
	fs.StringVar(&c.HFToken, "hf-token", "", "Hugging Face token for gated models (default: $HF_TOKEN)")
	fs.StringVar(&c.DownloadDir, "download-dir", "", "Hugging Face cache directory (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub)")
	trustRemote := fs.Bool("trust-remote-code", false, "accepted: architectures are implemented natively, no remote code runs")
	tokMode := fs.String("tokenizer-mode", "auto", "auto|hf (tokenizer.json)")
	cfgFormat := fs.String("config-format", "auto", "auto|hf (config.json)")
	modelImpl := fs.String("model-impl", "auto", "auto|vllm (llmserve's own implementation)")

	g.section("Engine and memory")
	fs.StringVar(&c.Device, "device", "auto", "auto|cpu|cuda")
	fs.StringVar(&c.DType, "dtype", "auto", "auto|float32|bfloat16|float16 (half, float: vLLM's aliases)")
	fs.StringVar(&c.KVCacheDType, "kv-cache-dtype", "auto", "auto|float32|bfloat16|float16 (CPU)|fp8 (E4M3, scale 1)")
	fs.StringVar(&c.Quantization, "quantization", "", `"", int8 (weight-only, CPU) or fp8 (weight-only); -q`)
	fs.IntVar(&c.MaxModelLen, "max-model-len", 0, "max tokens per sequence, prompt plus output (default: the model's max_position_embeddings, lowered to what the KV cache holds)")
	fs.IntVar(&c.MaxNumSeqs, "max-num-seqs", 256, "max sequences per engine step")
	fs.IntVar(&c.MaxNumBatchedTokens, "max-num-batched-tokens", 0, "max tokens per engine step (long prompts are chunked); default, as vLLM's: 8192 on a GPU of at least 70 GiB other than an A100, else 2048")
	fs.IntVar(&c.BlockSize, "block-size", 16, "tokens per KV cache block")
	fs.Float64Var(&c.GPUMemoryUtilization, "gpu-memory-utilization", 0.9, "fraction of GPU memory for weights, activations and KV cache (CUDA)")
	fs.Var(bytesFlag{&c.KVCacheMemory}, "kv-cache-memory", "KV cache size, e.g. 2GiB (default: 1GiB on CPU; from --gpu-memory-utilization on CUDA)")
	fs.Var(bytesFlag{&c.KVCacheMemory}, "kv-cache-memory-bytes", "vLLM's name of --kv-cache-memory")
	fs.IntVar(&c.NumGPUBlocks, "num-gpu-blocks-override", 0, "KV cache blocks, overriding the size from memory")
	fs.BoolVar(&c.EnablePrefixCaching, "enable-prefix-caching", true, "reuse KV blocks of shared prompt prefixes")
	noPrefix := fs.Bool("no-enable-prefix-caching", false, "disable prefix caching")
	fs.BoolVar(&c.EnforceEager, "enforce-eager", false, "no CUDA graphs: every step launches its kernels (less start-up time, slower decode)")
	fs.StringVar(&c.GemmActivations, "gemm-activations", "auto", "how f32 activations meet bf16 weights on the GPU: bf16 (rounded once, as vLLM computes: ~2^-9 relative error per input), split (two bf16 halves, f32-grade products at half the prompt rate) or auto (bf16 on CUDA, f32 on the CPU)")
	var compilation map[string]json.RawMessage
	fs.Var(compilationConfigFlag{&compilation}, "compilation-config", `vLLM's (-cc): only what asks for CUDA graphs or none: {"cudagraph_mode": "NONE"} or {"mode": 0} (as --enforce-eager), {"cudagraph_mode": "FULL_DECODE_ONLY"}, {"mode": 3}, {}`)
	optLevel := fs.Int("optimization-level", 2, "vLLM's -O0..-O3: 0 = no CUDA graphs (as --enforce-eager); 2, 3 = the default; 1 is refused")
	fs.Int64Var(&c.Seed, "seed", 0, "seed for dummy weights and for requests without a seed")
	chunked := fs.Bool("enable-chunked-prefill", true, "accepted: prompts longer than --max-num-batched-tokens are always chunked")
	noChunked := fs.Bool("no-enable-chunked-prefill", false, "refused: llmserve always chunks prefills")
	maxCapture := fs.Int("max-seq-len-to-capture", 0, "accepted: CUDA graphs cover every sequence length")
	schedPolicy := fs.String("scheduling-policy", "fcfs", "fcfs|priority: requests run by their priority field (default 0), then arrival")
	swap := fs.Float64("swap-space", 0, "accepted: preemption recomputes (as vLLM v1), no CPU swap space is used")
	cpuOffload := fs.Float64("cpu-offload-gb", 0, "only 0: weights stay on the device")
	schedSteps := fs.Int("num-scheduler-steps", 1, "only 1")

	g.section("Parallelism")
	fs.IntVar(&c.TensorParallelSize, "tensor-parallel-size", 1, "split the model over N GPUs of this host (NCCL; -tp), or with --device cpu over N in-process ranks")
	pp := fs.Int("pipeline-parallel-size", 1, "only 1 (-pp)")
	dp := fs.Int("data-parallel-size", 1, "only 1 (-dp)")
	backend := fs.String("distributed-executor-backend", "", "mp|uni: one process; ray is not supported")
	customAR := fs.Bool("disable-custom-all-reduce", false, "accepted: the all-reduce is always NCCL's")
	expertPar := fs.Bool("enable-expert-parallel", false, "refused: one device")

	g.section("Server")
	fs.StringVar(&c.Host, "host", "", "address to listen on (empty: all interfaces)")
	fs.IntVar(&c.Port, "port", 8000, "port to listen on")
	fs.StringVar(&c.APIKey, "api-key", "", "require this Bearer token on the API (or $LLMSERVE_API_KEY, $VLLM_API_KEY)")
	fs.IntVar(&c.MaxConcurrentRequests, "max-concurrent-requests", 512, "admitted sequences (running plus waiting; n per prompt of a request) before 429; 0 = unbounded")
	fs.DurationVar(&c.MaxQueueWait, "max-queue-wait", 0, "503 for requests still queued (not scheduled) after this long; 0 = wait")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long the drain may take: in-flight requests run until min(5s, timeout/4) before it, then end with an error event or a 503; a second signal exits at once")
	fs.DurationVar(&c.StreamWriteTimeout, "stream-write-timeout", 30*time.Second, "cut a response whose client accepts no bytes for this long (per write, so long streams to reading clients are never cut), freeing its slot and KV cache; 0 = never")
	fs.DurationVar(&c.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "time to read a request's line and headers")
	fs.DurationVar(&c.BodyReadTimeout, "body-read-timeout", 30*time.Second, "time to read a request body once its headers are in (408 past it); 0 = none")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 90*time.Second, "close keep-alive connections idle this long (above load balancers' usual 60 s); 0 = never")
	fs.IntVar(&c.MaxConnections, "max-connections", 0, "open connections at most; past it idle keep-alive ones are closed first, and the last 1/16 serve only /health, /ping, /metrics, /v1/models (0 = the open-file limit minus 64)")
	fs.IntVar(&c.MaxLogprobs, "max-logprobs", 20, "most logprobs a request may ask for")
	fs.BoolVar(&c.ReturnTokensAsTokenIDs, "return-tokens-as-token-ids", false, `logprobs name tokens "token_id:<id>" unless a request sets return_tokens_as_token_ids`)
	reqIDHeaders := fs.Bool("enable-request-id-headers", false, "accepted: X-Request-Id is always honoured and echoed")
	frontendMP := fs.Bool("disable-frontend-multiprocessing", false, "accepted: one process")
	noDocs := fs.Bool("disable-fastapi-docs", false, "accepted: there are no docs routes")
	apiServers := fs.Int("api-server-count", 1, "only 1")
	rootPath := fs.String("root-path", "", "accepted: in vLLM it only sets the OpenAPI docs' base path behind a proxy that strips the prefix; there are no docs routes here and routes stay at /")
	c.AllowedOrigins, c.AllowedMethods, c.AllowedHeaders = []string{"*"}, []string{"*"}, []string{"*"}
	fs.Var(jsonListFlag{&c.AllowedOrigins}, "allowed-origins", "CORS: `JSON` list of origins whose browsers may call the API; \"*\" = any")
	fs.Var(jsonListFlag{&c.AllowedMethods}, "allowed-methods", "CORS: `JSON` list of methods a preflight allows; \"*\" = any")
	fs.Var(jsonListFlag{&c.AllowedHeaders}, "allowed-headers", "CORS: `JSON` list of request headers a preflight allows; \"*\" = any")
	fs.BoolVar(&c.AllowCredentials, "allow-credentials", false, "CORS: allow credentialed requests (the origin is echoed instead of *)")
	fs.StringVar(&c.SSLCertFile, "ssl-certfile", "", "serve HTTPS with this PEM certificate (chain)")
	fs.StringVar(&c.SSLKeyFile, "ssl-keyfile", "", "the certificate's PEM private key (default: in --ssl-certfile); needs --ssl-certfile")
	fs.StringVar(&c.SSLCACerts, "ssl-ca-certs", "", "PEM CA bundle that client certificates are verified against")
	fs.IntVar(&c.SSLCertReqs, "ssl-cert-reqs", 0, "client certificates: 0 not asked for, 1 verified when sent, 2 required (needs --ssl-ca-certs)")
	asyncSched := fs.Bool("async-scheduling", false, "refused: each step is scheduled after the previous one's tokens are sampled; scheduling does not overlap execution")
	noAsyncSched := fs.Bool("no-async-scheduling", false, "accepted: scheduling never overlaps execution here")

	g.section("Tools and reasoning")
	fs.BoolVar(&c.EnableAutoToolChoice, "enable-auto-tool-choice", false, "tool_choice auto (needs --tool-call-parser)")
	fs.StringVar(&c.ToolCallParser, "tool-call-parser", "", strings.Join(toolCallParsers, "|"))
	fs.StringVar(&c.ReasoningParser, "reasoning-parser", "", strings.Join(reasoningParsers, "|"))

	g.section("Unsupported features (accepted only when off)")
	enableLora := fs.Bool("enable-lora", false, "refused: LoRA adapters are not supported")
	specConfig := fs.String("speculative-config", "", "refused: speculative decoding is not supported")

	g.section("Logging")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug|info|warn|error")
	uvLevel := fs.String("uvicorn-log-level", "", "vLLM's name: debug|info|warning|error|critical|trace (sets --log-level when that is not given)")
	fs.StringVar(&c.LogFormat, "log-format", "text", "text|json")
	fs.BoolVar(&c.DisableLogRequests, "disable-log-requests", false, "no log line per successful request (4xx/5xx are always logged)")
	fs.BoolVar(&c.DisableAccessLog, "disable-uvicorn-access-log", false, "same as --disable-log-requests")
	fs.BoolVar(&c.EnableLogRequests, "enable-log-requests", false, "request lines also carry the prompt (cut at --max-log-len) and sampling params")
	fs.IntVar(&c.MaxLogLen, "max-log-len", 0, "prompt characters and token ids in request logs (0: all)")
	fs.BoolVar(&c.DisableLogStats, "disable-log-stats", false, "no engine stats line every 10 s while busy")
	version := fs.Bool("version", false, "print the version and exit")
	g.close()

	args = normalizeArgs(args, fs)
	var positional []string
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			g.usage(out)
			return nil, err
		}
		if err != nil {
			if name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: -"); ok {
				return nil, fmt.Errorf("unknown flag --%s: llmserve accepts the vLLM serve flags that apply to one device (see llmserve --help, and the README's vLLM table)", strings.TrimLeft(name, "-"))
			}
			return nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		if fs.Arg(0) == "--" {
			positional = append(positional, fs.Args()[1:]...)
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if *version {
		fmt.Fprintln(out, versionString())
		return nil, errVersion
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	switch {
	case len(positional) == 1 && c.Model == "":
		c.Model = positional[0] // vLLM's `vllm serve MODEL`
	case len(positional) == 1 && c.Model == positional[0]:
	case len(positional) > 0:
		errs = append(errs, fmt.Errorf("unexpected arguments %q (give the model once: `llmserve serve MODEL` or --model MODEL)", positional))
	}
	if *noPrefix {
		c.EnablePrefixCaching = false
	}
	if c.APIKey == "" {
		c.APIKey = getenv("LLMSERVE_API_KEY")
	}
	if c.APIKey == "" {
		c.APIKey = getenv("VLLM_API_KEY")
	}
	if *uvLevel != "" && !set["log-level"] {
		switch l := strings.ToLower(*uvLevel); l {
		case "trace", "debug":
			c.LogLevel = "debug"
		case "info":
			c.LogLevel = "info"
		case "warning", "warn":
			c.LogLevel = "warn"
		case "error", "critical":
			c.LogLevel = "error"
		default:
			errs = append(errs, fmt.Errorf("--uvicorn-log-level %q: want debug, info, warning, error, critical or trace", *uvLevel))
		}
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "warning", "error":
	default:
		errs = append(errs, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format %q: want text or json", c.LogFormat))
	}

	// vLLM flags that ask for nothing here are accepted and noted; the
	// others say what is supported.
	accept := func(name string) { c.Accepted = append(c.Accepted, "--"+name) }
	one := func(name string, v int) {
		if v != 1 {
			errs = append(errs, fmt.Errorf("--%s %d: only 1 is supported (llmserve splits a model only over the GPUs of one host, with --tensor-parallel-size); run several servers behind a load balancer", name, v))
		} else if set[name] {
			accept(name)
		}
	}
	if c.TensorParallelSize < 1 {
		errs = append(errs, fmt.Errorf("--tensor-parallel-size %d must be at least 1", c.TensorParallelSize))
	} else if set["tensor-parallel-size"] && c.TensorParallelSize == 1 {
		accept("tensor-parallel-size")
	}
	one("pipeline-parallel-size", *pp)
	one("data-parallel-size", *dp)
	one("num-scheduler-steps", *schedSteps)
	one("api-server-count", *apiServers)
	oneOf := func(name, v string, allowed ...string) {
		if !slices.Contains(allowed, strings.ToLower(v)) {
			errs = append(errs, fmt.Errorf("--%s %q: supported: %s", name, v, strings.Join(slices.DeleteFunc(slices.Clone(allowed), func(s string) bool { return s == "" }), ", ")))
		} else if set[name] {
			accept(name)
		}
	}
	oneOf("tokenizer-mode", *tokMode, "auto", "hf")
	oneOf("config-format", *cfgFormat, "auto", "hf")
	oneOf("model-impl", *modelImpl, "auto", "vllm")
	oneOf("distributed-executor-backend", *backend, "", "mp", "uni")
	oneOf("scheduling-policy", *schedPolicy, "fcfs", "priority")
	for name, on := range map[string]bool{"trust-remote-code": *trustRemote, "disable-custom-all-reduce": *customAR,
		"enable-request-id-headers": *reqIDHeaders, "disable-frontend-multiprocessing": *frontendMP,
		"disable-fastapi-docs": *noDocs, "enable-chunked-prefill": *chunked && set["enable-chunked-prefill"]} {
		if on {
			accept(name)
		}
	}
	if set["swap-space"] {
		if *swap < 0 {
			errs = append(errs, fmt.Errorf("--swap-space %v must not be negative", *swap))
		} else {
			accept("swap-space")
		}
	}
	if set["max-seq-len-to-capture"] {
		if *maxCapture < 1 {
			errs = append(errs, fmt.Errorf("--max-seq-len-to-capture %d must be positive", *maxCapture))
		} else {
			accept("max-seq-len-to-capture")
		}
	}
	if *cpuOffload != 0 {
		errs = append(errs, fmt.Errorf("--cpu-offload-gb %v: weights stay on the device; only 0 is supported", *cpuOffload))
	}
	if *noChunked || (set["enable-chunked-prefill"] && !*chunked) {
		errs = append(errs, errors.New("--no-enable-chunked-prefill: llmserve always chunks long prompts (at most --max-num-batched-tokens a step)"))
	}
	if *expertPar {
		errs = append(errs, errors.New("--enable-expert-parallel: llmserve runs on one device; expert parallelism is not supported"))
	}
	if *asyncSched {
		errs = append(errs, errors.New("--async-scheduling: llmserve schedules each step after the previous step's tokens are sampled; overlapping scheduling with execution is not implemented"))
	} else if *noAsyncSched {
		accept("no-async-scheduling")
	} else if set["async-scheduling"] {
		accept("async-scheduling") // =false
	}
	if *rootPath != "" {
		accept("root-path")
	}
	if eager, err := compilationEager(compilation, *optLevel, set["optimization-level"]); err != nil {
		errs = append(errs, err)
	} else if eager {
		c.EnforceEager = true
	} else {
		// What asks for vLLM's default (or --enforce-eager's choice, which
		// wins as in vLLM) needs nothing here.
		for _, name := range []string{"compilation-config", "optimization-level"} {
			if set[name] {
				accept(name)
			}
		}
	}
	switch {
	case c.SSLKeyFile != "" && c.SSLCertFile == "":
		errs = append(errs, errors.New("--ssl-keyfile needs --ssl-certfile"))
	case (c.SSLCACerts != "" || c.SSLCertReqs != 0) && c.SSLCertFile == "":
		errs = append(errs, errors.New("--ssl-ca-certs and --ssl-cert-reqs need --ssl-certfile (HTTPS)"))
	case c.SSLCertReqs < 0 || c.SSLCertReqs > 2:
		errs = append(errs, fmt.Errorf("--ssl-cert-reqs %d: want 0 (none), 1 (optional) or 2 (required)", c.SSLCertReqs))
	case c.SSLCertReqs > 0 && c.SSLCACerts == "":
		errs = append(errs, fmt.Errorf("--ssl-cert-reqs %d needs --ssl-ca-certs (the CAs client certificates are verified against)", c.SSLCertReqs))
	}
	if *enableLora {
		errs = append(errs, errors.New("--enable-lora: LoRA adapters are not supported"))
	}
	if *specConfig != "" {
		errs = append(errs, errors.New("--speculative-config: speculative decoding is not supported"))
	}
	if c.ToolCallParser != "" && !slices.Contains(toolCallParsers, c.ToolCallParser) {
		errs = append(errs, fmt.Errorf("--tool-call-parser %q: supported: %s", c.ToolCallParser, strings.Join(toolCallParsers, ", ")))
	}
	if c.EnableAutoToolChoice && c.ToolCallParser == "" {
		errs = append(errs, fmt.Errorf("--enable-auto-tool-choice needs --tool-call-parser (%s)", strings.Join(toolCallParsers, ", ")))
	}
	if c.ReasoningParser != "" && !slices.Contains(reasoningParsers, c.ReasoningParser) {
		errs = append(errs, fmt.Errorf("--reasoning-parser %q: supported: %s", c.ReasoningParser, strings.Join(reasoningParsers, ", ")))
	}
	if c.GenerationConfig == "" {
		c.GenerationConfig = "auto"
	}
	if c.MaxLogLen < 0 || c.NumGPUBlocks < 0 {
		errs = append(errs, errors.New("--max-log-len and --num-gpu-blocks-override must not be negative"))
	}
	if c.EnableLogRequests && c.DisableLogRequests {
		errs = append(errs, errors.New("--enable-log-requests and --disable-log-requests exclude each other"))
	}

	if c.Model == "" {
		errs = append(errs, errors.New("a model is required: `llmserve serve MODEL` or --model MODEL (see --help for built-in names)"))
	}
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d out of range", c.Port))
	}
	if c.MaxModelLen < 0 || c.MaxNumSeqs < 1 || c.MaxNumBatchedTokens < 0 || set["max-num-batched-tokens"] && c.MaxNumBatchedTokens == 0 || c.BlockSize < 1 {
		errs = append(errs, errors.New("--max-model-len, --max-num-seqs, --max-num-batched-tokens and --block-size must be positive"))
	}
	if c.GemmActivations != "auto" && c.GemmActivations != "split" && c.GemmActivations != "bf16" {
		errs = append(errs, fmt.Errorf("--gemm-activations %q: want auto, bf16 or split", c.GemmActivations))
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
	if c.SkipTokenizerInit && c.ChatTemplate != "" {
		errs = append(errs, errors.New("--chat-template needs a tokenizer (not --skip-tokenizer-init)"))
	}
	slices.Sort(c.Accepted)
	return c, errors.Join(errs...)
}
