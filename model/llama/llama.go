// Package llama implements LlamaForCausalLM and Qwen2ForCausalLM (Llama
// with QKV bias) over an ml.Backend: GQA, explicit head_dim, llama3 RoPE
// scaling, tied embeddings, and a batched forward step over a paged KV
// cache in which prefill chunks and decode tokens share one step.
package llama

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
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
	// qkv is q, k and v fused into one [qd+2kvd, H] weight (and qkvb their
	// biases), loaded instead of q, k, v when the backend has QKVRoPEWriteKV.
	qkv, qkvb ml.Tensor
}

// fusedQKV is the optional backend op behind the fused attention prologue
// (ml/cuda): bias, RoPE of q and k, and the KV cache write in one launch.
type fusedQKV interface {
	QKVRoPEWriteKV(qkv, bias, positions, invFreq ml.Tensor, numHeads, numKVHeads, headDim int,
		c ml.KVCache, layer int, slots ml.Tensor) error
}

// fusedDecoder is the optional backend capability for steps of a few tokens
// (ml/cuda): each layer's norms, RoPE/KV write, SiLU and residual adds
// folded into its GEMVs. On this path h holds the whole residual stream (the
// o and down projections are added to it in place).
type fusedDecoder interface {
	FusedDecode(T, hidden int, weights ...ml.Tensor) bool
	NormMatMul(dst, x, normW ml.Tensor, eps float32, w, bias ml.Tensor) error
	NormQKVRoPEWriteKV(qkv, x, normW ml.Tensor, eps float32, w, bias, positions, invFreq ml.Tensor,
		numHeads, numKVHeads, headDim int, c ml.KVCache, layer int, slots ml.Tensor) error
	NormGateUpSiLU(act, x, normW ml.Tensor, eps float32, gateUp, bias ml.Tensor) error
	MatMulAdd(acc, x, w, bias ml.Tensor) error
}

// stepDecoder is the optional backend capability of running every layer of
// a one-token step in one launch (ml/cuda), on the fused decode ops' terms.
// It returns ml.ErrUnsupported for steps it does not take.
type stepDecoder interface {
	DecodeLayers(h ml.Tensor, layers []ml.DecoderLayer, eps float32,
		positions, invFreq, slots ml.Tensor, c ml.KVCache, meta *ml.AttentionMeta) error
}

// stepPadder is implemented by backends that replay repeated steps (CUDA
// graphs): steps with prompt tokens are then padded to a few sizes.
type stepPadder interface{ PadSteps() bool }

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

	fq fusedQKV     // nil: separate q, k, v projections
	fd fusedDecoder // nil: the backend has no fused decode ops, or the weights don't suit them
	// sd runs one-token steps' layers in one launch (nil: no such op, or
	// it declined once); stepLayers are the layers as it takes them.
	sd         stepDecoder
	stepLayers []ml.DecoderLayer
	pad        bool // pad prefill/mixed steps to bucket sizes
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
	m.fq, _ = m.be.(fusedQKV)
	if sp, ok := m.be.(stepPadder); ok {
		m.pad = sp.PadSteps()
	}
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
		switch {
		case m.fq != nil && err == nil:
			a := p + "self_attn."
			l.qkv, err = m.concat(w, []part{{a + "q_proj.weight", []int{qd, H}}, {a + "k_proj.weight", []int{kvd, H}},
				{a + "v_proj.weight", []int{kvd, H}}}, w.DType, qd+2*kvd, H)
			if qkvBias && err == nil {
				l.qkvb, err = m.concat(w, []part{{a + "q_proj.bias", []int{qd}}, {a + "k_proj.bias", []int{kvd}},
					{a + "v_proj.bias", []int{kvd}}}, ml.F32, 1, qd+2*kvd)
			}
		case m.fq == nil:
			l.q = load(p+"self_attn.q_proj.weight", w.DType, qd, H)
			l.k = load(p+"self_attn.k_proj.weight", w.DType, kvd, H)
			l.v = load(p+"self_attn.v_proj.weight", w.DType, kvd, H)
			if qkvBias {
				l.qb = vec(p+"self_attn.q_proj.bias", qd)
				l.kb = vec(p+"self_attn.k_proj.bias", kvd)
				l.vb = vec(p+"self_attn.v_proj.bias", kvd)
			}
		}
		l.o = load(p+"self_attn.o_proj.weight", w.DType, H, qd)
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
	inv := cfg.InvFreq()
	if m.invFreq, err = m.be.NewTensor(ml.F32, 1, len(inv)); err != nil {
		return nil, err
	}
	m.tensors = append(m.tensors, m.invFreq)
	if err = m.be.UploadF32(m.invFreq, inv); err != nil {
		return nil, err
	}
	if fd, ok := m.be.(fusedDecoder); ok && m.fq != nil {
		ws := []ml.Tensor{m.lmHead}
		for i := range m.layers {
			l := &m.layers[i]
			ws = append(ws, l.qkv, l.o, l.gateUp, l.down)
		}
		if fd.FusedDecode(1, H, ws...) {
			m.fd = fd
			if sd, ok := m.be.(stepDecoder); ok {
				m.sd = sd
				for i := range m.layers {
					l := &m.layers[i]
					m.stepLayers = append(m.stepLayers, ml.DecoderLayer{InNorm: l.inNorm, PostNorm: l.postNorm,
						QKV: l.qkv, O: l.o, GateUp: l.gateUp, Down: l.down,
						QKVBias: l.qkvb, OBias: l.ob, GateUpBias: l.gub, DownBias: l.db})
				}
			}
		}
	}
	m.weightBytes = w.Bytes
	w.Logger.Info("model loaded", "arch", cfg.Arch(), "layers", len(m.layers), "hidden", H,
		"heads", m.nh, "kv_heads", m.nkv, "head_dim", m.hd, "weight_bytes", m.weightBytes)
	return m, nil
}

// fused loads two same-shaped tensors as one [rows, cols] tensor, a's rows
// first (gate and up projections share one matmul).
func (m *Model) fused(w *model.Weights, a, b string, shape []int, store ml.DType, rows, cols int) (ml.Tensor, error) {
	return m.concat(w, []part{{a, shape}, {b, shape}}, store, rows, cols)
}

// part is one checkpoint tensor of a concatenation and its expected shape.
type part struct {
	name  string
	shape []int
}

// concat loads tensors of one dtype as one [rows, cols] tensor, in order
// (their flattened data back to back: row-wise for weights of one width).
func (m *Model) concat(w *model.Weights, parts []part, store ml.DType, rows, cols int) (ml.Tensor, error) {
	var data []byte
	var dt ml.DType
	names := make([]string, len(parts))
	for i, p := range parts {
		t, err := w.Get(p.name, p.shape...)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			dt = t.DType
			data = make([]byte, 0, len(t.Data)*len(parts)*2)
		} else if t.DType != dt {
			return nil, fmt.Errorf("%w: %q is %s but %q is %s", model.ErrShape, parts[0].name, dt, p.name, t.DType)
		}
		data = append(data, t.Data...)
		names[i] = p.name
	}
	t, err := w.Upload(strings.Join(names, "+"), data, dt, store, rows, cols)
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

var _ model.Profiler = (*Model)(nil)

// ProfileStep implements model.Profiler: one step of tokens tokens, rows-1
// one-token sequences and one prompt of the rest, with rows logit rows, on
// a temporary KV cache of just the blocks it needs.
func (m *Model) ProfileStep(ctx context.Context, tokens, rows int) error {
	if m.be == nil {
		return errClosed
	}
	if m.kv != nil {
		return fmt.Errorf("%w: ProfileStep after AllocateKV", model.ErrBadConfig)
	}
	if tokens < 1 || rows < 1 || rows > tokens {
		return fmt.Errorf("%w: profile step of %d tokens with %d logit rows", model.ErrBadBatch, tokens, rows)
	}
	const bs = 16
	prompt := tokens - (rows - 1)
	blocks := (prompt+bs-1)/bs + 1 // the prompt's, and one the decode rows share
	kv, err := m.be.NewKVCache(len(m.layers), blocks, bs, m.nkv, m.hd, m.kvDType)
	if err != nil {
		return fmt.Errorf("model: profile KV cache: %w", err)
	}
	m.kv, m.numBlocks, m.blockSize = kv, blocks, bs
	defer func() {
		m.be.FreeKVCache(kv)
		m.kv, m.numBlocks, m.blockSize = nil, 0, 0
	}()
	b := &model.Batch{}
	shared := []int32{int32(blocks - 1)}
	for i := 0; i < rows-1; i++ {
		b.Tokens = append(b.Tokens, int32(i%m.V))
		b.Positions = append(b.Positions, int32(i%bs))
		b.Seqs = append(b.Seqs, model.SeqChunk{Start: i, Len: 1, BlockTable: shared})
		b.LogitIndices = append(b.LogitIndices, int32(i))
	}
	table := make([]int32, blocks-1)
	for i := range table {
		table[i] = int32(i)
	}
	b.Seqs = append(b.Seqs, model.SeqChunk{Start: rows - 1, Len: prompt, BlockTable: table})
	for i := 0; i < prompt; i++ {
		b.Tokens = append(b.Tokens, int32(i%m.V))
		b.Positions = append(b.Positions, int32(i))
	}
	b.LogitIndices = append(b.LogitIndices, int32(tokens-1))
	logits := make([]float32, rows*m.V)
	greedy := make([]bool, rows)
	for i := range greedy {
		greedy[i] = true
	}
	return m.ForwardArgmax(ctx, b, greedy, make([]int32, rows), logits)
}
