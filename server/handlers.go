package server

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/llmserve/llmserve/openai"
)

// GenerateRequest is the reference server's POST /generate body.
type GenerateRequest struct {
	openai.Sampling
	Prompt openai.Prompt `json:"prompt"`
}

// GenerateResponse is the reference server's non-streaming /generate answer.
type GenerateResponse struct {
	Text             string  `json:"text"`
	FinishReason     string  `json:"finish_reason"`
	PromptTokens     int     `json:"prompt_tokens"`
	CompletionTokens int     `json:"completion_tokens"`
	TTFTms           float64 `json:"ttft_ms"`
	TotalMs          float64 `json:"total_ms"`
}

// parseGenerate decodes and validates a /generate body.
func (s *Server) parseGenerate(w http.ResponseWriter, r *http.Request) (*GenerateRequest, *genRequest, error) {
	var req GenerateRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return nil, nil, err
	}
	if _, err := s.resolveModel(req.Model); err != nil {
		return nil, nil, err
	}
	params, err := req.Sampling.Params(s.limits())
	if err != nil {
		return nil, nil, err
	}
	if params.N != 1 {
		return nil, nil, openai.Invalid("n", "/generate returns one completion; use /v1/completions for n > 1")
	}
	g := &genRequest{id: s.newID("gen-"), params: params, priority: req.Priority, defaultMax: s.opts.DefaultMaxTokens}
	if req.Prompt.Len() != 1 {
		return nil, nil, openai.Invalid("prompt", "prompt must be one string or one list of token ids")
	}
	if g.prompts, err = s.promptIDs(req.Prompt, req.AddSpecialTokens); err != nil {
		return nil, nil, err
	}
	if err := s.checkPrompts(g, "prompt"); err != nil {
		return nil, nil, err
	}
	return &req, g, nil
}

func (s *Server) handleGenerate(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	req, g, err := s.parseGenerate(w, r)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	c, err := s.begin(r, start, g)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	defer c.done()
	w.Header().Set("X-Request-Id", g.id)
	sq := &c.seqs[0]
	if !req.Stream {
		if err := c.collect(); err != nil {
			s.writeCollectErr(w, err)
			return
		}
		resp := GenerateResponse{Text: string(sq.text), FinishReason: sq.finish, PromptTokens: c.prompts[0].tokens,
			CompletionTokens: sq.completion, TTFTms: ms(c.firstAt.Sub(start)), TotalMs: ms(time.Since(start))}
		writeJSON(w, http.StatusOK, resp)
		return
	}
	e := startSSE(w)
	c.stream(e, func() {
		finish, _ := shownFinish(sq, c.failure() != nil)
		if sq.pending && (len(sq.text) > 0 || finish != "") {
			e.event()
			e.buf = append(e.buf, `{"text":`...)
			e.buf = openai.AppendString(e.buf, sq.text)
			if finish != "" {
				e.buf = append(e.buf, `,"finish_reason":`...)
				e.buf = openai.AppendString(e.buf, finish)
				e.buf = append(e.buf, `,"prompt_tokens":`...)
				e.buf = strconv.AppendInt(e.buf, int64(c.prompts[0].tokens), 10)
				e.buf = append(e.buf, `,"completion_tokens":`...)
				e.buf = strconv.AppendInt(e.buf, int64(sq.completion), 10)
				e.buf = append(e.buf, `,"ttft_ms":`...)
				e.buf = strconv.AppendFloat(e.buf, ms(c.firstAt.Sub(start)), 'f', 3, 64)
				e.buf = append(e.buf, `,"total_ms":`...)
				e.buf = strconv.AppendFloat(e.buf, ms(time.Since(start)), 'f', 3, 64)
			}
			e.buf = append(e.buf, '}')
			e.end()
		}
		sq.text = sq.text[:0]
		sq.pending = false
		if c.closed {
			c.appendEnd(e, nil)
		}
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	list := openai.ModelList{Object: "list", Data: make([]openai.Model, 0, len(s.opts.ModelNames))}
	for _, n := range s.opts.ModelNames {
		list.Data = append(list.Data, openai.Model{ID: n, Object: "model", Created: s.start.Unix(), OwnedBy: "llmserve",
			Root: s.opts.ModelRoot, MaxModelLen: s.maxModelLen()})
	}
	writeJSON(w, http.StatusOK, list)
}

// HealthResponse is GET /health.
type HealthResponse struct {
	Status        string  `json:"status"`          // ok, loading, draining, unhealthy
	Error         string  `json:"error,omitempty"` // why unhealthy
	Model         string  `json:"model"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	Running       int     `json:"running"`
	Waiting       int     `json:"waiting"`
	Admitted      int     `json:"admitted"`
	KVCacheUsage  float64 `json:"kv_cache_usage"`
	// The memory picture of the reference's VRAM table, once loaded.
	Backend               string  `json:"backend,omitempty"`
	DType                 string  `json:"dtype,omitempty"`
	WeightsBytes          int64   `json:"weights_bytes,omitempty"`
	KVCacheBytes          int64   `json:"kv_cache_bytes,omitempty"`
	KVCacheCapacityTokens int     `json:"kv_cache_capacity_tokens,omitempty"`
	KVBlocksTotal         int     `json:"kv_cache_blocks_total,omitempty"`
	KVBlocksFree          int     `json:"kv_cache_blocks_free,omitempty"`
	BlockSize             int     `json:"block_size,omitempty"`
	MaxModelLen           int     `json:"max_model_len,omitempty"`
	MaxConcurrency        float64 `json:"max_concurrency,omitempty"` // KV capacity / max_model_len
}

// ModelInfo describes the loaded model for /health.
type ModelInfo struct {
	Backend      string
	DType        string
	WeightsBytes int64
	KVCacheBytes int64
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	st := s.stats()
	h := HealthResponse{Status: "ok", Model: s.opts.ModelNames[0], UptimeSeconds: time.Since(s.start).Seconds(),
		Running: st.Running, Waiting: st.Waiting, Admitted: s.Admitted(), KVCacheUsage: st.KVUsage,
		KVBlocksTotal: st.KVBlocksTotal, KVBlocksFree: st.KVBlocksFree, BlockSize: st.BlockSize,
		KVCacheCapacityTokens: st.KVBlocksTotal * st.BlockSize, MaxModelLen: s.maxModelLen()}
	if h.MaxModelLen > 0 {
		h.MaxConcurrency = float64(h.KVCacheCapacityTokens) / float64(h.MaxModelLen)
	}
	if mi := s.modelInfo.Load(); mi != nil {
		h.Backend, h.DType, h.WeightsBytes, h.KVCacheBytes = mi.Backend, mi.DType, mi.WeightsBytes, mi.KVCacheBytes
	}
	code := http.StatusOK
	herr := error(nil)
	if s.engine() != nil {
		herr = s.health()
	}
	switch {
	case herr != nil:
		// A device the engine cannot recover: 503 so an orchestrator
		// restarts the server rather than route requests to it.
		h.Status, h.Error, code = "unhealthy", herr.Error(), http.StatusServiceUnavailable
	case s.draining.Load():
		h.Status, code = "draining", http.StatusServiceUnavailable
	case s.engine() == nil:
		h.Status, code = "loading", http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") {
		writeJSON(w, http.StatusOK, s.metrics.Snapshot())
		return
	}
	s.prom.ServeHTTP(w, r)
}

func (s *Server) handleTokenize(w http.ResponseWriter, r *http.Request) {
	var req openai.TokenizeRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeErr(w, err)
		return
	}
	if _, err := s.resolveModel(req.Model); err != nil {
		s.writeErr(w, err)
		return
	}
	if s.tok == nil {
		s.writeErr(w, ErrNoTokenizer)
		return
	}
	if err := req.Check(); err != nil {
		s.writeErr(w, err)
		return
	}
	var ids []int
	if req.Prompt != nil {
		addSpecial := req.AddSpecialTokens == nil || *req.AddSpecialTokens
		ids = s.tok.Encode(*req.Prompt, addSpecial)
	} else {
		addGen, err := chatAddGen(req.AddGenerationPrompt, req.ContinueFinalMessage)
		if err != nil {
			s.writeErr(w, err)
			return
		}
		tools, err := req.TemplateTools()
		if err != nil {
			s.writeErr(w, err)
			return
		}
		// The same rendering as /v1/chat/completions, so the count is the
		// prompt a chat request with these fields would have.
		text, err := s.renderChat("messages", req.Messages, addGen, req.ContinueFinalMessage, templateKwargs(req.ChatTemplateKwargs, tools))
		if err != nil {
			s.writeErr(w, err)
			return
		}
		ids = s.tok.Encode(text, req.AddSpecialTokens != nil && *req.AddSpecialTokens)
	}
	resp := openai.TokenizeResponse{Count: len(ids), MaxModelLen: s.maxModelLen(), Tokens: ids}
	if resp.Tokens == nil {
		resp.Tokens = []int{}
	}
	if req.ReturnTokenStrs {
		resp.TokenStrs = make([]string, len(ids))
		for i, id := range ids {
			resp.TokenStrs[i] = s.tok.TokenText(id)
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleDetokenize(w http.ResponseWriter, r *http.Request) {
	var req openai.DetokenizeRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeErr(w, err)
		return
	}
	if _, err := s.resolveModel(req.Model); err != nil {
		s.writeErr(w, err)
		return
	}
	if s.tok == nil {
		s.writeErr(w, ErrNoTokenizer)
		return
	}
	vocab := s.tok.VocabSize()
	for _, id := range req.Tokens {
		if err := openai.CheckTokenID("tokens", id, vocab); err != nil {
			s.writeErr(w, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, openai.DetokenizeResponse{Prompt: s.tok.Decode(req.Tokens, false)})
}
