package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/llmserve/llmserve/ml"
)

// ConfigFile is the Hugging Face config file name.
const ConfigFile = "config.json"

// ReadConfig reads dir/config.json, fills defaults (head_dim =
// hidden/heads, num_key_value_heads = heads, transformers v5
// rope_parameters into rope_theta/rope_scaling) and validates it.
func ReadConfig(dir string) (*Config, error) {
	data, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	return ParseConfig(data)
}

// ParseConfig parses config.json contents, fills defaults and validates.
func ParseConfig(data []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%w: config.json: %w", ErrBadConfig, err)
	}
	if err := c.Normalize(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Normalize fills defaults and validates c; ReadConfig calls it.
func (c *Config) Normalize() error {
	if p := c.RopeParameters; p != nil {
		if c.RopeTheta == 0 {
			c.RopeTheta = p.RopeTheta
		}
		if c.RopeScaling == nil && p.ropeType() != "" && p.ropeType() != "default" {
			rs := p.RopeScaling
			c.RopeScaling = &rs
		}
	}
	if c.RopeTheta == 0 {
		c.RopeTheta = 10000
	}
	if c.RMSNormEps == 0 {
		c.RMSNormEps = 1e-6
	}
	if c.NumKeyValueHeads == 0 {
		c.NumKeyValueHeads = c.NumAttentionHeads
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(c.Architectures) == 0 {
		bad("no architectures")
	}
	for name, v := range map[string]int{
		"vocab_size": c.VocabSize, "hidden_size": c.HiddenSize, "intermediate_size": c.IntermediateSize,
		"num_hidden_layers": c.NumHiddenLayers, "num_attention_heads": c.NumAttentionHeads,
		"num_key_value_heads": c.NumKeyValueHeads,
	} {
		if v <= 0 {
			bad("%s = %d, want > 0", name, v)
		}
	}
	if c.HeadDim == 0 && c.NumAttentionHeads > 0 {
		if c.HiddenSize%c.NumAttentionHeads != 0 {
			bad("hidden_size %d is not a multiple of num_attention_heads %d", c.HiddenSize, c.NumAttentionHeads)
		}
		c.HeadDim = c.HiddenSize / c.NumAttentionHeads
	}
	if c.HeadDim <= 0 || c.HeadDim%2 != 0 {
		bad("head_dim = %d, want a positive even number", c.HeadDim)
	}
	if c.NumKeyValueHeads > 0 && c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		bad("num_attention_heads %d is not a multiple of num_key_value_heads %d", c.NumAttentionHeads, c.NumKeyValueHeads)
	}
	if e := c.Experts(); e > 0 {
		if c.NumExpertsPerTok <= 0 || c.NumExpertsPerTok > e {
			bad("num_experts_per_tok = %d, want 1..%d", c.NumExpertsPerTok, e)
		}
		if c.MoEIntermediateSize <= 0 {
			bad("moe_intermediate_size = %d, want > 0", c.MoEIntermediateSize)
		}
	}
	if c.SlidingWindow < 0 {
		bad("sliding_window = %d, want >= 0", c.SlidingWindow)
	}
	if c.HiddenAct != "" && c.HiddenAct != "silu" {
		bad("hidden_act %q (supported: silu)", c.HiddenAct)
	}
	if rs := c.RopeScaling; rs != nil {
		switch rs.ropeType() {
		case "", "default":
		case "llama3":
			if rs.Factor <= 0 || rs.OriginalMaxPositionEmbeddings <= 0 || rs.HighFreqFactor <= rs.LowFreqFactor {
				bad("llama3 rope_scaling needs factor > 0, original_max_position_embeddings > 0, high_freq_factor > low_freq_factor")
			}
		default:
			bad("rope_scaling type %q (supported: default, llama3)", rs.ropeType())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrBadConfig, errors.Join(errs...))
	}
	return nil
}

func (r *RopeScaling) ropeType() string {
	if r.RopeType != "" {
		return r.RopeType
	}
	return r.Type
}

// RopeType is the rope_scaling type ("default" when there is none).
func (c *Config) RopeType() string {
	if c.RopeScaling == nil || c.RopeScaling.ropeType() == "" {
		return "default"
	}
	return c.RopeScaling.ropeType()
}

// InvFreq returns the RoPE inverse frequencies (head_dim/2 of them), with
// llama3 scaling applied as in transformers' _compute_llama3_parameters.
func (c *Config) InvFreq() []float32 {
	half := c.HeadDim / 2
	out := make([]float32, half)
	for i := range out {
		inv := 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(c.HeadDim))
		if c.RopeType() == "llama3" {
			rs := c.RopeScaling
			orig := float64(rs.OriginalMaxPositionEmbeddings)
			lowWl := orig / rs.LowFreqFactor
			highWl := orig / rs.HighFreqFactor
			wl := 2 * math.Pi / inv
			switch {
			case wl < highWl: // high frequency: unchanged
			case wl > lowWl:
				inv /= rs.Factor
			default:
				smooth := (orig/wl - rs.LowFreqFactor) / (rs.HighFreqFactor - rs.LowFreqFactor)
				inv = (1-smooth)*inv/rs.Factor + smooth*inv
			}
		}
		out[i] = float32(inv)
	}
	return out
}

// CheckpointDType is the dtype config.json declares (torch_dtype, or
// transformers v5's dtype), "float32" when it declares none.
func (c *Config) CheckpointDType() string {
	switch {
	case c.DType != "":
		return c.DType
	case c.TorchDType != "":
		return c.TorchDType
	}
	return "float32"
}

// EOSTokenIDs returns eos_token_id as a list (it may be an int or a list).
func (c *Config) EOSTokenIDs() []int {
	return tokenIDs(c.EOSTokenID)
}

// BOSTokenIDs returns bos_token_id as a list (empty when null).
func (c *Config) BOSTokenIDs() []int {
	return tokenIDs(c.BOSTokenID)
}

func tokenIDs(v any) []int {
	switch x := v.(type) {
	case float64:
		return []int{int(x)}
	case int:
		return []int{x}
	case []int:
		return append([]int(nil), x...)
	case []any:
		var out []int
		for _, e := range x {
			out = append(out, tokenIDs(e)...)
		}
		return out
	}
	return nil
}

// Arch is the first architecture name.
func (c *Config) Arch() string {
	if len(c.Architectures) == 0 {
		return ""
	}
	return c.Architectures[0]
}

// Clone returns a deep copy.
func (c *Config) Clone() *Config {
	out := *c
	out.Architectures = append([]string(nil), c.Architectures...)
	out.LayerTypes = append([]string(nil), c.LayerTypes...)
	out.MLPOnlyLayers = append([]int(nil), c.MLPOnlyLayers...)
	if c.RopeScaling != nil {
		rs := *c.RopeScaling
		out.RopeScaling = &rs
	}
	if c.RopeParameters != nil {
		rp := *c.RopeParameters
		out.RopeParameters = &rp
	}
	if ids, ok := c.EOSTokenID.([]any); ok {
		out.EOSTokenID = append([]any(nil), ids...)
	}
	return &out
}

// ParseDType maps a --dtype or torch_dtype name to a DType: float32 (float),
// bfloat16, float16 (half). auto and "" are not handled here.
func ParseDType(s string) (ml.DType, error) {
	switch strings.ToLower(strings.TrimPrefix(s, "torch.")) {
	case "float32", "float", "fp32":
		return ml.F32, nil
	case "bfloat16", "bf16":
		return ml.BF16, nil
	case "float16", "half", "fp16":
		return ml.F16, nil
	}
	return 0, fmt.Errorf("%w: dtype %q (supported: auto, float32, bfloat16, float16)", ErrBadOption, s)
}
