package server

import (
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

// writeErr maps err to its status and writes it; the only place errors
// become HTTP statuses.
func (s *Server) writeErr(w http.ResponseWriter, err error) {
	var pe *openai.ParamError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		s.metrics.Reject(metrics.RejectInvalid)
		s.writeError(w, http.StatusRequestEntityTooLarge, "invalid_request_error",
			fmt.Sprintf("request body exceeds %d bytes", mbe.Limit), "", "request_too_large")
	case errors.As(err, &pe):
		s.metrics.Reject(metrics.RejectInvalid)
		s.writeError(w, http.StatusBadRequest, "invalid_request_error", pe.Message, pe.Param, nil)
	case errors.Is(err, ErrModelNotFound):
		s.metrics.Reject(metrics.RejectInvalid)
		s.writeError(w, http.StatusNotFound, "invalid_request_error", strings.TrimPrefix(err.Error(), ErrModelNotFound.Error()+": "), "model", "model_not_found")
	case errors.Is(err, ErrUnauthorized):
		s.writeError(w, http.StatusUnauthorized, "authentication_error", "invalid or missing API key", "", "invalid_api_key")
	case errors.Is(err, ErrOverloaded):
		w.Header().Set("Retry-After", "1")
		s.writeError(w, http.StatusTooManyRequests, "rate_limit_error",
			fmt.Sprintf("server is at capacity (%d concurrent requests); retry later", s.opts.MaxConcurrentRequests), "", "rate_limit_exceeded")
	case errors.Is(err, ErrQueueTimeout):
		w.Header().Set("Retry-After", "1")
		s.writeError(w, http.StatusServiceUnavailable, "service_unavailable_error",
			fmt.Sprintf("request waited longer than %s in the queue", s.opts.MaxQueueWait), "", "queue_timeout")
	case errors.Is(err, ErrDraining), errors.Is(err, engine.ErrClosed):
		s.writeError(w, http.StatusServiceUnavailable, "service_unavailable_error", "server is shutting down", "", "draining")
	case errors.Is(err, ErrNotReady):
		w.Header().Set("Retry-After", "5")
		s.writeError(w, http.StatusServiceUnavailable, "service_unavailable_error", "model is loading", "", "loading")
	case errors.Is(err, ErrNoTokenizer):
		s.metrics.Reject(metrics.RejectInvalid)
		s.writeError(w, http.StatusBadRequest, "invalid_request_error", "the server runs without a tokenizer (--skip-tokenizer-init): send token ids", "prompt", nil)
	case errors.Is(err, ErrBodyTimeout):
		s.metrics.Reject(metrics.RejectInvalid)
		w.Header().Set("Connection", "close")
		s.writeError(w, http.StatusRequestTimeout, "invalid_request_error", err.Error(), "", "request_timeout")
	case errors.Is(err, ErrShutdownDeadline), errors.Is(err, engine.ErrUnhealthy), errors.Is(err, engine.ErrStepFailed):
		status, typ, msg, code := endError(err)
		if errors.Is(err, ErrShutdownDeadline) {
			s.metrics.Reject(metrics.RejectDraining)
		} else {
			s.metrics.Reject(metrics.RejectEngine)
			s.log.Error("request failed", "err", err)
		}
		s.writeError(w, status, typ, msg, "", code)
	case errors.Is(err, engine.ErrInvalidRequest), errors.Is(err, engine.ErrTooLong):
		s.metrics.Reject(metrics.RejectInvalid)
		s.writeError(w, http.StatusBadRequest, "invalid_request_error", err.Error(), "", nil)
	default:
		s.metrics.Reject(metrics.RejectEngine)
		s.log.Error("request failed", "err", err)
		s.writeError(w, http.StatusInternalServerError, "server_error", "internal server error", "", nil)
	}
}

// decodeJSON reads a JSON body of at most MaxBodyBytes into v, turning
// decoding failures into *openai.ParamError naming the field.
func (s *Server) decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
	dec := json.NewDecoder(body)
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
	}
	return goType
}
