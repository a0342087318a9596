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
	q05 := qwen(896, 4864, 24, 14, 2, 151936, 32768, true)
	q15 := qwen(1536, 8960, 28, 12, 2, 151936, 131072, true)
	q7 := qwen(3584, 18944, 28, 28, 4, 152064, 131072, false)
	l1 := llama(2048, 8192, 16, 32, 8, 64, 32, true)
	l3 := llama(3072, 8192, 28, 24, 8, 128, 32, true)
	l8 := llama(4096, 14336, 32, 32, 8, 128, 8, false)
	return map[string]*Config{
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
