package decoder

import (
	"context"
	"errors"
	"fmt"

	"github.com/llmserve/llmserve/ml"
)

// The optional backend capabilities behind the fused decode paths
// (ml/cuda). They cover the plain Llama-shaped layer only (Spec.plain: no
// per-head norms, windows or experts); other layers run on the base ops.

// fusedQKV is the fused attention prologue: bias, RoPE of q and k, and the
// KV cache write in one launch.
type fusedQKV interface {
	QKVRoPEWriteKV(qkv, bias, positions, invFreq ml.Tensor, numHeads, numKVHeads, headDim int,
		c ml.KVCache, layer int, slots ml.Tensor) error
}

// fusedDecoder is the capability for steps of a few tokens: each layer's
// norms, RoPE/KV write, SiLU and residual adds folded into its GEMVs. On
// this path h holds the whole residual stream (the o and down projections
// are added to it in place).
type fusedDecoder interface {
	FusedDecode(T, hidden int, weights ...ml.Tensor) bool
	NormMatMul(dst, x, normW ml.Tensor, eps float32, w, bias ml.Tensor) error
	NormQKVRoPEWriteKV(qkv, x, normW ml.Tensor, eps float32, w, bias, positions, invFreq ml.Tensor,
		numHeads, numKVHeads, headDim int, c ml.KVCache, layer int, slots ml.Tensor) error
	NormGateUpSiLU(act, x, normW ml.Tensor, eps float32, gateUp, bias ml.Tensor) error
	MatMulAdd(acc, x, w, bias ml.Tensor) error
}

// stepDecoder runs every layer of a one-token step in one launch, on the
// fused decode ops' terms. It returns ml.ErrUnsupported for steps it does
// not take.
type stepDecoder interface {
	DecodeLayers(h ml.Tensor, layers []ml.DecoderLayer, eps float32,
		positions, invFreq, slots ml.Tensor, c ml.KVCache, meta *ml.AttentionMeta) error
}

// stepPadder is implemented by backends that replay repeated steps (CUDA
// graphs): steps with prompt tokens are then padded to a few sizes.
type stepPadder interface{ PadSteps() bool }

// bindFused takes the backend's fused decode ops when the layers are plain
// and their weights suit the ops.
func (m *Model) bindFused() {
	fd, ok := m.be.(fusedDecoder)
	if !ok || m.fq == nil {
		return
	}
	ws := []ml.Tensor{m.lmHead}
	for i := range m.layers {
		l := &m.layers[i]
		ws = append(ws, l.qkv, l.o, l.gateUp, l.down)
	}
	if !fd.FusedDecode(1, m.H, ws...) {
		return
	}
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

// forwardFused runs the layers and the lm_head of a step the backend's fused
// decode ops take (after the embedding): all layers of a one-token step in
// one launch where the backend can (DecodeLayers), else five launches per
// layer.
func (m *Model) forwardFused(ctx context.Context, vw *stepViews, L int, rowsInOrder bool, greedy []bool, tokens []int32, logits []float32) error {
	oneLaunch := false
	if m.sd != nil && m.s.meta.NumTokens == 1 {
		err := m.sd.DecodeLayers(vw.h, m.stepLayers, m.eps, vw.pos, m.invFreq, vw.slots, m.kv, &m.s.meta)
		switch {
		case err == nil:
			oneLaunch = true
		case errors.Is(err, ml.ErrUnsupported):
			m.sd = nil // the step's shape is the model's: later steps would decline too
		default:
			return fmt.Errorf("decoder: decode step: %w", err)
		}
	}
	for i := 0; i < len(m.layers) && !oneLaunch; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := m.fusedLayer(&m.layers[i], i, vw); err != nil {
			return fmt.Errorf("decoder: layer %d: %w", i, err)
		}
	}
	if L == 0 {
		return m.be.Sync()
	}
	sel := vw.h
	if !rowsInOrder {
		sel = vw.selH
		if err := m.be.GatherRows(sel, vw.h, vw.logitIdx); err != nil {
			return err
		}
	}
	if err := m.fd.NormMatMul(vw.logits, sel, m.finalNorm, m.eps, m.lmHead, nil); err != nil {
		return err
	}
	return m.fetchLogits(vw, L, greedy, tokens, logits)
}

// fusedLayer is one decoder layer on the fused decode ops; the attention and
// MLP outputs are added to the residual stream h in place.
func (m *Model) fusedLayer(l *layer, i int, vw *stepViews) error {
	fd, h := m.fd, vw.h
	if err := fd.NormQKVRoPEWriteKV(vw.q, h, l.inNorm, m.eps, l.qkv, l.qkvb, vw.pos, m.invFreq,
		m.nh, m.nkv, m.hd, m.kv, i, vw.slots); err != nil {
		return err
	}
	if err := m.be.Attention(vw.attn, vw.q, m.kv, i, &m.s.meta); err != nil {
		return err
	}
	if err := fd.MatMulAdd(h, vw.attn, l.o, l.ob); err != nil {
		return err
	}
	if err := fd.NormGateUpSiLU(vw.act, h, l.postNorm, m.eps, l.gateUp, l.gub); err != nil {
		return err
	}
	return fd.MatMulAdd(h, vw.act, l.down, l.db)
}
