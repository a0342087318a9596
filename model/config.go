package model

import (
	"log/slog"
	"strings"

	"github.com/llmserve/llmserve/ml"
)

// Config is the subset of a Hugging Face config.json the runtime uses.
type Config struct {
	Architectures     []string     `json:"architectures"`
	ModelType         string       `json:"model_type"`
	VocabSize         int          `json:"vocab_size"`
	HiddenSize        int          `json:"hidden_size"`
	IntermediateSize  int          `json:"intermediate_size"`
	NumHiddenLayers   int          `json:"num_hidden_layers"`
	NumAttentionHeads int          `json:"num_attention_heads"`
	NumKeyValueHeads  int          `json:"num_key_value_heads"`
	HeadDim           int          `json:"head_dim"`
	RMSNormEps        float64      `json:"rms_norm_eps"`
	RopeTheta         float64      `json:"rope_theta"`
	RopeScaling       *RopeScaling `json:"rope_scaling"`
	// RopeParameters is transformers v5's replacement of rope_theta and
	// rope_scaling; ReadConfig copies it into RopeTheta and RopeScaling.
	RopeParameters        *RopeParameters `json:"rope_parameters,omitempty"`
	HiddenAct             string          `json:"hidden_act,omitempty"`
	MLPBias               bool            `json:"mlp_bias,omitempty"`
	MaxPositionEmbeddings int             `json:"max_position_embeddings"`
	TieWordEmbeddings     bool            `json:"tie_word_embeddings"`
	AttentionBias         bool            `json:"attention_bias"`
	TorchDType            string          `json:"torch_dtype"`
	DType                 string          `json:"dtype"` // newer transformers write "dtype"
	BOSTokenID            any             `json:"bos_token_id"`
	EOSTokenID            any             `json:"eos_token_id"` // int or list

	// Sliding-window attention (Mistral, and Qwen when use_sliding_window):
	// see LayerWindow.
	SlidingWindow    int      `json:"sliding_window"` // null reads as 0: none
	UseSlidingWindow bool     `json:"use_sliding_window"`
	MaxWindowLayers  int      `json:"max_window_layers"`
	LayerTypes       []string `json:"layer_types,omitempty"` // full_attention | sliding_attention per layer

	// Mixture of experts (Qwen3-MoE): see Experts and SparseLayer.
	NumExperts          int   `json:"num_experts,omitempty"`
	NumLocalExperts     int   `json:"num_local_experts,omitempty"` // the same, as some transformers versions write it
	NumExpertsPerTok    int   `json:"num_experts_per_tok,omitempty"`
	MoEIntermediateSize int   `json:"moe_intermediate_size,omitempty"`
	NormTopKProb        bool  `json:"norm_topk_prob,omitempty"`
	DecoderSparseStep   int   `json:"decoder_sparse_step,omitempty"`
	MLPOnlyLayers       []int `json:"mlp_only_layers,omitempty"`

	// QuantizationConfig is how a pre-quantized checkpoint's weights are
	// stored (see Quantized).
	QuantizationConfig *QuantizationConfig `json:"quantization_config,omitempty"`
}

// Experts is the number of routed experts (num_experts, or
// num_local_experts), 0 for a dense model.
func (c *Config) Experts() int {
	if c.NumExperts > 0 {
		return c.NumExperts
	}
	return c.NumLocalExperts
}

// SparseLayer reports whether layer i's MLP is a mixture of experts, as
// transformers' Qwen3-MoE decides it: not in mlp_only_layers, and
// (i+1) a multiple of decoder_sparse_step.
func (c *Config) SparseLayer(i int) bool {
	if c.Experts() == 0 {
		return false
	}
	for _, l := range c.MLPOnlyLayers {
		if l == i {
			return false
		}
	}
	step := max(c.DecoderSparseStep, 1)
	return (i+1)%step == 0
}

// LayerWindow is layer i's sliding attention window (0: full attention),
// as transformers derives it: none without sliding_window; the Qwen
// family only with use_sliding_window, on the layers layer_types marks
// "sliding_attention" (by default those from max_window_layers on); other
// architectures (Mistral) on every layer, or as layer_types says.
func (c *Config) LayerWindow(i int) int {
	if c.SlidingWindow <= 0 {
		return 0
	}
	qwen := strings.HasPrefix(c.ModelType, "qwen")
	if qwen && !c.UseSlidingWindow {
		return 0
	}
	if i < len(c.LayerTypes) {
		if c.LayerTypes[i] == "sliding_attention" {
			return c.SlidingWindow
		}
		return 0
	}
	if qwen && i < c.MaxWindowLayers {
		return 0
	}
	return c.SlidingWindow
}

// RopeScaling is config.json's rope_scaling (type "llama3" supported).
type RopeScaling struct {
	RopeType                      string  `json:"rope_type"`
	Type                          string  `json:"type"`
	Factor                        float64 `json:"factor"`
	LowFreqFactor                 float64 `json:"low_freq_factor"`
	HighFreqFactor                float64 `json:"high_freq_factor"`
	OriginalMaxPositionEmbeddings int     `json:"original_max_position_embeddings"`
}

// RopeParameters is transformers v5's rope_parameters: rope_theta plus the
// rope_scaling fields.
type RopeParameters struct {
	RopeTheta float64 `json:"rope_theta"`
	RopeScaling
}

// LoadOptions select how a model is loaded (vLLM's flag names in comments).
type LoadOptions struct {
	Backend      ml.Backend
	DType        string // --dtype: auto|float32|bfloat16|float16 (auto = the checkpoint's)
	Quantization string // --quantization: "", int8 or fp8
	LoadFormat   string // --load-format: auto|safetensors|dummy
	Seed         int64  // dummy weights' seed
	// KVCacheDType is --kv-cache-dtype: auto|float32|bfloat16|float16
	// (auto = the model's dtype, as in vLLM; the checkpoint's for int8).
	KVCacheDType string
	// Logger receives load progress; nil discards it.
	Logger *slog.Logger
	// TensorParallel splits the model over the ranks of a group, one
	// backend each (Backend is then unused, or Backends[0]); nil: one
	// backend. The model owns neither the backends nor the collectives.
	TensorParallel *TensorParallel
}

// TensorParallel is a tensor-parallel group: rank r computes on
// Backends[r] and all-reduces through Comms[r].
type TensorParallel struct {
	Backends []ml.Backend
	Comms    []ml.Collective
}

// Size is the number of ranks.
func (tp *TensorParallel) Size() int { return len(tp.Backends) }

// TensorParalleler is implemented by models split over a tensor-parallel
// group; Load checks that an architecture's factory built one when asked.
type TensorParalleler interface {
	TensorParallelSize() int
}
