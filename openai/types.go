// Package openai holds the OpenAI-compatible wire types (with vLLM's
// extensions), their validation and conversion to engine requests, and
// allocation-free encoders for the streamed chunks.
package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
)

// ErrInvalidRequest is wrapped by every validation error of this package.
var ErrInvalidRequest = errors.New("openai: invalid request")

// ParamError is a validation error naming the offending request field.
type ParamError struct {
	Param   string
	Message string
}

func (e *ParamError) Error() string { return e.Message }
func (e *ParamError) Unwrap() error { return ErrInvalidRequest }

// Invalid returns a *ParamError for param.
func Invalid(param, format string, args ...any) error {
	return &ParamError{Param: param, Message: fmt.Sprintf(format, args...)}
}

// Error is the body of an OpenAI error response.
type Error struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    any     `json:"code"`
}

// ErrorResponse is OpenAI's error envelope: {"error": {...}}.
type ErrorResponse struct {
	Error Error `json:"error"`
}

// Prompt is a completion prompt: a string, a list of strings, a list of
// token ids, or a list of token-id lists. Exactly one of Texts and IDs is set.
type Prompt struct {
	Texts []string
	IDs   [][]int
}

// Len is the number of prompts.
func (p Prompt) Len() int { return len(p.Texts) + len(p.IDs) }

// UnmarshalJSON accepts the four OpenAI prompt shapes. Token ids must be
// integers: a null among them is an error, not token 0.
func (p *Prompt) UnmarshalJSON(b []byte) error {
	b = trimJSONSpace(b)
	*p = Prompt{}
	if len(b) == 0 || b[0] == 'n' { // null
		return nil
	}
	bad := func(what string) error {
		return &json.UnmarshalTypeError{Value: what, Type: reflect.TypeFor[Prompt]()}
	}
	if b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		p.Texts = []string{s}
		return nil
	}
	if b[0] != '[' {
		return bad(jsonValueKind(b))
	}
	inner := trimJSONSpace(b[1:])
	switch {
	case len(inner) == 0 || inner[0] == ']':
		return nil
	case inner[0] == '"':
		var ss []*string
		if err := json.Unmarshal(b, &ss); err != nil {
			return bad("mixed list")
		}
		p.Texts = make([]string, len(ss))
		for i, s := range ss {
			if s == nil {
				return bad("null at index " + strconv.Itoa(i))
			}
			p.Texts[i] = *s
		}
	case inner[0] == '[':
		var raw []json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			return bad("malformed list")
		}
		p.IDs = make([][]int, len(raw))
		for i, r := range raw {
			ids, err := parseIDs(r)
			switch {
			case err != nil:
				return bad("token-id list " + strconv.Itoa(i) + " with " + err.Error())
			case ids == nil:
				return bad("null in place of token-id list " + strconv.Itoa(i))
			}
			p.IDs[i] = ids
		}
	default:
		ids, err := parseIDs(b)
		if err != nil {
			return bad("token-id list with " + err.Error())
		}
		p.IDs = [][]int{ids}
	}
	return nil
}

// StringList is a string or a list of strings (the "stop" field).
type StringList []string

// UnmarshalJSON accepts a string, a list of strings or null.
func (s *StringList) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) == 0 || b[0] == 'n':
		*s = nil
	case b[0] == '"':
		var one string
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*s = StringList{one}
	case b[0] == '[':
		var many []string
		if err := json.Unmarshal(b, &many); err != nil {
			return &json.UnmarshalTypeError{Value: "list with non-strings", Type: reflect.TypeFor[StringList]()}
		}
		*s = many
	default:
		return &json.UnmarshalTypeError{Value: jsonValueKind(b), Type: reflect.TypeFor[StringList]()}
	}
	return nil
}

// jsonValueKind names the kind of a JSON value for error messages.
func jsonValueKind(b []byte) string {
	switch {
	case len(b) == 0:
		return "nothing"
	case b[0] == '{':
		return "object"
	case b[0] == '[':
		return "array"
	case b[0] == '"':
		return "string"
	case b[0] == 't' || b[0] == 'f':
		return "bool"
	case b[0] == 'n':
		return "null"
	}
	return "number"
}

// StreamOptions are the stream_options of a request.
type StreamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// Sampling are the sampling fields common to completions and chat (OpenAI's
// and vLLM's extensions).
type Sampling struct {
	Model            string         `json:"model"`
	MaxTokens        *int           `json:"max_tokens"`
	Temperature      *float64       `json:"temperature"`
	TopP             *float64       `json:"top_p"`
	N                *int           `json:"n"`
	Stream           bool           `json:"stream"`
	StreamOptions    *StreamOptions `json:"stream_options"`
	Stop             StringList     `json:"stop"`
	Seed             *int64         `json:"seed"`
	PresencePenalty  *float64       `json:"presence_penalty"`
	FrequencyPenalty *float64       `json:"frequency_penalty"`
	LogitBias        LogitBias      `json:"logit_bias"`
	User             string         `json:"user"`

	// vLLM extensions.
	TopK                   *int     `json:"top_k"`
	MinP                   *float64 `json:"min_p"`
	IgnoreEOS              bool     `json:"ignore_eos"`
	MinTokens              *int     `json:"min_tokens"`
	StopTokenIDs           TokenIDs `json:"stop_token_ids"`
	RepetitionPenalty      *float64 `json:"repetition_penalty"`
	ReturnTokensAsTokenIDs *bool    `json:"return_tokens_as_token_ids"` // default: the server's --return-tokens-as-token-ids
	ReturnTokenIDs         *bool    `json:"return_token_ids"`           // token_ids in choices (default: on with --skip-tokenizer-init)
	Priority               int      `json:"priority"`
	SkipSpecialTokens      *bool    `json:"skip_special_tokens"`
	AddSpecialTokens       *bool    `json:"add_special_tokens"`
}

// CompletionRequest is POST /v1/completions.
type CompletionRequest struct {
	Sampling
	Structured
	Prompt   Prompt `json:"prompt"`
	Logprobs *int   `json:"logprobs"`
	Echo     bool   `json:"echo"`
	BestOf   *int   `json:"best_of"`
	Suffix   string `json:"suffix"`
}

// ChatCompletionRequest is POST /v1/chat/completions.
type ChatCompletionRequest struct {
	Sampling
	Structured
	Messages            []map[string]any `json:"messages"`
	MaxCompletionTokens *int             `json:"max_completion_tokens"`
	Logprobs            bool             `json:"logprobs"`
	TopLogprobs         *int             `json:"top_logprobs"`
	// Tools are kept raw: the chat template sees them in the client's key
	// order (ToolSetup validates them).
	Tools             []json.RawMessage `json:"tools"`
	ToolChoice        json.RawMessage   `json:"tool_choice"`
	ParallelToolCalls *bool             `json:"parallel_tool_calls"`

	// vLLM extensions.
	AddGenerationPrompt  *bool          `json:"add_generation_prompt"`
	ContinueFinalMessage bool           `json:"continue_final_message"`
	ChatTemplateKwargs   map[string]any `json:"chat_template_kwargs"`
	Echo                 bool           `json:"echo"`
}

// Usage is a response's token accounting.
type Usage struct {
	PromptTokens        int                  `json:"prompt_tokens"`
	CompletionTokens    int                  `json:"completion_tokens"`
	TotalTokens         int                  `json:"total_tokens"`
	PromptTokensDetails *PromptTokensDetails `json:"prompt_tokens_details,omitempty"`
}

// PromptTokensDetails tells how many prompt tokens the prefix cache served.
type PromptTokensDetails struct {
	CachedTokens int `json:"cached_tokens"`
}

// Model is one entry of GET /v1/models.
type Model struct {
	ID          string  `json:"id"`
	Object      string  `json:"object"`
	Created     int64   `json:"created"`
	OwnedBy     string  `json:"owned_by"`
	Root        string  `json:"root"`
	Parent      *string `json:"parent"`
	MaxModelLen int     `json:"max_model_len"`
}

// ModelList is GET /v1/models.
type ModelList struct {
	Object string  `json:"object"`
	Data   []Model `json:"data"`
}

// TokenizeRequest is vLLM's POST /tokenize: either Prompt or Messages,
// the latter with the fields that shape the chat template's rendering.
type TokenizeRequest struct {
	Model                string           `json:"model"`
	Prompt               *string          `json:"prompt"`
	Messages             []map[string]any `json:"messages"`
	AddSpecialTokens     *bool            `json:"add_special_tokens"`
	AddGenerationPrompt  *bool            `json:"add_generation_prompt"`
	ContinueFinalMessage bool             `json:"continue_final_message"`
	ChatTemplateKwargs   map[string]any   `json:"chat_template_kwargs"`
	// Tools are kept raw, as in ChatCompletionRequest: the template sees
	// them as /v1/chat/completions hands them over.
	Tools           []json.RawMessage `json:"tools"`
	ReturnTokenStrs bool              `json:"return_token_strs"`
	// Accepted by vLLM, refused here (see Check).
	ChatTemplate      *string        `json:"chat_template"`
	MMProcessorKwargs map[string]any `json:"mm_processor_kwargs"`
}

// Check refuses what /tokenize cannot honour: both or neither of prompt and
// messages, chat fields beside a prompt (they would change nothing), a
// per-request chat template and multimodal processor arguments.
func (r *TokenizeRequest) Check() error {
	switch {
	case r.Prompt != nil && r.Messages != nil:
		return Invalid("prompt", "give either prompt or messages, not both")
	case r.Prompt == nil && r.Messages == nil:
		return Invalid("prompt", "prompt or messages is required")
	case r.ChatTemplate != nil:
		return Invalid("chat_template", "a per-request chat_template is not supported: the server's (--chat-template, else the tokenizer's) is used; vLLM too refuses it unless started with --trust-request-chat-template")
	case len(r.MMProcessorKwargs) > 0:
		return Invalid("mm_processor_kwargs", "mm_processor_kwargs is not supported: this server takes text only")
	}
	if r.Prompt == nil {
		return nil
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"tools", r.Tools != nil},
		{"chat_template_kwargs", r.ChatTemplateKwargs != nil},
		{"add_generation_prompt", r.AddGenerationPrompt != nil},
		{"continue_final_message", r.ContinueFinalMessage},
	} {
		if f.set {
			return Invalid(f.name, "%s applies to messages, not to prompt", f.name)
		}
	}
	return nil
}

// TemplateTools validates the tools and returns them as the chat template
// gets them.
func (r *TokenizeRequest) TemplateTools() ([]json.RawMessage, error) {
	_, render, err := parseTools(r.Tools)
	return render, err
}

// TokenizeResponse is vLLM's /tokenize response.
type TokenizeResponse struct {
	Count       int      `json:"count"`
	MaxModelLen int      `json:"max_model_len"`
	Tokens      []int    `json:"tokens"`
	TokenStrs   []string `json:"token_strs"`
}

// DetokenizeRequest is vLLM's POST /detokenize.
type DetokenizeRequest struct {
	Model  string   `json:"model"`
	Tokens TokenIDs `json:"tokens"`
}

// DetokenizeResponse is vLLM's /detokenize response.
type DetokenizeResponse struct {
	Prompt string `json:"prompt"`
}
