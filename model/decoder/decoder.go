package decoder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
)

type layer struct {
	inNorm, postNorm ml.Tensor
	q, k, v, o       ml.Tensor
	qb, kb, vb, ob   ml.Tensor // nil when the architecture has no bias
	qNorm, kNorm     ml.Tensor // per-head norms (Spec.QKNorm), else nil
	window           int       // sliding window, 0: full attention
	gateUp, down     ml.Tensor // gate_proj and up_proj fused: [2I, H]
	gub, db          ml.Tensor // mlp_bias
	// qkv is q, k and v fused into one [qd+2kvd, H] weight (and qkvb their
	// biases), loaded instead of q, k, v when the backend has QKVRoPEWriteKV.
	qkv, qkvb ml.Tensor
	// A sparse MLP (Spec.MoE): the router [E, H], and every expert's gate
	// and up projections stacked as [E*2I, H] (expert e's gate rows, then
	// its up rows) and its down projections as [E*H, I].
	router, expGateUp, expDown ml.Tensor
}

// Model is a decoder-only model on an ml.Backend.
type Model struct {
	cfg  *model.Config
	spec Spec
	be   ml.Backend

	H, I, V, nh, nkv, hd int
	eps                  float32
	scale                float32
	moeI, topK           int // sparse layers' expert intermediate size and experts per token

	embed, lmHead, finalNorm ml.Tensor
	invFreq                  ml.Tensor
	layers                   []layer
	tensors                  []ml.Tensor // everything to Free
	mapping                  io.Closer   // the checkpoint's mapping, closed after the tensors
	inPlace                  int64       // weight bytes used in place
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

var (
	_ model.DeviceArgmaxer = (*Model)(nil)
	_ model.Profiler       = (*Model)(nil)
	_ model.WarmUpper      = (*Model)(nil)
)

// New loads the model cfg describes, with the layers spec states, from w.
// Weights are bound by their Hugging Face names here and nowhere else.
func New(cfg *model.Config, w *model.Weights, spec Spec) (_ *Model, err error) {
	if err := spec.check(cfg); err != nil {
		return nil, err
	}
	m := &Model{
		cfg: cfg, spec: spec, be: w.Backend,
		H: cfg.HiddenSize, I: cfg.IntermediateSize, V: cfg.VocabSize,
		nh: cfg.NumAttentionHeads, nkv: cfg.NumKeyValueHeads, hd: cfg.HeadDim,
		eps:     float32(cfg.RMSNormEps),
		scale:   float32(1 / math.Sqrt(float64(cfg.HeadDim))),
		kvDType: w.KVDType,
	}
	if spec.MoE != nil {
		m.moeI, m.topK = spec.MoE.Intermediate, spec.MoE.TopK
	}
	// The model owns the checkpoint's mapping, so that weights stored in
	// their compute dtype are used in place (no anonymous copy).
	m.mapping = w.Keep()
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	plain := spec.plain(cfg.NumHiddenLayers)
	if plain {
		m.fq, _ = m.be.(fusedQKV)
	}
	if sp, ok := m.be.(stepPadder); ok {
		m.pad = sp.PadSteps()
	}

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
		a := p + "self_attn."
		l := &m.layers[i]
		l.window = spec.window(i)
		l.inNorm = vec(p+"input_layernorm.weight", H)
		l.postNorm = vec(p+"post_attention_layernorm.weight", H)
		switch {
		case m.fq != nil && err == nil:
			l.qkv, err = m.loadParts(w, []model.Part{{Name: a + "q_proj.weight", Shape: []int{qd, H}},
				{Name: a + "k_proj.weight", Shape: []int{kvd, H}}, {Name: a + "v_proj.weight", Shape: []int{kvd, H}}},
				w.DType, qd+2*kvd, H)
			if spec.QKVBias && err == nil {
				l.qkvb, err = m.concat(w, []part{{a + "q_proj.bias", []int{qd}}, {a + "k_proj.bias", []int{kvd}},
					{a + "v_proj.bias", []int{kvd}}}, ml.F32, 1, qd+2*kvd)
			}
		case m.fq == nil:
			l.q = load(a+"q_proj.weight", w.DType, qd, H)
			l.k = load(a+"k_proj.weight", w.DType, kvd, H)
			l.v = load(a+"v_proj.weight", w.DType, kvd, H)
			if spec.QKVBias {
				l.qb = vec(a+"q_proj.bias", qd)
				l.kb = vec(a+"k_proj.bias", kvd)
				l.vb = vec(a+"v_proj.bias", kvd)
			}
		}
		if spec.QKNorm {
			l.qNorm = vec(a+"q_norm.weight", m.hd)
			l.kNorm = vec(a+"k_norm.weight", m.hd)
		}
		l.o = load(a+"o_proj.weight", w.DType, H, qd)
		if spec.OBias {
			l.ob = vec(a+"o_proj.bias", H)
		}
		if spec.sparse(i) {
			if err == nil {
				err = m.loadExperts(w, p+"mlp.", l)
			}
		} else {
			if err == nil {
				l.gateUp, err = m.loadParts(w, []model.Part{{Name: p + "mlp.gate_proj.weight", Shape: []int{I, H}},
					{Name: p + "mlp.up_proj.weight", Shape: []int{I, H}}}, w.DType, 2*I, H)
			}
			l.down = load(p+"mlp.down_proj.weight", w.DType, H, I)
			if spec.MLPBias {
				if err == nil {
					l.gub, err = m.fused(w, p+"mlp.gate_proj.bias", p+"mlp.up_proj.bias", []int{I}, ml.F32, 1, 2*I)
				}
				l.db = vec(p+"mlp.down_proj.bias", H)
			}
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
	m.bindFused()
	m.weightBytes, m.inPlace = w.Bytes, w.Aliased
	if m.inPlace == 0 && m.mapping != nil {
		// Every weight was copied (converted or quantized): unmap the
		// checkpoint now, or its pages read during the conversion would
		// stay in the process's resident set.
		err = m.mapping.Close()
		m.mapping = nil
		if err != nil {
			return nil, err
		}
	}
	attrs := []any{"arch", cfg.Arch(), "layers", len(m.layers), "hidden", H,
		"heads", m.nh, "kv_heads", m.nkv, "head_dim", m.hd, "qk_norm", spec.QKNorm, "weight_bytes", m.weightBytes, "weight_bytes_in_place", w.Aliased}
	if spec.MoE != nil {
		attrs = append(attrs, "experts", spec.MoE.Experts, "experts_per_token", spec.MoE.TopK)
	}
	w.Logger.Info("model loaded", attrs...)
	return m, nil
}

// loadExperts loads a sparse MLP: the router, and the experts' projections
// stacked so that one grouped matmul reads any subset of them.
func (m *Model) loadExperts(w *model.Weights, p string, l *layer) error {
	E, I, H := m.spec.MoE.Experts, m.moeI, m.H
	var err error
	// The router stays at --dtype when the experts are quantized (as in
	// vLLM): int8 noise would change which experts a token picks.
	if l.router, err = w.Load(p+"gate.weight", w.Compute, E, H); err != nil {
		return err
	}
	m.tensors = append(m.tensors, l.router)
	gu := make([]part, 0, 2*E)
	dn := make([]part, 0, E)
	for e := range E {
		x := fmt.Sprintf("%sexperts.%d.", p, e)
		gu = append(gu, part{x + "gate_proj.weight", []int{I, H}}, part{x + "up_proj.weight", []int{I, H}})
		dn = append(dn, part{x + "down_proj.weight", []int{H, I}})
	}
	if l.expGateUp, err = m.concat(w, gu, w.DType, E*2*I, H); err != nil {
		return err
	}
	l.expDown, err = m.concat(w, dn, w.DType, E*H, I)
	return err
}

// fused loads two same-shaped tensors as one [rows, cols] tensor, a's rows
// first (gate and up projections share one matmul).
func (m *Model) fused(w *model.Weights, a, b string, shape []int, store ml.DType, rows, cols int) (ml.Tensor, error) {
	return m.concat(w, []part{{a, shape}, {b, shape}}, store, rows, cols)
}

// loadParts loads a matmul weight stacked from checkpoint tensors (q, k
// and v; gate and up), in place in the mapped checkpoint where the backend
// can (model.Weights.LoadParts): read by MatMul only.
func (m *Model) loadParts(w *model.Weights, parts []model.Part, store ml.DType, rows, cols int) (ml.Tensor, error) {
	t, err := w.LoadParts(parts, store, rows, cols)
	if err != nil {
		return nil, err
	}
	m.tensors = append(m.tensors, t)
	return t, nil
}

// part is one checkpoint tensor of a concatenation and its expected shape.
type part struct {
	name  string
	shape []int
}

// concat loads tensors of one dtype as one [rows, cols] tensor, in order
// (their flattened data back to back: row-wise for weights of one width),
// copied into one buffer: for tensors other ops than MatMul read (biases,
// stacked experts).
func (m *Model) concat(w *model.Weights, parts []part, store ml.DType, rows, cols int) (ml.Tensor, error) {
	var data []byte
	var dt ml.DType
	for i, p := range parts {
		t, err := w.Get(p.name, p.shape...)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			dt = t.DType
			data = make([]byte, 0, len(t.Data)*len(parts))
		} else if t.DType != dt {
			return nil, fmt.Errorf("%w: %q is %s but %q is %s", model.ErrShape, parts[0].name, dt, p.name, t.DType)
		}
		data = append(data, t.Data...)
	}
	name := parts[0].name
	if len(parts) > 1 {
		name = strings.Join([]string{parts[0].name, parts[len(parts)-1].name}, "+...+")
	}
	t, err := w.Upload(name, data, dt, store, rows, cols)
	if err != nil {
		return nil, err
	}
	m.tensors = append(m.tensors, t)
	return t, nil
}

func (m *Model) Config() *model.Config { return m.cfg }

// Spec is the architecture's layer spec.
func (m *Model) Spec() Spec { return m.spec }

// WeightBytes is the memory of all weights (the tied embedding once).
func (m *Model) WeightBytes() int64 { return m.weightBytes }

// WeightBytesInPlace is the part of WeightBytes the backend uses in place
// (in the memory-mapped checkpoint), not copied.
func (m *Model) WeightBytesInPlace() int64 { return m.inPlace }

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
	if m.mapping != nil {
		err := m.mapping.Close()
		m.mapping = nil
		return err
	}
	return nil
}

// errClosed is returned by Forward after Close.
var errClosed = errors.New("decoder: model closed")

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
