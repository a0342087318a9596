// Package qwen3 states Qwen3ForCausalLM and Qwen3MoeForCausalLM for the
// decoder runtime: no QKV bias, q and k RMS-normed head by head before
// RoPE, head_dim from the config; the MoE variant routes each token to its
// num_experts_per_tok experts (softmax router mlp.gate, renormalized with
// norm_topk_prob) on the layers decoder_sparse_step and mlp_only_layers
// make sparse, with experts stored per expert as on the Hub
// (mlp.experts.N.{gate,up,down}_proj).
package qwen3

import (
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/decoder"
)

func init() {
	model.Register("Qwen3ForCausalLM", New)
	model.Register("Qwen3MoeForCausalLM", New)
}

// Spec is the layer spec of a Qwen3 or Qwen3-MoE config.
func Spec(cfg *model.Config) decoder.Spec {
	return decoder.Spec{
		QKVBias: cfg.AttentionBias, // attention_bias puts biases on q, k, v and o
		OBias:   cfg.AttentionBias,
		QKNorm:  true,
		Window:  cfg.LayerWindow,
		MoE:     decoder.MoEFromConfig(cfg),
	}
}

// New builds the model from w.
func New(cfg *model.Config, w *model.Weights) (model.Model, error) {
	return decoder.Load(cfg, w, Spec(cfg))
}
