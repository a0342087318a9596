package decoder

import (
	"context"
	"fmt"

	"github.com/llmserve/llmserve/ml"
)

// stepPadder is implemented by backends that replay repeated steps (CUDA
// graphs): steps with prompt tokens are then padded to a few sizes.
type stepPadder interface{ PadSteps() bool }

// layerSpec is the model's layers as an ml.LayerFuser takes them.
func (m *Model) layerSpec() ml.LayerSpec {
	s := ml.LayerSpec{Hidden: m.H, Intermediate: m.I, NumHeads: m.nh, NumKVHeads: m.nkv, HeadDim: m.hd,
		Eps: m.eps, QKNorm: m.spec.QKNorm}
	for i := range m.cfg.NumHiddenLayers {
		if w := m.spec.window(i); w > 0 {
			if s.Windows == nil {
				s.Windows = make([]int, m.cfg.NumHiddenLayers)
			}
			s.Windows[i] = w
		}
	}
	return s
}

// fuser is the backend's ml.LayerFuser when it takes this model's layers:
// not a tensor-parallel shard, whose o and down projections are partial
// sums to reduce before the residual add. Sparse MLPs run on the base ops
// through the step's hook (fusedMLP), between the fused attention halves.
func (m *Model) fuser(sharded bool) ml.LayerFuser {
	f, ok := m.be.(ml.LayerFuser)
	if !ok || sharded || !f.FusesLayers(m.layerSpec()) {
		return nil
	}
	return f
}

// bindFused hands the loaded layers to the fuser.
func (m *Model) bindFused(f ml.LayerFuser) error {
	layers := make([]ml.DecoderLayer, len(m.layers))
	for i := range m.layers {
		l := &m.layers[i]
		layers[i] = ml.DecoderLayer{InNorm: l.inNorm, PostNorm: l.postNorm,
			QKV: l.qkv, O: l.o, GateUp: l.gateUp, Down: l.down,
			QKVBias: l.qkvb, OBias: l.ob, GateUpBias: l.gub, DownBias: l.db, QNorm: l.qNorm, KNorm: l.kNorm}
		if l.router != nil {
			layers[i].Router, layers[i].ExpGateUp, layers[i].ExpDown = l.router, l.expGateUp, l.expDown
			layers[i].TopK, layers[i].NormTopK = m.topK, m.spec.MoE.NormTopKProb
		}
	}
	fl, err := f.FuseLayers(m.layerSpec(), layers, m.finalNorm, m.lmHead)
	if err != nil {
		return fmt.Errorf("decoder: binding the fused layers: %w", err)
	}
	m.fused = fl
	m.fusedMLPFn = m.fusedMLP // bound once: a step does not allocate it
	return nil
}

// fusedMLP is the fused layers' hook for layer i's sparse MLP, on the
// step's views (h and xn are the step's h and xn).
func (m *Model) fusedMLP(i int, h, xn ml.Tensor) error {
	vw := m.fusedVW
	if vw == nil || h != vw.h || xn != vw.xn {
		return fmt.Errorf("decoder: sparse MLP of layer %d outside its step", i)
	}
	return m.moe(&m.layers[i], vw)
}

// forwardFused runs the layers and the lm_head of a step on the backend's
// fused layers (after the embedding).
func (m *Model) forwardFused(ctx context.Context, vw *stepViews, L int, rowsInOrder bool, greedy []bool, allowed func(int, []uint32) bool, tokens []int32, logits []float32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	st := &ml.FusedStep{Positions: vw.pos, InvFreq: m.invFreq, Slots: vw.slots, Cache: m.kv, Meta: &m.s.meta,
		XN: vw.xn, QKV: vw.q, Attn: vw.attn, Down: vw.down, GateUp: vw.gu, Act: vw.act, MLP: m.fusedMLPFn}
	m.fusedVW = vw
	err := m.fused.Forward(vw.h, st)
	m.fusedVW = nil
	if err != nil {
		return fmt.Errorf("decoder: fused layers: %w", err)
	}
	if L == 0 {
		return m.be.Sync()
	}
	// Decode steps want the logits of every row in order: the head reads h
	// itself, without a gather launch.
	x, xn := vw.h, vw.xn
	if !rowsInOrder {
		x, xn = vw.selH, vw.selX
		if err := m.be.GatherRows(x, vw.h, vw.logitIdx); err != nil {
			return err
		}
	}
	if err := m.fused.Head(vw.logits, x, xn); err != nil {
		return err
	}
	return m.fetchLogits(vw, L, greedy, allowed, tokens, logits)
}
