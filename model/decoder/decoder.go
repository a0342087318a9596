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
	"github.com/llmserve/llmserve/weights"
)

type layer struct {
	inNorm, postNorm ml.Tensor
	q, k, v, o       ml.Tensor
	qb, kb, vb, ob   ml.Tensor // nil when the architecture has no bias
	qNorm, kNorm     ml.Tensor // per-head norms (Spec.QKNorm), else nil
	window           int       // sliding window, 0: full attention
	gateUp, down     ml.Tensor // gate_proj and up_proj fused: [2I, H]
	gub, db          ml.Tensor // mlp_bias
	// qkv is q, k and v stacked into one [qd+2kvd, H] weight (and qkvb their
	// biases), loaded instead of q, k, v for a backend's fused layers.
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

	// H, I, nh, nkv and moeI are this rank's share under tensor
	// parallelism (I, nh, nkv, moeI divided by the ranks); V is the whole
	// vocabulary and vl the rows of it this rank's lm_head holds (V alone).
	H, I, V, nh, nkv, hd int
	vl                   int
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

	// fused runs the layers and the head when the backend fuses them
	// (ml.LayerFuser); the layers are then loaded in ml.DecoderLayer's
	// layout (qkv, qkvb).
	fused ml.FusedLayers
	// fusedMLPFn is fusedMLP bound (the fused layers' sparse-MLP hook) and
	// fusedVW the views of the step it runs in.
	fusedMLPFn func(int, ml.Tensor, ml.Tensor) error
	fusedVW    *stepViews
	pad        bool // pad prefill/mixed steps to bucket sizes

	tp *shard // this rank's place in a tensor-parallel group (nil: none)
}

var (
	_ model.DeviceArgmaxer = (*Model)(nil)
	_ model.Profiler       = (*Model)(nil)
	_ model.WarmUpper      = (*Model)(nil)
)

// New loads the model cfg describes, with the layers spec states, from w.
// Weights are bound by their Hugging Face names here and nowhere else.
func New(cfg *model.Config, w *model.Weights, spec Spec) (*Model, error) {
	if w.TP != nil {
		return nil, fmt.Errorf("%w: a tensor-parallel group of %d: use NewParallel (or Load)", model.ErrBadOption, w.Ranks())
	}
	return newModel(cfg, w, spec, nil)
}

// Load is New, or NewParallel when w has a tensor-parallel group.
func Load(cfg *model.Config, w *model.Weights, spec Spec) (model.Model, error) {
	if w.TP != nil {
		p, err := NewParallel(cfg, w, spec)
		if err != nil {
			return nil, err
		}
		return p, nil
	}
	m, err := New(cfg, w, spec)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// newModel loads the whole model (sh nil) or one rank's shard of it.
func newModel(cfg *model.Config, w *model.Weights, spec Spec, sh *shard) (_ *Model, err error) {
	if err := spec.check(cfg); err != nil {
		return nil, err
	}
	m := &Model{
		cfg: cfg, spec: spec, be: w.Backend,
		H: cfg.HiddenSize, I: cfg.IntermediateSize, V: cfg.VocabSize, vl: cfg.VocabSize,
		nh: cfg.NumAttentionHeads, nkv: cfg.NumKeyValueHeads, hd: cfg.HeadDim,
		eps:     float32(cfg.RMSNormEps),
		scale:   float32(1 / math.Sqrt(float64(cfg.HeadDim))),
		kvDType: w.KVDType,
		tp:      sh,
	}
	if spec.MoE != nil {
		m.moeI, m.topK = spec.MoE.Intermediate, spec.MoE.TopK
	}
	// The whole model is the shard of one rank.
	g := geometry{nh: m.nh, nkv: m.nkv, I: m.I, moeI: m.moeI, vl: m.V, bias: true}
	if sh != nil {
		g = sh.geometry
		m.nh, m.nkv, m.I, m.moeI, m.vl = g.nh, g.nkv, g.I, g.moeI, g.vl
	}
	if sh == nil {
		// The model owns the checkpoint's mapping, so that weights stored in
		// their compute dtype are used in place (no anonymous copy). A rank's
		// shard copies what it keeps: the ranks share one mapping, which
		// Load closes once they are built.
		m.mapping = w.Keep()
	}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	fuser := m.fuser(sh != nil)
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
	// loadPart loads one part (a rank's slice of a tensor).
	loadPart := func(p part, store ml.DType, rows, cols int) ml.Tensor {
		if err != nil {
			return nil
		}
		var t ml.Tensor
		t, err = m.concat(w, []part{p}, store, rows, cols)
		return t
	}

	H, I, qd, kvd := m.H, m.I, m.nh*m.hd, m.nkv*m.hd
	fullQ, fullKV, fullI := cfg.NumAttentionHeads*m.hd, cfg.NumKeyValueHeads*m.hd, cfg.IntermediateSize
	qRows := func(name string, shape ...int) part { return part{name, shape, 0, g.q0 * m.hd, (g.q0 + g.nh) * m.hd} }
	kvRows := func(name string, shape ...int) part {
		return part{name, shape, 0, g.kv0 * m.hd, (g.kv0 + g.nkv) * m.hd}
	}
	iRows := func(name string, shape ...int) part { return part{name, shape, 0, g.i0, g.i0 + g.I} }
	// The embedding doubles as lm_head when tied, so it is stored like a
	// matmul weight then; untied, only T rows are read per step and it
	// keeps the --dtype.
	embedStore := w.Compute
	if cfg.TieWordEmbeddings {
		embedStore = w.DType
	}
	if sh != nil && sh.vocab && err == nil {
		m.embed, err = m.vocabShard(w, embedStore, g)
	} else {
		m.embed = load("model.embed_tokens.weight", embedStore, m.V, H)
	}
	m.layers = make([]layer, cfg.NumHiddenLayers)
	for i := range m.layers {
		p := fmt.Sprintf("model.layers.%d.", i)
		a := p + "self_attn."
		l := &m.layers[i]
		l.window = spec.window(i)
		l.inNorm = vec(p+"input_layernorm.weight", H)
		l.postNorm = vec(p+"post_attention_layernorm.weight", H)
		switch {
		case fuser != nil && err == nil:
			l.qkv, err = m.loadParts(w, []model.Part{{Name: a + "q_proj.weight", Shape: []int{qd, H}},
				{Name: a + "k_proj.weight", Shape: []int{kvd, H}}, {Name: a + "v_proj.weight", Shape: []int{kvd, H}}},
				w.DType, qd+2*kvd, H)
			if spec.QKVBias && err == nil {
				l.qkvb, err = m.concat(w, []part{{name: a + "q_proj.bias", shape: []int{qd}}, {name: a + "k_proj.bias", shape: []int{kvd}},
					{name: a + "v_proj.bias", shape: []int{kvd}}}, ml.F32, 1, qd+2*kvd)
			}
		case fuser == nil:
			l.q = loadPart(qRows(a+"q_proj.weight", fullQ, H), w.DType, qd, H)
			l.k = loadPart(kvRows(a+"k_proj.weight", fullKV, H), w.DType, kvd, H)
			l.v = loadPart(kvRows(a+"v_proj.weight", fullKV, H), w.DType, kvd, H)
			if spec.QKVBias {
				l.qb = loadPart(qRows(a+"q_proj.bias", fullQ), ml.F32, 1, qd)
				l.kb = loadPart(kvRows(a+"k_proj.bias", fullKV), ml.F32, 1, kvd)
				l.vb = loadPart(kvRows(a+"v_proj.bias", fullKV), ml.F32, 1, kvd)
			}
		}
		if spec.QKNorm {
			l.qNorm = vec(a+"q_norm.weight", m.hd)
			l.kNorm = vec(a+"k_norm.weight", m.hd)
		}
		// o and down are row-parallel: each rank holds the columns of its
		// heads (of its intermediate slice), and their biases are added
		// once, by rank 0, before the sum over ranks.
		l.o = loadPart(part{a + "o_proj.weight", []int{H, fullQ}, 1, g.q0 * m.hd, (g.q0 + g.nh) * m.hd}, w.DType, H, qd)
		if spec.OBias && g.bias {
			l.ob = vec(a+"o_proj.bias", H)
		}
		if spec.sparse(i) {
			if err == nil {
				err = m.loadExperts(w, p+"mlp.", l, g)
			}
		} else {
			if err == nil {
				if sh == nil {
					l.gateUp, err = m.loadParts(w, []model.Part{{Name: p + "mlp.gate_proj.weight", Shape: []int{I, H}},
						{Name: p + "mlp.up_proj.weight", Shape: []int{I, H}}}, w.DType, 2*I, H)
				} else {
					l.gateUp, err = m.concat(w, []part{iRows(p+"mlp.gate_proj.weight", fullI, H), iRows(p+"mlp.up_proj.weight", fullI, H)},
						w.DType, 2*I, H)
				}
			}
			l.down = loadPart(part{p + "mlp.down_proj.weight", []int{H, fullI}, 1, g.i0, g.i0 + I}, w.DType, H, I)
			if spec.MLPBias {
				if err == nil {
					l.gub, err = m.concat(w, []part{iRows(p+"mlp.gate_proj.bias", fullI), iRows(p+"mlp.up_proj.bias", fullI)},
						ml.F32, 1, 2*I)
				}
				if g.bias {
					l.db = vec(p+"mlp.down_proj.bias", H)
				}
			}
		}
		if err != nil {
			return nil, err
		}
	}
	m.finalNorm = vec("model.norm.weight", H)
	switch {
	case cfg.TieWordEmbeddings && m.embed != nil && m.vl != m.V:
		m.lmHead = m.be.View(m.embed, 0, m.vl) // without the zero row
	case cfg.TieWordEmbeddings:
		m.lmHead = m.embed
	default:
		m.lmHead = loadPart(part{"lm_head.weight", []int{m.V, H}, 0, g.v0, g.v0 + m.vl}, w.DType, m.vl, H)
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
	if fuser != nil {
		if err = m.bindFused(fuser); err != nil {
			return nil, err
		}
	}
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
	if sh != nil {
		attrs = append(attrs, "rank", sh.rank, "ranks", sh.n)
	}
	w.Logger.Info("model loaded", attrs...)
	return m, nil
}

// loadExperts loads a sparse MLP: the router, and the experts' projections
// stacked so that one grouped matmul reads any subset of them.
func (m *Model) loadExperts(w *model.Weights, p string, l *layer, g geometry) error {
	E, I, H, fullI := m.spec.MoE.Experts, m.moeI, m.H, m.spec.MoE.Intermediate
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
		gu = append(gu, part{x + "gate_proj.weight", []int{fullI, H}, 0, g.e0, g.e0 + I},
			part{x + "up_proj.weight", []int{fullI, H}, 0, g.e0, g.e0 + I})
		dn = append(dn, part{x + "down_proj.weight", []int{H, fullI}, 1, g.e0, g.e0 + I})
	}
	if l.expGateUp, err = m.concat(w, gu, w.DType, E*2*I, H); err != nil {
		return err
	}
	l.expDown, err = m.concat(w, dn, w.DType, E*H, I)
	return err
}

// part is one checkpoint tensor of a concatenation and its expected
// shape, or the range [lo, hi) of its dimension dim (a rank's shard; hi 0:
// all of it).
type part struct {
	name   string
	shape  []int
	dim    int
	lo, hi int
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

func (p part) get(w *model.Weights) (*weights.Tensor, error) {
	if p.hi == 0 {
		return w.Get(p.name, p.shape...)
	}
	return w.GetSlice(p.name, p.shape, p.dim, p.lo, p.hi)
}

// concat loads tensors of one dtype as one [rows, cols] tensor, in order
// (their flattened data back to back: row-wise for weights of one width),
// copied into one buffer: for tensors other ops than MatMul read (biases,
// stacked experts).
func (m *Model) concat(w *model.Weights, parts []part, store ml.DType, rows, cols int) (ml.Tensor, error) {
	var data []byte
	var dt ml.DType
	for i, p := range parts {
		t, err := p.get(w)
		if err != nil {
			return nil, err
		}
		if len(parts) == 1 {
			data, dt = t.Data, t.DType // no copy
			break
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
