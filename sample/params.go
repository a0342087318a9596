// Package sample holds per-request sampling parameters, logits processors and
// the seeded per-request RNG.
package sample

// Params are a request's sampling and stopping parameters (OpenAI + vLLM names).
type Params struct {
	N                 int     // completions per prompt (>=1); they share the prompt's KV blocks
	MaxTokens         int     // >=1
	MinTokens         int     // EOS and stop tokens are suppressed before this many
	Temperature       float64 // 0 = greedy
	TopP              float64 // (0,1]; 1 = off
	TopK              int     // 0 or -1 = off
	MinP              float64 // 0 = off
	Seed              *int64  // per-request seed: same output whatever else is in the batch
	PresencePenalty   float64
	FrequencyPenalty  float64
	RepetitionPenalty float64 // 1 = off
	LogitBias         map[int]float64
	Stop              []string // stop strings, excluded from the output
	StopTokenIDs      []int
	IgnoreEOS         bool
	Logprobs          int // -1 = none; else number of top logprobs returned with each sampled token (0 = only the sampled token's)
	SkipSpecialTokens bool
	// Processors, when set, builds the logits processors of one sequence
	// (a request with n > 1 calls it once per sequence: they keep state).
	Processors func() []LogitsProcessor
}

// Bounds of the values the sampler honours. The API edge (package openai)
// rejects anything outside them with a 400 naming the client's field, and
// Validate repeats the check for any other caller of the engine, so the two
// cannot drift apart.
//
// The sampler works on float32 logits: temperature divides them and the
// repetition penalty multiplies or divides them, so both are bounded well
// inside float32's range. vLLM accepts any finite temperature >= 0 and any
// finite repetition_penalty > 0; at a temperature of 100 real logits (|x| of
// a few tens) are already near uniform, and a repetition penalty of 100 (or
// 1/100) already decides the token, so the bounds cost clients nothing.
const (
	MaxTemperature       = 100.0
	MinRepetitionPenalty = 0.01
	MaxRepetitionPenalty = 100.0
	MaxAbsPenalty        = 2.0   // presence_penalty, frequency_penalty: OpenAI's [-2, 2]
	MaxAbsLogitBias      = 100.0 // logit_bias values: OpenAI's [-100, 100]
)

// Defaults returns OpenAI's defaults.
func Defaults() Params {
	return Params{N: 1, MaxTokens: 16, Temperature: 1, TopP: 1, RepetitionPenalty: 1, Logprobs: -1, SkipSpecialTokens: true}
}
