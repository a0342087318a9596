// Package server is the HTTP face of llmserve: the reference server's
// endpoints (/generate, /health, /metrics, /models) and the OpenAI API
// (/v1/completions, /v1/chat/completions, /v1/models), plus vLLM's /tokenize
// and /detokenize, with admission control (429), cancellation on
// disconnect, bearer auth, panic isolation and graceful drain, and the
// transport bounds of transport.go (per-write deadlines, body and idle
// timeouts, a connection limit). It talks to any engine.Engine.
package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/grammar"
	"github.com/llmserve/llmserve/metrics"
)

// Tokenizer is what the server needs of a tokenizer; *tokenizer.Tokenizer
// implements it.
type Tokenizer interface {
	Encode(text string, addSpecial bool) []int
	Decode(ids []int, skipSpecial bool) string
	VocabSize() int
	TokenText(id int) string
	ApplyChatTemplate(messages []map[string]any, addGenerationPrompt bool, extra map[string]any) (string, error)
	HasChatTemplate() bool
}

// Sentinel errors, mapped to HTTP status in writeErr.
var (
	ErrOverloaded    = errors.New("server: too many concurrent requests")                         // 429
	ErrQueueTimeout  = errors.New("server: request waited too long in the queue")                 // 503
	ErrDraining      = errors.New("server: shutting down")                                        // 503
	ErrNotReady      = errors.New("server: model is loading")                                     // 503
	ErrModelNotFound = errors.New("server: model not found")                                      // 404
	ErrUnauthorized  = errors.New("server: invalid API key")                                      // 401
	ErrNoTokenizer   = errors.New("server: no tokenizer (--skip-tokenizer-init): send token ids") // 400
	// ErrShutdownDeadline ends the requests still running when the drain
	// deadline passes (EndInFlight): 503, or a final error event.
	ErrShutdownDeadline = errors.New("server: shutdown deadline passed")
)

// Options configure a Server.
type Options struct {
	// Engine runs requests; nil means "loading" until SetEngine.
	Engine engine.Engine
	// Tokenizer may be nil (--skip-tokenizer-init): prompts must be token ids.
	Tokenizer Tokenizer
	// ModelNames are the served model names; the first is the default and
	// the metrics' model_name label.
	ModelNames []string
	ModelRoot  string // the model's path or repo id, shown in /v1/models
	// MaxModelLen bounds prompt plus generated tokens (SetMaxModelLen may
	// lower it once the KV cache is sized).
	MaxModelLen int
	// VocabSize is the model's vocabulary: token ids must be below it.
	VocabSize int
	// MaxConcurrentRequests bounds admitted sequences (n per prompt of each
	// request, running plus waiting); 0 = unbounded.
	MaxConcurrentRequests int
	// MaxQueueWait: a request the engine has not scheduled after it leaves the queue with a 503; 0 = none.
	MaxQueueWait time.Duration
	// APIKey, when set, is required as a Bearer token on the API routes.
	APIKey string
	// MaxBodyBytes limits request bodies (413 past it); default 16 MiB.
	MaxBodyBytes int64
	// MaxLogprobs bounds logprobs/top_logprobs (default 20).
	MaxLogprobs int
	// MaxNumSeqs is the engine's --max-num-seqs: a prompt's n sequences run
	// in one batch, so n above it is refused (0 = not checked).
	MaxNumSeqs int
	// DefaultMaxTokens for /generate and /v1/completions when the request gives none (default 16).
	DefaultMaxTokens int

	// Transport bounds, applied by NewHTTPServer, Listener and Handler.
	// StreamWriteTimeout bounds each write of a response, re-armed before
	// every write and flush: a client that reads nothing for this long is
	// cut and its request aborted (slot and KV blocks freed); 0 = none.
	StreamWriteTimeout time.Duration
	// ReadHeaderTimeout bounds the request line and headers (default 10s).
	ReadHeaderTimeout time.Duration
	// BodyReadTimeout bounds reading a request body (408 past it); the
	// response phase is not bounded by it. 0 = none.
	BodyReadTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long; 0 = none.
	IdleTimeout time.Duration
	// MaxConnections bounds open connections (0 = none); the last
	// ConnectionReserve of them (default MaxConnections/16, at least 1)
	// serve only /health, /ping, /metrics and /v1/models.
	MaxConnections    int
	ConnectionReserve int
	// Registry receives the metrics and serves /metrics; nil = a new one.
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// RequestLog configures the per-request log line.
	RequestLog RequestLogOptions
	// SamplingDefaults apply to requests that leave the field unset (--generation-config).
	SamplingDefaults SamplingDefaults
	// ReturnTokensAsTokenIDs names logprobs tokens "token_id:<id>" for
	// requests that do not set return_tokens_as_token_ids
	// (--return-tokens-as-token-ids).
	ReturnTokensAsTokenIDs bool
	// Version is GET /version's JSON body (nil: {"version":"devel"}).
	Version any
	// CORS, when set, answers CORS preflights and adds the
	// Access-Control-Allow-* headers (see CORSOptions); nil: no CORS.
	CORS *CORSOptions
	// TLSConfig, when set, makes Serve speak HTTPS (HTTP/1.1, as uvicorn)
	// with its certificates and client-certificate policy.
	TLSConfig *tls.Config

	// Structured outputs, tool calls and reasoning (see structured.go).
	// EnableAutoToolChoice and ToolCallParser are vLLM's
	// --enable-auto-tool-choice and --tool-call-parser: tool_choice "auto"
	// needs both. Forced calls (tool_choice "required" or named) use
	// ToolCallParser's format, else the chat template's, else hermes.
	EnableAutoToolChoice bool
	ToolCallParser       string
	// ReasoningParser (--reasoning-parser) splits reasoning_content off.
	ReasoningParser string
	// EOSTokenIDs are the engine's end-of-sequence ids, which a grammar
	// allows once complete (default: the tokenizer's).
	EOSTokenIDs []int
	// GrammarCacheSize bounds the compiled grammars kept (default 64);
	// GrammarLimits bounds each compile (zero: grammar.DefaultLimits).
	GrammarCacheSize int
	GrammarLimits    grammar.Limits
}

// Server serves the HTTP API. Create it with New.
type Server struct {
	opts Options
	log  *slog.Logger
	eng  atomic.Pointer[engineBox]
	// modelInfo is set once the model is loaded.
	modelInfo atomic.Pointer[ModelInfo]
	// maxModelLenV is MaxModelLen, or what SetMaxModelLen made it.
	maxModelLenV atomic.Int64
	tok          Tokenizer
	metrics      *metrics.Metrics
	prom         http.Handler
	keyHash      [32]byte
	start        time.Time

	draining atomic.Bool
	admitted atomic.Int64
	idleMu   sync.Mutex
	idle     chan struct{} // closed when admitted drops to 0 while draining

	// endCtx is cancelled by EndInFlight: every call's context follows it.
	endCtx      context.Context
	endInFlight context.CancelFunc
	conns       *connLimiter // nil: no connection limit

	idPrefix string
	idSeq    atomic.Uint64
	handler  http.Handler

	gram grammars // structured outputs, built on first use
}

type engineBox struct{ e engine.Engine }

// New builds a Server.
func New(opts Options) (*Server, error) {
	if len(opts.ModelNames) == 0 || opts.ModelNames[0] == "" {
		return nil, errors.New("server: at least one model name is required")
	}
	if opts.MaxModelLen <= 0 {
		return nil, errors.New("server: MaxModelLen must be positive")
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 16 << 20
	}
	if opts.MaxLogprobs <= 0 {
		opts.MaxLogprobs = 20
	}
	if opts.DefaultMaxTokens <= 0 {
		opts.DefaultMaxTokens = 16
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ModelRoot == "" {
		opts.ModelRoot = opts.ModelNames[0]
	}
	if opts.ReadHeaderTimeout <= 0 {
		opts.ReadHeaderTimeout = defaultReadHeaderTimeout
	}
	s := &Server{opts: opts, log: opts.Logger, tok: opts.Tokenizer, start: time.Now(), idle: make(chan struct{})}
	s.maxModelLenV.Store(int64(opts.MaxModelLen))
	if opts.Engine != nil {
		s.eng.Store(&engineBox{opts.Engine})
	}
	m, err := metrics.New(opts.Registry, metrics.Options{
		ModelName:   opts.ModelNames[0],
		MaxModelLen: opts.MaxModelLen,
		Stats:       s.stats,
	})
	if err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	s.metrics = m
	s.prom = promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{})
	if opts.APIKey != "" {
		s.keyHash = sha256.Sum256([]byte(opts.APIKey))
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	s.idPrefix = hex.EncodeToString(rnd[:])
	if opts.MaxConnections > 0 {
		reserve := opts.ConnectionReserve
		if reserve <= 0 {
			reserve = max(1, opts.MaxConnections/16)
		}
		s.conns = newConnLimiter(opts.MaxConnections, reserve, s.log)
	}
	s.endCtx, s.endInFlight = context.WithCancel(context.Background())
	s.handler = s.logRequests(s.routes())
	return s, nil
}

// SetEngine makes the server ready with e (for servers created while loading).
func (s *Server) SetEngine(e engine.Engine) { s.eng.Store(&engineBox{e}) }

// SetMaxModelLen sets the bound on prompt plus generated tokens, when it
// is known only once the model is loaded (the KV cache holds fewer tokens
// than the model's context).
func (s *Server) SetMaxModelLen(n int) { s.maxModelLenV.Store(int64(n)) }

func (s *Server) maxModelLen() int { return int(s.maxModelLenV.Load()) }

// SetModelInfo publishes the loaded model's memory figures on /health.
func (s *Server) SetModelInfo(mi ModelInfo) { s.modelInfo.Store(&mi) }

func (s *Server) engine() engine.Engine {
	if b := s.eng.Load(); b != nil {
		return b.e
	}
	return nil
}

// health is the engine's engine.HealthChecker verdict (nil when it has none).
func (s *Server) health() error {
	if hc, ok := s.engine().(engine.HealthChecker); ok {
		return hc.Health()
	}
	return nil
}

func (s *Server) stats() engine.Stats {
	if e := s.engine(); e != nil {
		return e.Stats()
	}
	return engine.Stats{}
}

// Metrics returns the server's metrics.
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Admitted is the number of admitted generation requests in flight.
func (s *Server) Admitted() int { return int(s.admitted.Load()) }

// Drain stops admitting requests: /health turns 503 and new API requests
// get 503, while admitted ones run on.
func (s *Server) Drain() {
	s.draining.Store(true)
	s.checkIdle()
}

// Draining reports whether Drain was called.
func (s *Server) Draining() bool { return s.draining.Load() }

// EndInFlight ends every admitted request now, for a drain whose deadline
// passed: their engine requests are aborted, a stream gets a final error
// event and [DONE] (so clients see an error, not a cut connection), and a
// request not yet answered gets a 503. Call it after Drain; WaitIdle then
// returns once the handlers have written their last bytes.
func (s *Server) EndInFlight() { s.endInFlight() }

// WaitIdle waits, after Drain, until no admitted request is left or ctx ends.
func (s *Server) WaitIdle(ctx context.Context) error {
	s.checkIdle()
	select {
	case <-s.idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) checkIdle() {
	if !s.draining.Load() || s.admitted.Load() != 0 {
		return
	}
	s.idleMu.Lock()
	select {
	case <-s.idle:
	default:
		close(s.idle)
	}
	s.idleMu.Unlock()
}

// admit reserves k slots of --max-concurrent-requests (one per sequence).
func (s *Server) admit(k int) (release func(), err error) {
	if s.draining.Load() {
		s.metrics.Reject(metrics.RejectDraining)
		return nil, ErrDraining
	}
	if s.engine() == nil {
		s.metrics.Reject(metrics.RejectNotReady)
		return nil, ErrNotReady
	}
	if err := s.health(); err != nil {
		s.metrics.Reject(metrics.RejectEngine)
		return nil, err
	}
	limit := int64(s.opts.MaxConcurrentRequests)
	for {
		cur := s.admitted.Load()
		if limit > 0 && cur+int64(k) > limit {
			s.metrics.Reject(metrics.RejectCapacity)
			return nil, ErrOverloaded
		}
		if s.admitted.CompareAndSwap(cur, cur+int64(k)) {
			s.metrics.SetAdmitted(int(cur) + k)
			break
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			n := s.admitted.Add(-int64(k))
			s.metrics.SetAdmitted(int(n))
			s.checkIdle()
		})
	}, nil
}

func (s *Server) newID(prefix string) string {
	return prefix + s.idPrefix + strconv.FormatUint(s.idSeq.Add(1), 16)
}

// resolveModel maps the request's model name to the served name.
func (s *Server) resolveModel(name string) (string, error) {
	if name == "" {
		return s.opts.ModelNames[0], nil
	}
	for _, n := range s.opts.ModelNames {
		if n == name {
			return n, nil
		}
	}
	return "", s.modelNotFound(name)
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	api := func(method string, h http.HandlerFunc) http.Handler {
		return s.auth(s.allow(method, h))
	}
	mux.Handle("/generate", api(http.MethodPost, s.handleGenerate))
	mux.Handle("/v1/completions", api(http.MethodPost, s.handleCompletions))
	mux.Handle("/v1/chat/completions", api(http.MethodPost, s.handleChat))
	mux.Handle("/v1/models", api(http.MethodGet, s.handleModels))
	mux.Handle("/v1/models/", api(http.MethodGet, s.handleModel))
	mux.Handle("/version", s.allow(http.MethodGet, s.handleVersion))
	mux.Handle("/models", api(http.MethodGet, s.handleModels)) // as /v1/models: one list, one rule
	mux.Handle("/tokenize", api(http.MethodPost, s.handleTokenize))
	mux.Handle("/detokenize", api(http.MethodPost, s.handleDetokenize))
	mux.Handle("/health", s.allow(http.MethodGet, s.handleHealth))
	mux.Handle("/ping", s.allow(http.MethodGet, s.handleHealth))
	mux.Handle("/metrics", s.allow(http.MethodGet, s.handleMetrics))
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, http.StatusNotFound, "not_found_error", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path), "", nil)
	}))
	var h http.Handler = mux
	if s.opts.CORS != nil {
		h = newCORS(*s.opts.CORS).wrap(h) // preflights never reach auth
	}
	return s.transport(s.recoverPanics(h))
}

// allow restricts a route to one method (GET also allows HEAD).
func (s *Server) allow(method string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
			w.Header().Set("Allow", method)
			s.writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path), "", nil)
			return
		}
		h(w, r)
	})
}

// auth requires the API key, compared in constant time (hashes make the
// comparison independent of the key's length too).
func (s *Server) auth(h http.Handler) http.Handler {
	if s.opts.APIKey == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := bearerToken(r.Header.Get("Authorization"))
		sum := sha256.Sum256([]byte(got))
		if subtle.ConstantTimeCompare(sum[:], s.keyHash[:]) != 1 || !ok {
			s.metrics.Reject(metrics.RejectUnauthorized)
			w.Header().Set("WWW-Authenticate", `Bearer realm="llmserve"`)
			s.writeErr(w, ErrUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// bearerToken returns the token of a Bearer Authorization header. The
// scheme is case-insensitive and followed by one or more spaces (RFC 7235
// section 2.1, RFC 6750 section 2.1).
func bearerToken(h string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimLeft(h, " "), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.Trim(token, " \t")
	return token, token != ""
}

// recoverPanics turns a handler panic into a 500 for that request only.
func (s *Server) recoverPanics(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tw, ok := w.(*respWriter)
		if !ok {
			tw = &respWriter{ResponseWriter: w, rc: http.NewResponseController(w)}
		}
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler { //nolint:errorlint // sentinel panic value
				panic(v)
			}
			s.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			if tw.wrote {
				// Mid-stream: the only honest signal left is cutting the connection.
				panic(http.ErrAbortHandler)
			}
			s.writeError(w, http.StatusInternalServerError, "server_error", "internal server error", "", nil)
		}()
		h.ServeHTTP(tw, r)
	})
}
