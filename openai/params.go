package openai

import (
	"fmt"
	"math"
	"strconv"

	"github.com/llmserve/llmserve/sample"
)

// CheckTokenID reports whether id is a valid token of a vocabulary of size vocab.
func CheckTokenID(param string, id, vocab int) error {
	if id < 0 || (vocab > 0 && id >= vocab) {
		return Invalid(param, "token id %d is outside the vocabulary (size %d)", id, vocab)
	}
	return nil
}

// Params converts and validates the shared sampling fields: every bound
// the engine's sampler has (sample.Params.Validate) is checked here first,
// naming the field the client sent. MaxTokens is 0 when the request gave
// none: the caller picks the endpoint's default.
func (s *Sampling) Params(lim Limits) (sample.Params, error) {
	p := sample.Defaults()
	p.MaxTokens = 0
	if s.StreamOptions != nil && !s.Stream {
		return p, Invalid("stream_options", "stream_options is only allowed when stream is true")
	}
	if s.N != nil {
		if *s.N < 1 || *s.N > lim.maxN() {
			msg := fmt.Sprintf("n must be between 1 and %d, got %d", lim.maxN(), *s.N)
			if lim.maxN() < MaxN {
				msg += fmt.Sprintf(" (the server runs at most %d sequences in a batch, and a prompt's n sequences run together)", lim.maxN())
			}
			return p, Invalid("n", "%s", msg)
		}
		p.N = *s.N
	}
	if s.MaxTokens != nil {
		if *s.MaxTokens < 1 {
			return p, Invalid("max_tokens", "max_tokens must be at least 1, got %d", *s.MaxTokens)
		}
		p.MaxTokens = *s.MaxTokens
	}
	if s.Temperature != nil {
		if !(*s.Temperature >= 0 && *s.Temperature <= sample.MaxTemperature) {
			return p, Invalid("temperature", "temperature must be non-negative and at most %v, got %v", sample.MaxTemperature, *s.Temperature)
		}
		p.Temperature = *s.Temperature
	}
	if s.TopP != nil {
		if !(*s.TopP > 0 && *s.TopP <= 1) {
			return p, Invalid("top_p", "top_p must be in (0, 1], got %v", *s.TopP)
		}
		p.TopP = *s.TopP
	}
	if s.TopK != nil {
		if *s.TopK < -1 {
			return p, Invalid("top_k", "top_k must be -1 (disable), 0 (disable) or at least 1, got %d", *s.TopK)
		}
		p.TopK = *s.TopK
	}
	if s.MinP != nil {
		if !(*s.MinP >= 0 && *s.MinP <= 1) {
			return p, Invalid("min_p", "min_p must be in [0, 1], got %v", *s.MinP)
		}
		p.MinP = *s.MinP
	}
	if s.PresencePenalty != nil {
		if !(math.Abs(*s.PresencePenalty) <= sample.MaxAbsPenalty) {
			return p, Invalid("presence_penalty", "presence_penalty must be in [-2, 2], got %v", *s.PresencePenalty)
		}
		p.PresencePenalty = *s.PresencePenalty
	}
	if s.FrequencyPenalty != nil {
		if !(math.Abs(*s.FrequencyPenalty) <= sample.MaxAbsPenalty) {
			return p, Invalid("frequency_penalty", "frequency_penalty must be in [-2, 2], got %v", *s.FrequencyPenalty)
		}
		p.FrequencyPenalty = *s.FrequencyPenalty
	}
	if s.RepetitionPenalty != nil {
		if !(*s.RepetitionPenalty >= sample.MinRepetitionPenalty && *s.RepetitionPenalty <= sample.MaxRepetitionPenalty) {
			return p, Invalid("repetition_penalty", "repetition_penalty must be in [%v, %v] (1 = off), got %v",
				sample.MinRepetitionPenalty, sample.MaxRepetitionPenalty, *s.RepetitionPenalty)
		}
		p.RepetitionPenalty = *s.RepetitionPenalty
	}
	if s.MinTokens != nil {
		if *s.MinTokens < 0 {
			return p, Invalid("min_tokens", "min_tokens must be non-negative, got %d", *s.MinTokens)
		}
		p.MinTokens = *s.MinTokens
	}
	if s.Seed != nil {
		seed := *s.Seed
		p.Seed = &seed
	}
	if len(s.Stop) > MaxStop {
		return p, Invalid("stop", "at most %d stop strings are allowed, got %d", MaxStop, len(s.Stop))
	}
	for i, st := range s.Stop {
		if st == "" {
			return p, Invalid("stop", "stop strings must not be empty (stop[%d])", i)
		}
		if len(st) > MaxStopBytes {
			return p, Invalid("stop", "stop strings must be at most %d bytes, stop[%d] has %d", MaxStopBytes, i, len(st))
		}
	}
	p.Stop = s.Stop
	if len(s.StopTokenIDs) > MaxStopTokenIDs {
		return p, Invalid("stop_token_ids", "at most %d stop_token_ids are allowed, got %d", MaxStopTokenIDs, len(s.StopTokenIDs))
	}
	for _, id := range s.StopTokenIDs {
		if err := CheckTokenID("stop_token_ids", id, lim.VocabSize); err != nil {
			return p, err
		}
	}
	p.StopTokenIDs = s.StopTokenIDs
	if len(s.LogitBias) > MaxLogitBias {
		return p, Invalid("logit_bias", "at most %d logit_bias entries are allowed, got %d", MaxLogitBias, len(s.LogitBias))
	}
	if len(s.LogitBias) > 0 {
		p.LogitBias = make(map[int]float64, len(s.LogitBias))
		for k, v := range s.LogitBias {
			id, err := strconv.Atoi(k)
			if err != nil {
				return p, Invalid("logit_bias", "logit_bias key %q is not a token id", k)
			}
			if err := CheckTokenID("logit_bias", id, lim.VocabSize); err != nil {
				return p, err
			}
			if !(math.Abs(v) <= sample.MaxAbsLogitBias) {
				return p, Invalid("logit_bias", "logit_bias values must be in [-100, 100], got %v for token %d", v, id)
			}
			p.LogitBias[id] = v
		}
	}
	p.IgnoreEOS = s.IgnoreEOS
	if s.SkipSpecialTokens != nil {
		p.SkipSpecialTokens = *s.SkipSpecialTokens
	}
	return p, nil
}

// CheckMinTokens validates min_tokens against the final max_tokens;
// maxParam names the field that set it (max_tokens or max_completion_tokens).
func CheckMinTokens(p sample.Params, maxParam string) error {
	if p.MinTokens > p.MaxTokens {
		return Invalid("min_tokens", "min_tokens (%d) must not exceed %s (%d)", p.MinTokens, maxParam, p.MaxTokens)
	}
	return nil
}

// Params converts and validates a completion request's sampling fields.
func (r *CompletionRequest) Params(lim Limits) (sample.Params, error) {
	p, err := r.Sampling.Params(lim)
	if err != nil {
		return p, err
	}
	if r.Prompt.Len() == 0 {
		return p, Invalid("prompt", "prompt is required and must not be empty")
	}
	if r.Logprobs != nil {
		if *r.Logprobs < 0 || *r.Logprobs > lim.maxLogprobs() {
			return p, Invalid("logprobs", "logprobs must be between 0 and %d, got %d", lim.maxLogprobs(), *r.Logprobs)
		}
		p.Logprobs = *r.Logprobs
	}
	if r.BestOf != nil && *r.BestOf != p.N {
		return p, Invalid("best_of", "best_of is not supported unless equal to n (%d), got %d", p.N, *r.BestOf)
	}
	if r.Echo {
		return p, Invalid("echo", "echo is not supported")
	}
	if r.Suffix != "" {
		return p, Invalid("suffix", "suffix is not supported")
	}
	return p, nil
}

// MaxTokensParam names the field that bounds the completion's length, for
// errors: max_completion_tokens when the client sent it, else max_tokens.
func (r *ChatCompletionRequest) MaxTokensParam() string {
	if r.MaxCompletionTokens != nil {
		return "max_completion_tokens"
	}
	return "max_tokens"
}

// Params converts and validates a chat request's sampling fields.
func (r *ChatCompletionRequest) Params(lim Limits) (sample.Params, error) {
	p, err := r.Sampling.Params(lim)
	if err != nil {
		return p, err
	}
	if len(r.Messages) == 0 {
		return p, Invalid("messages", "messages is required and must not be empty")
	}
	if r.MaxCompletionTokens != nil {
		if *r.MaxCompletionTokens < 1 {
			return p, Invalid("max_completion_tokens", "max_completion_tokens must be at least 1, got %d", *r.MaxCompletionTokens)
		}
		p.MaxTokens = *r.MaxCompletionTokens
	}
	if r.TopLogprobs != nil {
		if !r.Logprobs {
			return p, Invalid("top_logprobs", "top_logprobs requires logprobs to be true")
		}
		if *r.TopLogprobs < 0 || *r.TopLogprobs > lim.maxLogprobs() {
			return p, Invalid("top_logprobs", "top_logprobs must be between 0 and %d, got %d", lim.maxLogprobs(), *r.TopLogprobs)
		}
	}
	if r.Logprobs {
		p.Logprobs = 0
		if r.TopLogprobs != nil {
			p.Logprobs = *r.TopLogprobs
		}
	}
	if r.Echo {
		return p, Invalid("echo", "echo is not supported")
	}
	return p, nil
}

// NormalizeMessages validates chat messages and flattens list-of-parts
// content into a string, as vLLM does for text-only models.
func NormalizeMessages(param string, msgs []map[string]any) ([]map[string]any, error) {
	out := make([]map[string]any, len(msgs))
	for i, m := range msgs {
		role, ok := m["role"].(string)
		if !ok || role == "" {
			return nil, Invalid(param, "%s[%d].role must be a non-empty string", param, i)
		}
		c := make(map[string]any, len(m))
		for k, v := range m {
			c[k] = v
		}
		switch v := m["content"].(type) {
		case nil, string:
		case []any:
			text := ""
			for j, part := range v {
				pm, ok := part.(map[string]any)
				if !ok {
					return nil, Invalid(param, "%s[%d].content[%d] must be an object", param, i, j)
				}
				typ, _ := pm["type"].(string)
				if typ != "text" {
					return nil, Invalid(param, "%s[%d].content[%d]: content type %q is not supported", param, i, j, typ)
				}
				s, ok := pm["text"].(string)
				if !ok {
					return nil, Invalid(param, "%s[%d].content[%d].text must be a string", param, i, j)
				}
				if text != "" {
					text += "\n"
				}
				text += s
			}
			c["content"] = text
		default:
			return nil, Invalid(param, "%s[%d].content must be a string or a list of parts", param, i)
		}
		out[i] = c
	}
	return out, nil
}
