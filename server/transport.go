package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The transport bounds (Options.StreamWriteTimeout, BodyReadTimeout,
// IdleTimeout, MaxConnections) live here: a per-write deadline on every
// response, a read deadline on request bodies only, and a connection limit
// that closes idle keep-alive connections first and keeps a reserve for the
// health routes. None of them is an http.Server WriteTimeout or ReadTimeout:
// those bound a whole exchange and would cut long, healthy streams.

// ErrBodyTimeout: the request body did not arrive within BodyReadTimeout (408).
var ErrBodyTimeout = errors.New("server: request body read timed out")

// defaultReadHeaderTimeout bounds the request line and headers.
const defaultReadHeaderTimeout = 10 * time.Second

// NewHTTPServer returns an http.Server for s.Handler with the transport
// bounds of s's options. Serve it on s.Listener(ln).
func (s *Server) NewHTTPServer() *http.Server {
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: s.opts.ReadHeaderTimeout,
		IdleTimeout:       s.opts.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	if s.conns != nil {
		hs.ConnState = s.conns.track
		hs.ConnContext = s.conns.connContext
	}
	if s.opts.TLSConfig != nil {
		hs.TLSConfig = s.opts.TLSConfig.Clone()
		// HTTP/1.1 only, as uvicorn: the transport bounds are per connection.
		hs.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	return hs
}

// Serve serves hs (from NewHTTPServer) on s.Listener(ln), over TLS when
// Options.TLSConfig is set. It returns http.ErrServerClosed after Shutdown.
func (s *Server) Serve(hs *http.Server, ln net.Listener) error {
	if hs.TLSConfig != nil {
		return hs.ServeTLS(s.Listener(ln), "", "")
	}
	return hs.Serve(s.Listener(ln))
}

// Listener wraps ln with the MaxConnections limit (ln itself when there is
// none). The server must come from NewHTTPServer, whose ConnState hook
// tells the limit which connections are idle.
func (s *Server) Listener(ln net.Listener) net.Listener {
	if s.conns == nil {
		return ln
	}
	return &limitListener{Listener: ln, lim: s.conns}
}

// ConnStats are the connection limit's counters.
type ConnStats struct {
	Open    int    // connections open now
	Idle    int    // of which idle between keep-alive requests
	Reserve int    // of which accepted into the reserve
	Evicted uint64 // idle connections closed to make room
	Refused uint64 // connections closed at accept: every one open was busy
}

// ConnStats reports the connection limit's counters (zero without one).
func (s *Server) ConnStats() ConnStats {
	if s.conns == nil {
		return ConnStats{}
	}
	return s.conns.stats()
}

// respWriter is what every handler writes through. It remembers whether the
// response has started (so a panic can still become a clean 500) and arms
// the per-write deadline before each write and flush: a client that stops
// reading is cut after StreamWriteTimeout of no progress, while a long
// stream to a client that reads is never cut.
type respWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController // of the connection's writer
	timeout time.Duration
	wrote   bool
}

func (t *respWriter) arm() {
	if t.timeout > 0 {
		// Not supported by every writer (httptest's recorder): then unbounded.
		_ = t.rc.SetWriteDeadline(time.Now().Add(t.timeout))
	}
}

func (t *respWriter) WriteHeader(code int) { t.wrote = true; t.ResponseWriter.WriteHeader(code) }

func (t *respWriter) Write(b []byte) (int, error) {
	t.wrote = true
	t.arm()
	return t.ResponseWriter.Write(b)
}

func (t *respWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// FlushError flushes and reports a failed write (http.ResponseController
// prefers it to Flush, so the SSE writer sees a stalled client's error).
func (t *respWriter) FlushError() error {
	t.arm()
	return t.rc.Flush()
}

func (t *respWriter) Flush() { _ = t.FlushError() }

// deadlineBody reports a body read cut by BodyReadTimeout as ErrBodyTimeout.
// net/http clears the read deadline itself once the body has been read to
// its end (before it starts the background read that notices a client
// hanging up), so the deadline never reaches the response phase.
type deadlineBody struct {
	io.ReadCloser
	timeout time.Duration
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w: not received within %s", ErrBodyTimeout, b.timeout)
	}
	return n, err
}

// transport applies the per-request parts of the transport bounds: the body
// read deadline, the per-write deadline, and the reserve connections'
// restriction to the cheap routes.
func (s *Server) transport(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw := &respWriter{ResponseWriter: w, rc: http.NewResponseController(w), timeout: s.opts.StreamWriteTimeout}
		if onReserve(r.Context()) && !cheapRoute(r.URL.Path) {
			rw.Header().Set("Connection", "close")
			rw.Header().Set("Retry-After", "1")
			s.writeError(rw, http.StatusServiceUnavailable, "service_unavailable_error",
				"the server is at its connection limit; this connection only serves /health, /ping, /metrics and /v1/models: retry on a new connection", "", "too_many_connections")
			return
		}
		if d := s.opts.BodyReadTimeout; d > 0 && r.Body != nil && r.Body != http.NoBody {
			if rw.rc.SetReadDeadline(time.Now().Add(d)) == nil {
				r.Body = &deadlineBody{ReadCloser: r.Body, timeout: d}
			}
		}
		h.ServeHTTP(rw, r)
	})
}

// cheapRoute reports whether a reserve connection may serve path: routes
// that answer at once from memory, so that an orchestrator's probes and
// scrapes get through when every other connection is taken.
func cheapRoute(path string) bool {
	switch path {
	case "/health", "/ping", "/metrics", "/v1/models", "/models":
		return true
	}
	return false
}

type reserveKey struct{}

func onReserve(ctx context.Context) bool { b, _ := ctx.Value(reserveKey{}).(bool); return b }

// connLimiter bounds open connections to max. Past max-reserve, an accept
// first closes the longest-idle keep-alive connection (an idle connection
// costs a descriptor and nothing else); when none is idle it admits the
// connection into the reserve, which serves only the cheap routes; at max
// with nothing idle it closes the new connection at once rather than leave
// it in the kernel's backlog, where even /health would time out.
type connLimiter struct {
	max, reserve int
	log          *slog.Logger

	mu    sync.Mutex
	conns map[*limitedConn]struct{}

	evicted, refused atomic.Uint64
	lastWarn         atomic.Int64 // unix seconds: refusals are logged once a second at most
}

func newConnLimiter(limit, reserve int, log *slog.Logger) *connLimiter {
	reserve = min(max(reserve, 0), limit-1)
	return &connLimiter{max: limit, reserve: reserve, log: log, conns: make(map[*limitedConn]struct{}, limit)}
}

// limitedConn is a connection counted by a connLimiter. Its fields but the
// net.Conn are guarded by the limiter's mutex.
type limitedConn struct {
	net.Conn
	lim       *connLimiter
	reserve   bool
	idle      bool
	idleSince time.Time
}

// Close closes the connection and gives its place back.
func (c *limitedConn) Close() error {
	c.lim.remove(c)
	return c.Conn.Close()
}

type limitListener struct {
	net.Listener
	lim *connLimiter
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if lc := l.lim.admit(c); lc != nil {
			return lc, nil
		}
		n := l.lim.refused.Add(1)
		if now := time.Now().Unix(); l.lim.lastWarn.Swap(now) != now {
			l.lim.log.Warn("connection refused: at the connection limit with none idle", "max_connections", l.lim.max, "refused_total", n)
		}
		_ = c.Close()
	}
}

// admit counts c in, closing an idle connection first when the normal
// places are taken; nil means refused.
func (l *connLimiter) admit(c net.Conn) *limitedConn {
	lc := &limitedConn{Conn: c, lim: l}
	var victim *limitedConn
	l.mu.Lock()
	if len(l.conns) >= l.max-l.reserve {
		for o := range l.conns {
			if o.idle && (victim == nil || o.idleSince.Before(victim.idleSince)) {
				victim = o
			}
		}
		if victim != nil {
			delete(l.conns, victim)
		}
	}
	switch n := len(l.conns); {
	case n < l.max-l.reserve:
	case n < l.max:
		lc.reserve = true
	default:
		lc = nil
	}
	if lc != nil {
		l.conns[lc] = struct{}{}
	}
	l.mu.Unlock()
	if victim != nil {
		l.evicted.Add(1)
		_ = victim.Conn.Close() // its server goroutine sees the read fail and ends
	}
	return lc
}

func (l *connLimiter) remove(c *limitedConn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// track is the http.Server's ConnState hook: it keeps each connection's
// idleness for admit.
func (l *connLimiter) track(c net.Conn, st http.ConnState) {
	lc, ok := unwrapTLS(c).(*limitedConn)
	if !ok {
		return
	}
	switch st {
	case http.StateIdle:
		l.mu.Lock()
		lc.idle, lc.idleSince = true, time.Now()
		l.mu.Unlock()
	case http.StateNew, http.StateActive:
		l.mu.Lock()
		lc.idle = false
		l.mu.Unlock()
	case http.StateClosed, http.StateHijacked:
		l.remove(lc)
	}
}

func (l *connLimiter) connContext(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := unwrapTLS(c).(*limitedConn); ok && lc.reserve {
		return context.WithValue(ctx, reserveKey{}, true)
	}
	return ctx
}

// unwrapTLS returns the connection under a TLS one (ServeTLS wraps the
// listener's connections, so the hooks see *tls.Conn).
func unwrapTLS(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return c
}

func (l *connLimiter) stats() ConnStats {
	l.mu.Lock()
	st := ConnStats{Open: len(l.conns)}
	for c := range l.conns {
		if c.idle {
			st.Idle++
		}
		if c.reserve {
			st.Reserve++
		}
	}
	l.mu.Unlock()
	st.Evicted, st.Refused = l.evicted.Load(), l.refused.Load()
	return st
}
