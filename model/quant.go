package model

import (
	"fmt"
	"strings"
)

// QuantizationConfig is config.json's quantization_config, the fields of
// the two FP8 layouts vLLM reads: quant_method "fp8" (a scale per tensor,
// weight_scale; or per block, weight_scale_inv with weight_block_size) and
// "compressed-tensors" float8 weights (weight_scale per tensor or per output
// channel).
type QuantizationConfig struct {
	QuantMethod     string                `json:"quant_method"`
	WeightBlockSize []int                 `json:"weight_block_size,omitempty"`
	Format          string                `json:"format,omitempty"`
	ConfigGroups    map[string]QuantGroup `json:"config_groups,omitempty"`
	Ignore          []string              `json:"ignore,omitempty"`
}

// QuantGroup is one compressed-tensors config group.
type QuantGroup struct {
	Targets []string     `json:"targets"`
	Weights *QuantScheme `json:"weights"`
}

// QuantScheme is a compressed-tensors quantization scheme.
type QuantScheme struct {
	NumBits  int    `json:"num_bits"`
	Type     string `json:"type"`
	Strategy string `json:"strategy"`
}

// Quantized reports how the checkpoint's weights are quantized: "" for
// none, "fp8" for FP8 E4M3 weights with a scale per tensor or per output
// channel (stored in the checkpoint as <name>_scale next to each
// quantized <name>), "fp8-block" for FP8 with a scale per block of
// weight_block_size (<name>_scale_inv, as Qwen's and DeepSeek's FP8
// checkpoints store it). Other methods are an error that says what is
// supported.
func (c *Config) Quantized() (string, error) {
	q := c.QuantizationConfig
	if q == nil {
		return "", nil
	}
	switch strings.ToLower(q.QuantMethod) {
	case "fp8":
		if len(q.WeightBlockSize) > 0 {
			if len(q.WeightBlockSize) != 2 || q.WeightBlockSize[0] <= 0 || q.WeightBlockSize[1] <= 0 {
				return "", fmt.Errorf("%w: quantization_config: weight_block_size %v (want two positive sizes)", ErrBadConfig, q.WeightBlockSize)
			}
			return "fp8-block", nil
		}
		return "fp8", nil
	case "compressed-tensors":
		for name, g := range q.ConfigGroups {
			w := g.Weights
			if w == nil {
				continue
			}
			if w.NumBits != 8 || w.Type != "float" || (w.Strategy != "tensor" && w.Strategy != "channel") {
				return "", fmt.Errorf("%w: quantization_config: compressed-tensors group %q quantizes weights to %d-bit %s per %s; supported: 8-bit float per tensor or per channel (FP8)",
					ErrBadConfig, name, w.NumBits, w.Type, w.Strategy)
			}
		}
		return "fp8", nil
	}
	return "", fmt.Errorf("%w: quantization_config: quant_method %q is not supported (supported: fp8, compressed-tensors FP8)", ErrBadConfig, q.QuantMethod)
}
