package server

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/llmserve/llmserve/openai"
)

// SamplingDefaults replace OpenAI's defaults for requests that do not set
// the field: vLLM's --generation-config auto reads them from the model's
// generation_config.json. Nil fields keep OpenAI's default.
type SamplingDefaults struct {
	Temperature       *float64
	TopP              *float64
	TopK              *int
	RepetitionPenalty *float64
}

// IsZero reports whether no default is set.
func (d SamplingDefaults) IsZero() bool {
	return d.Temperature == nil && d.TopP == nil && d.TopK == nil && d.RepetitionPenalty == nil
}

func (d SamplingDefaults) apply(s *openai.Sampling) {
	if s.Temperature == nil && d.Temperature != nil {
		v := *d.Temperature
		s.Temperature = &v
	}
	if s.TopP == nil && d.TopP != nil {
		v := *d.TopP
		s.TopP = &v
	}
	if s.TopK == nil && d.TopK != nil {
		v := *d.TopK
		s.TopK = &v
	}
	if s.RepetitionPenalty == nil && d.RepetitionPenalty != nil {
		v := *d.RepetitionPenalty
		s.RepetitionPenalty = &v
	}
}

// afterDecode runs on every decoded request body: it notes the model for
// the request log, applies the sampling defaults, and settles
// return_token_ids (on by default without a tokenizer, as vLLM's
// --skip-tokenizer-init returns ids).
func (s *Server) afterDecode(r *http.Request, v any) {
	info := reqInfoFrom(r.Context())
	if info == nil {
		info = &reqInfo{}
	}
	var sp *openai.Sampling
	switch x := v.(type) {
	case *GenerateRequest:
		sp = &x.Sampling
	case *openai.CompletionRequest:
		sp = &x.Sampling
	case *openai.ChatCompletionRequest:
		sp = &x.Sampling
	case *openai.TokenizeRequest:
		info.model = x.Model
	case *openai.DetokenizeRequest:
		info.model = x.Model
	}
	if sp == nil {
		return
	}
	info.model = sp.Model
	if info.model == "" {
		info.model = s.opts.ModelNames[0]
	}
	s.opts.SamplingDefaults.apply(sp)
	if sp.ReturnTokensAsTokenIDs == nil {
		asIDs := s.opts.ReturnTokensAsTokenIDs
		sp.ReturnTokensAsTokenIDs = &asIDs
	}
	if sp.ReturnTokenIDs != nil {
		info.wantTokenIDs = *sp.ReturnTokenIDs
	} else {
		info.wantTokenIDs = s.tok == nil
	}
}

// servedModels names the served models for a 404.
func (s *Server) servedModels() string {
	quoted := make([]string, len(s.opts.ModelNames))
	for i, n := range s.opts.ModelNames {
		quoted[i] = "`" + n + "`"
	}
	return strings.Join(quoted, ", ")
}

// modelNotFound is the 404 for an unknown model: it names the served ones.
func (s *Server) modelNotFound(name string) error {
	return fmt.Errorf("%w: The model `%s` does not exist. This server serves %s.", ErrModelNotFound, name, s.servedModels())
}

func (s *Server) modelEntry(name string) openai.Model {
	return openai.Model{ID: name, Object: "model", Created: s.start.Unix(), OwnedBy: "llmserve",
		Root: s.opts.ModelRoot, MaxModelLen: s.maxModelLen()}
}

// handleModel is GET /v1/models/{id} (the OpenAI SDK's models.retrieve).
// Ids may hold slashes (Qwen/Qwen2.5-0.5B), so the route matches the rest
// of the path.
func (s *Server) handleModel(w http.ResponseWriter, r *http.Request) {
	id := strings.TrimPrefix(r.URL.Path, "/v1/models/")
	for _, n := range s.opts.ModelNames {
		if n == id {
			writeJSON(w, http.StatusOK, s.modelEntry(n))
			return
		}
	}
	s.writeErr(w, s.modelNotFound(id))
}

// handleVersion is vLLM's GET /version.
func (s *Server) handleVersion(w http.ResponseWriter, r *http.Request) {
	v := s.opts.Version
	if v == nil {
		v = map[string]string{"version": "devel"}
	}
	writeJSON(w, http.StatusOK, v)
}
