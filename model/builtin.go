package model

import (
	"sort"
	"strings"
)

// builtinConfigs are copies of the config.json of models people benchmark
// with, so `--model Qwen/Qwen2.5-1.5B --load-format dummy` works offline.
// Instruct variants share the base shapes and differ in EOS and context.
func builtinConfigs() map[string]*Config {
	qwen := func(hidden, inter, layers, heads, kv, vocab, maxPos int, tie bool) *Config {
		return &Config{
			Architectures: []string{"Qwen2ForCausalLM"}, ModelType: "qwen2",
			VocabSize: vocab, HiddenSize: hidden, IntermediateSize: inter,
			NumHiddenLayers: layers, NumAttentionHeads: heads, NumKeyValueHeads: kv,
			RMSNormEps: 1e-6, RopeTheta: 1e6, MaxPositionEmbeddings: maxPos,
			TieWordEmbeddings: tie, TorchDType: "bfloat16", HiddenAct: "silu",
			BOSTokenID: float64(151643), EOSTokenID: float64(151643),
		}
	}
	qwenInstruct := func(c *Config) *Config {
		c = c.Clone()
		c.EOSTokenID = float64(151645)
		c.MaxPositionEmbeddings = 32768
		return c
	}
	llama := func(hidden, inter, layers, heads, kv, headDim int, factor float64, tie bool) *Config {
		return &Config{
			Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama",
			VocabSize: 128256, HiddenSize: hidden, IntermediateSize: inter,
			NumHiddenLayers: layers, NumAttentionHeads: heads, NumKeyValueHeads: kv, HeadDim: headDim,
			RMSNormEps: 1e-5, RopeTheta: 500000, MaxPositionEmbeddings: 131072,
			RopeScaling: &RopeScaling{RopeType: "llama3", Factor: factor, LowFreqFactor: 1,
				HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192},
			TieWordEmbeddings: tie, TorchDType: "bfloat16", HiddenAct: "silu",
			BOSTokenID: float64(128000), EOSTokenID: float64(128001),
		}
	}
	llamaInstruct := func(c *Config) *Config {
		c = c.Clone()
		c.EOSTokenID = []any{float64(128001), float64(128008), float64(128009)}
		return c
	}
	// Qwen3: head_dim 128 whatever the width, per-head q/k norms; the
	// hybrid-thinking releases end turns with <|im_end|> (151645), the
	// -Base ones with <|endoftext|> (151643) and a shorter context.
	qwen3 := func(hidden, inter, layers, heads, kv int, tie bool) *Config {
		return &Config{
			Architectures: []string{"Qwen3ForCausalLM"}, ModelType: "qwen3",
			VocabSize: 151936, HiddenSize: hidden, IntermediateSize: inter,
			NumHiddenLayers: layers, NumAttentionHeads: heads, NumKeyValueHeads: kv, HeadDim: 128,
			RMSNormEps: 1e-6, RopeTheta: 1e6, MaxPositionEmbeddings: 40960, MaxWindowLayers: layers,
			TieWordEmbeddings: tie, TorchDType: "bfloat16", HiddenAct: "silu",
			BOSTokenID: float64(151643), EOSTokenID: float64(151645),
		}
	}
	qwen3Base := func(c *Config) *Config {
		c = c.Clone()
		c.EOSTokenID = float64(151643)
		c.MaxPositionEmbeddings = 32768
		return c
	}
	// The 2507 instruct/thinking updates: 256K context, a larger rope theta.
	qwen3_2507 := func(c *Config, theta float64) *Config {
		c = c.Clone()
		c.MaxPositionEmbeddings = 262144
		c.RopeTheta = theta
		return c
	}
	q3moe := qwen3(2048, 6144, 48, 32, 4, false)
	q3moe.Architectures, q3moe.ModelType = []string{"Qwen3MoeForCausalLM"}, "qwen3_moe"
	q3moe.NumExperts, q3moe.NumExpertsPerTok, q3moe.MoEIntermediateSize = 128, 8, 768
	q3moe.NormTopKProb, q3moe.DecoderSparseStep = true, 1
	// Mistral 7B: v0.1 attends within a 4096-token sliding window; v0.2
	// and v0.3 attend fully (sliding_window null), v0.3 with a 32768 vocab.
	mistral := func(vocab int, theta float64, window int) *Config {
		return &Config{
			Architectures: []string{"MistralForCausalLM"}, ModelType: "mistral",
			VocabSize: vocab, HiddenSize: 4096, IntermediateSize: 14336,
			NumHiddenLayers: 32, NumAttentionHeads: 32, NumKeyValueHeads: 8, HeadDim: 128,
			RMSNormEps: 1e-5, RopeTheta: theta, MaxPositionEmbeddings: 32768, SlidingWindow: window,
			TorchDType: "bfloat16", HiddenAct: "silu",
			BOSTokenID: float64(1), EOSTokenID: float64(2),
		}
	}
	q3_06 := qwen3(1024, 3072, 28, 16, 8, true)
	q3_17 := qwen3(2048, 6144, 28, 16, 8, true)
	q3_4 := qwen3(2560, 9728, 36, 32, 8, true)
	q3_8 := qwen3(4096, 12288, 36, 32, 8, false)
	q3_14 := qwen3(5120, 17408, 40, 40, 8, false)
	q3_32 := qwen3(5120, 25600, 64, 64, 8, false)
	m01, m02, m03 := mistral(32000, 10000, 4096), mistral(32000, 1e6, 0), mistral(32768, 1e6, 0)
	extra := map[string]*Config{
		"Qwen/Qwen3-0.6B":                    q3_06,
		"Qwen/Qwen3-0.6B-Base":               qwen3Base(q3_06),
		"Qwen/Qwen3-1.7B":                    q3_17,
		"Qwen/Qwen3-1.7B-Base":               qwen3Base(q3_17),
		"Qwen/Qwen3-4B":                      q3_4,
		"Qwen/Qwen3-4B-Base":                 qwen3Base(q3_4),
		"Qwen/Qwen3-4B-Instruct-2507":        qwen3_2507(q3_4, 5e6),
		"Qwen/Qwen3-4B-Thinking-2507":        qwen3_2507(q3_4, 5e6),
		"Qwen/Qwen3-8B":                      q3_8,
		"Qwen/Qwen3-8B-Base":                 qwen3Base(q3_8),
		"Qwen/Qwen3-14B":                     q3_14,
		"Qwen/Qwen3-14B-Base":                qwen3Base(q3_14),
		"Qwen/Qwen3-32B":                     q3_32,
		"Qwen/Qwen3-30B-A3B":                 q3moe,
		"Qwen/Qwen3-30B-A3B-Base":            qwen3Base(q3moe),
		"Qwen/Qwen3-30B-A3B-Instruct-2507":   qwen3_2507(q3moe, 1e7),
		"Qwen/Qwen3-30B-A3B-Thinking-2507":   qwen3_2507(q3moe, 1e7),
		"mistralai/Mistral-7B-v0.1":          m01,
		"mistralai/Mistral-7B-Instruct-v0.1": m01.Clone(),
		"mistralai/Mistral-7B-Instruct-v0.2": m02,
		"mistralai/Mistral-7B-v0.3":          m03,
		"mistralai/Mistral-7B-Instruct-v0.3": m03.Clone(),
	}
	q05 := qwen(896, 4864, 24, 14, 2, 151936, 32768, true)
	q15 := qwen(1536, 8960, 28, 12, 2, 151936, 131072, true)
	q7 := qwen(3584, 18944, 28, 28, 4, 152064, 131072, false)
	l1 := llama(2048, 8192, 16, 32, 8, 64, 32, true)
	l3 := llama(3072, 8192, 28, 24, 8, 128, 32, true)
	l8 := llama(4096, 14336, 32, 32, 8, 128, 8, false)
	all := map[string]*Config{
		"Qwen/Qwen2.5-0.5B":                q05,
		"Qwen/Qwen2.5-0.5B-Instruct":       qwenInstruct(q05),
		"Qwen/Qwen2.5-1.5B":                q15,
		"Qwen/Qwen2.5-1.5B-Instruct":       qwenInstruct(q15),
		"Qwen/Qwen2.5-7B":                  q7,
		"Qwen/Qwen2.5-7B-Instruct":         qwenInstruct(q7),
		"meta-llama/Llama-3.2-1B":          l1,
		"meta-llama/Llama-3.2-1B-Instruct": llamaInstruct(l1),
		"meta-llama/Llama-3.2-3B":          l3,
		"meta-llama/Llama-3.2-3B-Instruct": llamaInstruct(l3),
		"meta-llama/Llama-3.1-8B":          l8,
		"meta-llama/Llama-3.1-8B-Instruct": llamaInstruct(l8),
	}
	for k, c := range extra {
		all[k] = c
	}
	return all
}

// BuiltinConfig returns a copy of the built-in config of a Hugging Face
// repo id (matched case-insensitively), defaults filled.
func BuiltinConfig(name string) (*Config, bool) {
	for k, c := range builtinConfigs() {
		if strings.EqualFold(k, name) {
			c = c.Clone()
			if err := c.Normalize(); err != nil {
				return nil, false // cannot happen for the literals above; tested
			}
			return c, true
		}
	}
	return nil, false
}

// BuiltinModels lists the repo ids BuiltinConfig knows, sorted.
func BuiltinModels() []string {
	var out []string
	for k := range builtinConfigs() {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
