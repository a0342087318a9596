// Package llama implements LlamaForCausalLM and Qwen2ForCausalLM (Llama
// with QKV bias) over an ml.Backend: GQA, explicit head_dim, llama3 RoPE
// scaling, tied embeddings, and a batched forward step over a paged KV
// cache in which prefill chunks and decode tokens share one step.
package llama

import (
	"errors"
	"fmt"
	"math"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/weights"
)

func init() {
	model.Register("LlamaForCausalLM", New)
	model.Register("Qwen2ForCausalLM", New)
}

type layer struct {
	inNorm, postNorm ml.Tensor
	q, k, v, o       ml.Tensor
	qb, kb, vb, ob   ml.Tensor // nil when the architecture has no bias
	gateUp, down     ml.Tensor // gate_proj and up_proj fused: [2I, H]
	gub, db          ml.Tensor // mlp_bias
}

// Model is a loaded Llama/Qwen2 model.
type Model struct {
	cfg *model.Config
	be  ml.Backend

	H, I, V, nh, nkv, hd int
	eps                  float32
	scale                float32

	embed, lmHead, finalNorm ml.Tensor
	invFreq                  ml.Tensor
	layers                   []layer
	tensors                  []ml.Tensor // everything to Free
	weightBytes              int64

	kvDType   ml.DType
	kv        ml.KVCache
	numBlocks int
	blockSize int

	s scratch
}

var _ model.DeviceArgmaxer = (*Model)(nil)

// New builds the model from w (registered for both architectures).
func New(cfg *model.Config, w *model.Weights) (_ model.Model, err error) {
	m := &Model{
		cfg: cfg, be: w.Backend,
		H: cfg.HiddenSize, I: cfg.IntermediateSize, V: cfg.VocabSize,
		nh: cfg.NumAttentionHeads, nkv: cfg.NumKeyValueHeads, hd: cfg.HeadDim,
		eps:     float32(cfg.RMSNormEps),
		scale:   float32(1 / math.Sqrt(float64(cfg.HeadDim))),
		kvDType: w.KVDType,
	}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	qkvBias := cfg.Arch() == "Qwen2ForCausalLM" || cfg.AttentionBias
	oBias := cfg.Arch() == "LlamaForCausalLM" && cfg.AttentionBias

	load := func(name string, store ml.DType, rows, cols int, shape ...int) ml.Tensor {
		if err != nil {
			return nil
		}
		var t ml.Tensor
		t, err = w.Load(name, store, rows, cols, shape...)
		if t != nil {
			m.tensors = append(m.tensors, t)
		}
		return t
	}
	vec := func(name string, n int) ml.Tensor { return load(name, ml.F32, 1, n, n) }

	H, I, qd, kvd := m.H, m.I, m.nh*m.hd, m.nkv*m.hd
	// The embedding doubles as lm_head when tied, so it is stored like a
	// matmul weight then; untied, only T rows are read per step and it
	// keeps the --dtype.
	embedStore := w.Compute
	if cfg.TieWordEmbeddings {
		embedStore = w.DType
	}
	m.embed = load("model.embed_tokens.weight", embedStore, m.V, H)
	m.layers = make([]layer, cfg.NumHiddenLayers)
	for i := range m.layers {
		p := fmt.Sprintf("model.layers.%d.", i)
		l := &m.layers[i]
		l.inNorm = vec(p+"input_layernorm.weight", H)
		l.postNorm = vec(p+"post_attention_layernorm.weight", H)
		l.q = load(p+"self_attn.q_proj.weight", w.DType, qd, H)
		l.k = load(p+"self_attn.k_proj.weight", w.DType, kvd, H)
		l.v = load(p+"self_attn.v_proj.weight", w.DType, kvd, H)
		l.o = load(p+"self_attn.o_proj.weight", w.DType, H, qd)
		if qkvBias {
			l.qb = vec(p+"self_attn.q_proj.bias", qd)
			l.kb = vec(p+"self_attn.k_proj.bias", kvd)
			l.vb = vec(p+"self_attn.v_proj.bias", kvd)
		}
		if oBias {
			l.ob = vec(p+"self_attn.o_proj.bias", H)
		}
		if err == nil {
			l.gateUp, err = m.fused(w, p+"mlp.gate_proj.weight", p+"mlp.up_proj.weight", []int{I, H}, w.DType, 2*I, H)
		}
		l.down = load(p+"mlp.down_proj.weight", w.DType, H, I)
		if cfg.MLPBias {
			if err == nil {
				l.gub, err = m.fused(w, p+"mlp.gate_proj.bias", p+"mlp.up_proj.bias", []int{I}, ml.F32, 1, 2*I)
			}
			l.db = vec(p+"mlp.down_proj.bias", H)
		}
		if err != nil {
			return nil, err
		}
	}
	m.finalNorm = vec("model.norm.weight", H)
	if cfg.TieWordEmbeddings {
		m.lmHead = m.embed
	} else {
		m.lmHead = load("lm_head.weight", w.DType, m.V, H)
	}
	if err != nil {
		return nil, err
	}
	inv := roundInvFreq(cfg.InvFreq(), w.Compute)
	if m.invFreq, err = m.be.NewTensor(ml.F32, 1, len(inv)); err != nil {
		return nil, err
	}
	m.tensors = append(m.tensors, m.invFreq)
	if err = m.be.UploadF32(m.invFreq, inv); err != nil {
		return nil, err
	}
	m.weightBytes = w.Bytes
	w.Logger.Info("model loaded", "arch", cfg.Arch(), "layers", len(m.layers), "hidden", H,
		"heads", m.nh, "kv_heads", m.nkv, "head_dim", m.hd, "weight_bytes", m.weightBytes)
	return m, nil
}

// roundInvFreq rounds the RoPE frequencies to a 16-bit model dtype, as
// transformers does: its inv_freq buffer is cast with the model, so a bf16
// model rotates by bf16 frequencies (the golden logits depend on it).
func roundInvFreq(inv []float32, dt ml.DType) []float32 {
	for i, f := range inv {
		switch dt {
		case ml.BF16:
			inv[i] = weights.BF16ToF32(weights.F32ToBF16(f))
		case ml.F16:
			inv[i] = weights.F16ToF32(weights.F32ToF16(f))
		}
	}
	return inv
}

// fused loads two same-shaped tensors as one [rows, cols] tensor, a's rows
// first (gate and up projections share one matmul).
func (m *Model) fused(w *model.Weights, a, b string, shape []int, store ml.DType, rows, cols int) (ml.Tensor, error) {
	ta, err := w.Get(a, shape...)
	if err != nil {
		return nil, err
	}
	tb, err := w.Get(b, shape...)
	if err != nil {
		return nil, err
	}
	if ta.DType != tb.DType {
		return nil, fmt.Errorf("%w: %q is %s but %q is %s", model.ErrShape, a, ta.DType, b, tb.DType)
	}
	data := make([]byte, 0, len(ta.Data)+len(tb.Data))
	data = append(append(data, ta.Data...), tb.Data...)
	t, err := w.Upload(a+"+"+b, data, ta.DType, store, rows, cols)
	if err != nil {
		return nil, err
	}
	m.tensors = append(m.tensors, t)
	return t, nil
}

func (m *Model) Config() *model.Config { return m.cfg }

// WeightBytes is the memory of all weights (the tied embedding once).
func (m *Model) WeightBytes() int64 { return m.weightBytes }

// KVBytesPerToken is keys and values of all layers for one token slot.
func (m *Model) KVBytesPerToken() int64 {
	return 2 * int64(len(m.layers)) * int64(m.nkv*m.hd) * int64(m.kvDType.Size())
}

// KVDType is the KV cache's dtype.
func (m *Model) KVDType() ml.DType { return m.kvDType }

// Backend is the backend the model runs on.
func (m *Model) Backend() ml.Backend { return m.be }

func (m *Model) AllocateKV(numBlocks, blockSize int) error {
	if m.kv != nil {
		return fmt.Errorf("%w: KV cache already allocated", model.ErrBadConfig)
	}
	kv, err := m.be.NewKVCache(len(m.layers), numBlocks, blockSize, m.nkv, m.hd, m.kvDType)
	if err != nil {
		return fmt.Errorf("model: allocating KV cache: %w", err)
	}
	m.kv, m.numBlocks, m.blockSize = kv, numBlocks, blockSize
	return nil
}

func (m *Model) Close() error {
	if m.be == nil {
		return nil
	}
	for _, t := range m.tensors {
		m.be.Free(t)
	}
	m.tensors = nil
	m.s.free(m.be)
	if m.kv != nil {
		m.be.FreeKVCache(m.kv)
		m.kv = nil
	}
	m.be = nil
	return nil
}

// errClosed is returned by Forward after Close.
var errClosed = errors.New("llama: model closed")
