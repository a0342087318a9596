// Package decoder is the runtime every decoder-only architecture shares:
// it loads a pre-norm transformer's weights as its Spec states them and
// runs the model-runner step over a paged KV cache (packed step inputs,
// scratch buffers sized by the largest step, padding of steps for
// graph-replaying backends, logit rows, the retry of a refused step,
// profiling and warm-up). An architecture is a Spec built from its config
// (see model/llama and model/qwen3): which projections have biases,
// whether q and k are normed per head, the sliding window of each layer,
// and whether an MLP is dense or a mixture of experts.
//
// Every layer runs as a composition of ml.Backend base ops, unless the
// backend is an ml.LayerFuser that takes the model's layers (ml/cuda, for
// dense layers without per-head norms or windows; see fused.go): it then
// runs them, its fusions chosen step by step.
package decoder

import (
	"fmt"

	"github.com/llmserve/llmserve/model"
)

// Spec states an architecture's layers. RoPE (theta, llama3 scaling),
// head_dim, tied embeddings and the norm epsilon come from the config.
type Spec struct {
	// QKVBias: q_proj, k_proj and v_proj have biases (Qwen2; Llama's
	// attention_bias).
	QKVBias bool
	// OBias: o_proj has a bias (Llama's attention_bias).
	OBias bool
	// MLPBias: the dense MLP's projections have biases (mlp_bias).
	MLPBias bool
	// QKNorm: q and k are RMS-normed head by head before RoPE, with the
	// [head_dim] weights self_attn.q_norm and self_attn.k_norm (Qwen3).
	QKNorm bool
	// Window is each layer's sliding attention window (nil or 0: full
	// attention).
	Window func(layer int) int
	// MoE describes the mixture-of-experts layers (nil: every MLP is dense).
	MoE *MoE
}

// MoE is a sparse MLP as Qwen3-MoE has it: a router mlp.gate [E, H], a
// softmax over the E experts in float32 or wider, the top TopK of them
// (their weights renormalized to sum 1 when NormTopKProb), and the
// weighted sum of those experts' SiLU-gated MLPs
// mlp.experts.N.{gate,up,down}_proj of intermediate size Intermediate.
type MoE struct {
	Experts, TopK, Intermediate int
	NormTopKProb                bool
	// Sparse reports whether layer i is sparse (others are dense MLPs of
	// the config's intermediate_size).
	Sparse func(layer int) bool
}

// MoEFromConfig is the MoE of a Qwen3-MoE style config (nil without experts).
func MoEFromConfig(c *model.Config) *MoE {
	if c.Experts() == 0 {
		return nil
	}
	return &MoE{Experts: c.Experts(), TopK: c.NumExpertsPerTok, Intermediate: c.MoEIntermediateSize,
		NormTopKProb: c.NormTopKProb, Sparse: c.SparseLayer}
}

func (s *Spec) window(i int) int {
	if s.Window == nil {
		return 0
	}
	return s.Window(i)
}

func (s *Spec) sparse(i int) bool { return s.MoE != nil && s.MoE.Sparse(i) }

func (s *Spec) check(c *model.Config) error {
	if m := s.MoE; m != nil {
		if m.Experts <= 0 || m.TopK <= 0 || m.TopK > m.Experts || m.Intermediate <= 0 || m.Sparse == nil {
			return fmt.Errorf("%w: mixture of %d experts, top %d, intermediate %d", model.ErrBadConfig,
				m.Experts, m.TopK, m.Intermediate)
		}
	}
	return nil
}
