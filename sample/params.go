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

// Defaults returns OpenAI's defaults.
func Defaults() Params {
	return Params{N: 1, MaxTokens: 16, Temperature: 1, TopP: 1, RepetitionPenalty: 1, Logprobs: -1, SkipSpecialTokens: true}
}
