package model

import (
	"log/slog"

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
	Quantization string // --quantization: "" or int8
	LoadFormat   string // --load-format: auto|safetensors|dummy
	Seed         int64  // dummy weights' seed
	// KVCacheDType is --kv-cache-dtype: auto|float32|bfloat16|float16
	// (auto = the model's dtype, as in vLLM; the checkpoint's for int8).
	KVCacheDType string
	// Logger receives load progress; nil discards it.
	Logger *slog.Logger
}
