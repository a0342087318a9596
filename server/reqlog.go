package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/llmserve/llmserve/openai"
	"github.com/llmserve/llmserve/sample"
)

// RequestLogOptions configure the one log line per request.
type RequestLogOptions struct {
	// Disabled drops the lines of successful requests (--disable-log-requests);
	// 4xx and 5xx are logged regardless, with their message.
	Disabled bool
	// Verbose adds the prompt and sampling params (--enable-log-requests).
	Verbose bool
	// MaxLen cuts the logged prompt to this many characters and token ids
	// (--max-log-len); 0 = all.
	MaxLen int
}

// maxRequestIDLen bounds a client's X-Request-Id (longer ones are replaced).
const maxRequestIDLen = 128

// reqInfo is what the handlers learn about a request for its log line. It
// travels in the request's context; only the handler's goroutine writes it,
// and the middleware reads it after the handler returns.
type reqInfo struct {
	id                 string // X-Request-Id: the client's, else the handler's or a generated one
	model              string
	promptTokens       int
	completionTokens   int
	cachedTokens       int
	ttft               time.Duration // 0 = no token
	finish             string
	generation         bool
	wantTokenIDs       bool // return_token_ids (or --skip-tokenizer-init)
	promptIDs          []int
	params             *sample.Params
	numPrompts, engine int
}

type reqInfoKey struct{}

func reqInfoFrom(ctx context.Context) *reqInfo {
	ri, _ := ctx.Value(reqInfoKey{}).(*reqInfo)
	return ri
}

// logWriter records the status, the size and, for errors, the start of
// the body (the OpenAI error message), and echoes X-Request-Id.
type logWriter struct {
	http.ResponseWriter
	info    *reqInfo
	status  int
	bytes   int64
	errBody []byte
}

func (l *logWriter) WriteHeader(code int) {
	if l.status == 0 {
		l.status = code
		h := l.Header()
		if l.info.id != "" {
			h.Set("X-Request-Id", l.info.id)
		} else {
			l.info.id = h.Get("X-Request-Id")
		}
	}
	l.ResponseWriter.WriteHeader(code)
}

func (l *logWriter) Write(b []byte) (int, error) {
	if l.status == 0 {
		l.WriteHeader(http.StatusOK)
	}
	if l.status >= 400 && len(l.errBody) < 4096 {
		l.errBody = append(l.errBody, b[:min(len(b), 4096-len(l.errBody))]...)
	}
	n, err := l.ResponseWriter.Write(b)
	l.bytes += int64(n)
	return n, err
}

func (l *logWriter) Unwrap() http.ResponseWriter { return l.ResponseWriter }

func (l *logWriter) Flush() {
	if l.status == 0 {
		l.WriteHeader(http.StatusOK)
	}
	if f, ok := l.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// validRequestID accepts printable ASCII ids of reasonable length.
func validRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

// quietRoutes are probed and scraped all the time: their successes are
// logged at debug level only.
var quietRoutes = map[string]bool{"/health": true, "/ping": true, "/metrics": true, "/version": true}

// logRequests writes one structured line per request: request id, route,
// model, status, token counts, TTFT, total time, finish reason and whether
// the client went away. X-Request-Id from the client is honoured (used as
// the request's id in the log) and echoed; without one, the response
// carries the handler's id (cmpl-..., chatcmpl-...) or a generated one.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		info := &reqInfo{}
		if id := r.Header.Get("X-Request-Id"); validRequestID(id) {
			info.id = id
		}
		lw := &logWriter{ResponseWriter: w, info: info}
		r = r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, info))
		if info.id == "" {
			// Handlers of generations set their own id before writing;
			// others get one here.
			w.Header().Set("X-Request-Id", s.newID("req-"))
		}
		defer func() {
			// After a handler panic, recoverPanics (inside) has answered;
			// a re-panic (mid-stream abort) passes through unlogged here.
			s.logRequest(r, lw, info, start)
		}()
		next.ServeHTTP(lw, r)
	})
}

func (s *Server) logRequest(r *http.Request, lw *logWriter, info *reqInfo, start time.Time) {
	status := lw.status
	if status == 0 {
		status = http.StatusOK
	}
	if info.id == "" {
		info.id = lw.Header().Get("X-Request-Id")
	}
	route := r.URL.Path
	if p := r.Pattern; p != "" && p != "/" {
		route = p
	}
	level := slog.LevelInfo
	switch {
	case quietRoutes[r.URL.Path]:
		// Probes and scrapes (a 503 from /health while loading or
		// draining is their answer, not a failure).
		level = slog.LevelDebug
	case status >= 500 && status != http.StatusServiceUnavailable:
		level = slog.LevelError
	case status >= 400:
		level = slog.LevelWarn // the client's error, or 503 loading/draining
	case s.opts.RequestLog.Disabled:
		return
	}
	ctx := context.Background()
	if !s.log.Enabled(ctx, level) {
		return
	}
	disconnected := r.Context().Err() != nil
	attrs := make([]slog.Attr, 0, 20)
	attrs = append(attrs,
		slog.String("request_id", info.id),
		slog.String("method", r.Method),
		slog.String("route", route),
		slog.Int("status", status),
	)
	if info.model != "" {
		attrs = append(attrs, slog.String("model", info.model))
	}
	if info.generation {
		attrs = append(attrs,
			slog.Int("prompt_tokens", info.promptTokens),
			slog.Int("completion_tokens", info.completionTokens),
		)
		if info.cachedTokens > 0 {
			attrs = append(attrs, slog.Int("cached_tokens", info.cachedTokens))
		}
		if info.ttft > 0 {
			attrs = append(attrs, slog.Float64("ttft_ms", ms(info.ttft)))
		}
		attrs = append(attrs, slog.String("finish_reason", info.finish))
	}
	attrs = append(attrs,
		slog.Float64("total_ms", ms(time.Since(start))),
		slog.Bool("client_disconnected", disconnected),
		slog.String("client", r.RemoteAddr),
	)
	if status >= 400 {
		attrs = append(attrs, slog.String("error", errorMessage(lw.errBody)))
	}
	if s.opts.RequestLog.Verbose && info.generation {
		attrs = append(attrs, s.verboseAttrs(info)...)
	}
	msg := "request"
	if status >= 400 {
		msg = "request failed"
	}
	s.log.LogAttrs(ctx, level, msg, attrs...)
}

// errorMessage extracts the OpenAI error's message from a response body.
func errorMessage(body []byte) string {
	var e openai.ErrorResponse
	if json.Unmarshal(bytes.TrimSpace(body), &e) == nil && e.Error.Message != "" {
		return e.Error.Message
	}
	return strings.TrimSpace(string(body))
}

// verboseAttrs are --enable-log-requests' prompt and params, the prompt
// cut at --max-log-len characters and ids (vLLM's max_log_len).
func (s *Server) verboseAttrs(info *reqInfo) []slog.Attr {
	var out []slog.Attr
	ids := info.promptIDs
	maxLen := s.opts.RequestLog.MaxLen
	if maxLen > 0 && len(ids) > maxLen {
		ids = ids[:maxLen]
	}
	if s.tok != nil && len(info.promptIDs) > 0 {
		text := s.tok.Decode(info.promptIDs, false)
		if maxLen > 0 && utf8.RuneCountInString(text) > maxLen {
			text = string([]rune(text)[:maxLen])
		}
		out = append(out, slog.String("prompt", text))
	}
	out = append(out, slog.Any("prompt_token_ids", ids))
	if info.numPrompts > 1 {
		out = append(out, slog.Int("prompts", info.numPrompts))
	}
	if p := info.params; p != nil {
		ps := []any{"n", p.N, "max_tokens", p.MaxTokens, "temperature", p.Temperature, "top_p", p.TopP,
			"top_k", p.TopK, "min_p", p.MinP, "repetition_penalty", p.RepetitionPenalty,
			"presence_penalty", p.PresencePenalty, "frequency_penalty", p.FrequencyPenalty}
		if p.Seed != nil {
			ps = append(ps, "seed", *p.Seed)
		}
		if len(p.Stop) > 0 {
			ps = append(ps, "stop", p.Stop)
		}
		out = append(out, slog.Group("params", ps...))
	}
	return out
}
