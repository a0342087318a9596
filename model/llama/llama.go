// Package llama states the Llama-family architectures for the decoder
// runtime: LlamaForCausalLM, Qwen2ForCausalLM (Llama with QKV bias) and
// MistralForCausalLM (Llama with a sliding window when the config sets
// sliding_window). GQA, explicit head_dim, llama3 RoPE scaling and tied
// embeddings come from the config (see model/decoder).
package llama

import (
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/decoder"
)

func init() {
	model.Register("LlamaForCausalLM", New)
	model.Register("Qwen2ForCausalLM", New)
	model.Register("MistralForCausalLM", New)
}

// Spec is the layer spec of a Llama, Qwen2 or Mistral config.
func Spec(cfg *model.Config) decoder.Spec {
	s := decoder.Spec{
		// Qwen2 has q, k and v biases; Llama has biases on all four
		// projections with attention_bias; Mistral has none.
		QKVBias: cfg.Arch() == "Qwen2ForCausalLM" || (cfg.Arch() == "LlamaForCausalLM" && cfg.AttentionBias),
		OBias:   cfg.Arch() == "LlamaForCausalLM" && cfg.AttentionBias,
		MLPBias: cfg.MLPBias,
	}
	// Llama has no sliding window; Mistral and Qwen2 follow the config.
	if cfg.Arch() != "LlamaForCausalLM" {
		s.Window = cfg.LayerWindow
	}
	return s
}

// Model is a loaded Llama, Qwen2 or Mistral model: the decoder runtime
// (its cfg is the config, kept here for the package's tests).
type Model struct {
	*decoder.Model
	cfg *model.Config
}

// New builds the model from w (registered for all three architectures).
func New(cfg *model.Config, w *model.Weights) (model.Model, error) {
	if w.TP != nil {
		return decoder.Load(cfg, w, Spec(cfg))
	}
	m, err := decoder.New(cfg, w, Spec(cfg))
	if err != nil {
		return nil, err
	}
	return &Model{Model: m, cfg: cfg}, nil
}
