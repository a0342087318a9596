package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/metrics"
	"github.com/llmserve/llmserve/openai"
)

// writeError writes an OpenAI-shaped error.
func (s *Server) writeError(w http.ResponseWriter, status int, typ, msg, param string, code any) {
	e := openai.ErrorResponse{Error: openai.Error{Message: msg, Type: typ, Code: code}}
	if code == nil {
		e.Error.Code = status
	}
	if param != "" {
		e.Error.Param = &param
	}
	b, _ := json.Marshal(e)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// apiError is an error as the client sees it.
type apiError struct {
	status     int
	typ, msg   string
	param      string
	code       any    // nil: the status
	retryAfter string // Retry-After header, when set
	reject     string // metrics rejection reason, when counted
	internal   error  // logged, never sent
	closeConn  bool   // the connection cannot be reused (a body left half read)
}

// errorOf maps err to its status and OpenAI error: the only place errors
// become HTTP statuses. Bad input is always a 4xx; an engine refusal of a
// request the API edge let through is a 400 too (the engine only refuses
// what it cannot run), but with our own words: the engine's message is
// internal and only logged.
func (s *Server) errorOf(err error) apiError {
	var pe *openai.ParamError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return apiError{status: http.StatusRequestEntityTooLarge, typ: "invalid_request_error",
			msg: fmt.Sprintf("request body exceeds %d bytes", mbe.Limit), code: "request_too_large", reject: metrics.RejectInvalid}
	case errors.As(err, &pe):
		return apiError{status: http.StatusBadRequest, typ: "invalid_request_error", msg: pe.Message, param: pe.Param, reject: metrics.RejectInvalid}
	case errors.Is(err, ErrModelNotFound):
		return apiError{status: http.StatusNotFound, typ: "invalid_request_error", msg: strings.TrimPrefix(err.Error(), ErrModelNotFound.Error()+": "),
			param: "model", code: "model_not_found", reject: metrics.RejectInvalid}
	case errors.Is(err, ErrUnauthorized):
		return apiError{status: http.StatusUnauthorized, typ: "authentication_error", msg: "invalid or missing API key", code: "invalid_api_key"}
	case errors.Is(err, ErrOverloaded):
		return apiError{status: http.StatusTooManyRequests, typ: "rate_limit_error", retryAfter: "1",
			msg: fmt.Sprintf("server is at capacity (%d concurrent requests); retry later", s.opts.MaxConcurrentRequests), code: "rate_limit_exceeded"}
	case errors.Is(err, ErrQueueTimeout):
		return apiError{status: http.StatusServiceUnavailable, typ: "service_unavailable_error", retryAfter: "1",
			msg: fmt.Sprintf("request waited longer than %s in the queue", s.opts.MaxQueueWait), code: "queue_timeout"}
	case errors.Is(err, ErrDraining), errors.Is(err, engine.ErrClosed):
		return apiError{status: http.StatusServiceUnavailable, typ: "service_unavailable_error", msg: "server is shutting down", code: "draining"}
	case errors.Is(err, ErrNotReady):
		return apiError{status: http.StatusServiceUnavailable, typ: "service_unavailable_error", retryAfter: "5", msg: "model is loading", code: "loading"}
	case errors.Is(err, ErrNoTokenizer):
		return apiError{status: http.StatusBadRequest, typ: "invalid_request_error",
			msg: "the server runs without a tokenizer (--skip-tokenizer-init): send token ids", param: "prompt", reject: metrics.RejectInvalid}
	case errors.Is(err, engine.ErrTooLong):
		return apiError{status: http.StatusBadRequest, typ: "invalid_request_error", param: "prompt",
			msg: fmt.Sprintf("the prompt is longer than this model's maximum context length (%d tokens)", s.maxModelLen()), reject: metrics.RejectInvalid, internal: err}
	case errors.Is(err, engine.ErrInvalidRequest):
		return apiError{status: http.StatusBadRequest, typ: "invalid_request_error",
			msg: "the request's parameters are outside what this server can run", reject: metrics.RejectInvalid, internal: err}
	case errors.Is(err, ErrBodyTimeout):
		return apiError{status: http.StatusRequestTimeout, typ: "invalid_request_error", msg: err.Error(),
			code: "request_timeout", reject: metrics.RejectInvalid, closeConn: true}
	case errors.Is(err, ErrShutdownDeadline):
		status, typ, msg, code := endError(err)
		return apiError{status: status, typ: typ, msg: msg, code: code, reject: metrics.RejectDraining}
	case errors.Is(err, engine.ErrUnhealthy), errors.Is(err, engine.ErrStepFailed):
		status, typ, msg, code := endError(err)
		return apiError{status: status, typ: typ, msg: msg, code: code, reject: metrics.RejectEngine, internal: err}
	}
	return apiError{status: http.StatusInternalServerError, typ: "server_error", msg: "internal server error", reject: metrics.RejectEngine, internal: err}
}

// writeErr writes err as errorOf maps it, counting and logging it.
func (s *Server) writeErr(w http.ResponseWriter, err error) {
	if errors.Is(err, errClientGone) {
		return // nobody to answer
	}
	e := s.errorOf(err)
	if e.reject != "" {
		s.metrics.Reject(e.reject)
	}
	switch {
	case e.status >= 500 && e.internal != nil:
		s.log.Error("request failed", "err", e.internal)
	case e.internal != nil:
		// The API edge should have refused this with the field's name.
		s.log.Warn("engine refused a request the API accepted", "err", e.internal)
	}
	if e.retryAfter != "" {
		w.Header().Set("Retry-After", e.retryAfter)
	}
	if e.closeConn {
		w.Header().Set("Connection", "close")
	}
	s.writeError(w, e.status, e.typ, e.msg, e.param, e.code)
}

// decodeJSON reads a JSON body of at most MaxBodyBytes into v, turning
// decoding failures into *openai.ParamError naming the field.
func (s *Server) decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
	// The body is kept to find the fields v does not declare (checkFields).
	var raw bytes.Buffer
	dec := json.NewDecoder(io.TeeReader(body, &raw))
	err := dec.Decode(v)
	if err == nil {
		// Anything but whitespace after the object is malformed.
		if _, terr := dec.Token(); terr != io.EOF {
			var mbe *http.MaxBytesError
			if errors.As(terr, &mbe) || errors.Is(terr, ErrBodyTimeout) {
				return terr
			}
			return openai.Invalid("", "malformed JSON: unexpected data after the request object")
		}
		if err := s.checkFields(r, raw.Bytes(), v); err != nil {
			return err
		}
		s.afterDecode(r, v)
		return nil
	}
	var mbe *http.MaxBytesError
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &mbe), errors.Is(err, ErrBodyTimeout):
		return err
	case errors.Is(err, io.EOF):
		return openai.Invalid("", "request body is empty")
	case errors.As(err, &se), errors.Is(err, io.ErrUnexpectedEOF):
		return openai.Invalid("", "malformed JSON: %v", err)
	case errors.As(err, &te):
		field := jsonField(te.Field)
		if field == "" {
			return openai.Invalid("", "request body must be a JSON object")
		}
		return openai.Invalid(field, "%s: expected %s, got JSON %s", field, jsonKind(te.Type.String()), te.Value)
	}
	return openai.Invalid("", "invalid request: %v", err)
}

// jsonField drops the Go names of embedded structs from a decoder's field
// path ("Sampling.temperature" -> "temperature"); JSON names are lowercase.
func jsonField(path string) string {
	parts := strings.Split(path, ".")
	out := parts[:0]
	for _, p := range parts {
		if p != "" && p[0] >= 'A' && p[0] <= 'Z' {
			continue
		}
		out = append(out, p)
	}
	return strings.Join(out, ".")
}

func jsonKind(goType string) string {
	switch {
	case strings.HasPrefix(goType, "*"):
		return jsonKind(goType[1:])
	case goType == "string":
		return "a string"
	case goType == "bool":
		return "a boolean"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "an integer"
	case strings.HasPrefix(goType, "float"):
		return "a number"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map["):
		return "an object"
	case strings.HasSuffix(goType, "Prompt"):
		return "a string, a list of strings, or token ids"
	case strings.HasSuffix(goType, "StringList"):
		return "a string or a list of strings"
	case strings.HasSuffix(goType, "TokenIDs"):
		return "a list of integer token ids"
	case strings.HasSuffix(goType, "LogitBias"):
		return "an object of token ids to numbers"
	}
	return goType
}
