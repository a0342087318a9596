package cuda

import (
	"errors"
	"fmt"

	"github.com/llmserve/llmserve/ml"
)

// The backend's ml.LayerFuser: the model states its layers once and each
// step runs them here, the fusion chosen per step. Steps of up to
// FusedDecodeMaxT tokens on bf16 weights take the fused GEMVs (fused.go),
// one-token steps all layers in one cooperative launch (DecodeLayers,
// step.go); larger steps run GEMMs with the q/k/v prologue in one launch
// (QKVRoPEWriteKV). Layers with per-head q/k norms (Qwen3) norm, rotate
// and store q/k/v in one kernel after the q/k/v projection
// (qkNormRoPEWriteKV; in the one-launch step, a phase of its own). A
// layer's sliding window (LayerSpec.Windows) goes to its attention: the
// attention kernels and the one-launch step's attention take one.

var _ ml.LayerFuser = (*Backend)(nil)

// FusesLayers implements ml.LayerFuser.
func (b *Backend) FusesLayers(spec ml.LayerSpec) bool {
	return spec.Hidden > 0 && spec.HeadDim > 0 && spec.HeadDim%2 == 0
}

// fusedKV reports whether the fused decode kernels write c (f32, bf16 and
// FP8 caches).
func (b *Backend) fusedKV(c ml.KVCache) bool {
	kc, ok := c.(*kvCache)
	return ok && kc != nil && (kc.dt == ml.F32 || kc.dt == ml.BF16 || kc.dt == ml.F8)
}

// FuseLayers implements ml.LayerFuser.
func (b *Backend) FuseLayers(spec ml.LayerSpec, layers []ml.DecoderLayer, finalNorm, lmHead ml.Tensor) (ml.FusedLayers, error) {
	if !b.FusesLayers(spec) {
		return nil, fmt.Errorf("%w: fused layers of hidden size %d, head dim %d", ml.ErrUnsupported, spec.Hidden, spec.HeadDim)
	}
	if len(layers) == 0 || finalNorm == nil || lmHead == nil {
		return nil, fmt.Errorf("%w: fused layers need layers, a final norm and an lm_head", ErrShape)
	}
	ws := []ml.Tensor{lmHead}
	for i, l := range layers {
		if l.InNorm == nil || l.PostNorm == nil || l.QKV == nil || l.O == nil || (l.GateUp == nil) != (l.Down == nil) {
			return nil, fmt.Errorf("%w: layer %d lacks a weight", ErrShape, i)
		}
		if spec.QKNorm && (l.QNorm == nil || l.KNorm == nil) {
			return nil, fmt.Errorf("%w: layer %d lacks its q/k norms", ErrShape, i)
		}
		ws = append(ws, l.QKV, l.O)
		if l.GateUp != nil { // else the model's MLP hook (FusedStep.MLP)
			ws = append(ws, l.GateUp, l.Down)
		}
	}
	f := &fusedLayers{b: b, spec: spec, layers: layers, finalNorm: finalNorm, lmHead: lmHead}
	f.gemv = b.FusedDecode(1, spec.Hidden, ws...)
	// The one-launch step runs sparse MLPs itself when the layers carry
	// their weights; it cannot call the model's hook.
	f.oneLaunch = f.gemv
	for _, l := range layers {
		if l.GateUp == nil && (l.Router == nil || l.ExpGateUp == nil || l.ExpDown == nil) {
			f.oneLaunch = false
		}
	}
	return f, nil
}

type fusedLayers struct {
	b                 *Backend
	spec              ml.LayerSpec
	layers            []ml.DecoderLayer
	finalNorm, lmHead ml.Tensor
	// gemv: the weights suit the fused GEMVs; oneLaunch: one-token steps
	// try DecodeLayers (off once it declined: the model's shape decides).
	gemv, oneLaunch bool
}

// Forward implements ml.FusedLayers.
func (f *fusedLayers) Forward(h ml.Tensor, st *ml.FusedStep) error {
	if st == nil || st.Meta == nil || h == nil {
		return fmt.Errorf("%w: fused forward without a step", ErrShape)
	}
	f.b.fusedForwards.Add(1)
	T := h.Rows()
	if !f.gemv || !f.b.FusedDecode(T, f.spec.Hidden) || !f.b.fusedKV(st.Cache) {
		return f.forwardGEMM(h, st)
	}
	if f.oneLaunch && T == 1 {
		err := f.b.DecodeLayers(h, f.layers, f.spec.Windows, f.spec.Eps, st.Positions, st.InvFreq, st.Slots, st.Cache, st.Meta)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errStepCompiling): // the GEMVs this time
		case errors.Is(err, ml.ErrUnsupported):
			f.oneLaunch = false
		default:
			return fmt.Errorf("decode step: %w", err)
		}
	}
	// Each layer's norms, RoPE and KV write, SiLU and residual adds are
	// folded into five GEMVs; the o and down projections are added to h in
	// place.
	b, s := f.b, &f.spec
	for i := range f.layers {
		l := &f.layers[i]
		if s.QKNorm {
			if err := b.NormMatMul(st.QKV, h, l.InNorm, s.Eps, l.QKV, l.QKVBias); err != nil {
				return fmt.Errorf("layer %d: %w", i, err)
			}
			if err := b.qkNormRoPEWriteKV(st.QKV, nil, l.QNorm, l.KNorm, s.Eps, st.Positions, st.InvFreq,
				s.NumHeads, s.NumKVHeads, s.HeadDim, st.Cache, i, st.Slots); err != nil {
				return fmt.Errorf("layer %d: %w", i, err)
			}
		} else if err := b.NormQKVRoPEWriteKV(st.QKV, h, l.InNorm, s.Eps, l.QKV, l.QKVBias, st.Positions, st.InvFreq,
			s.NumHeads, s.NumKVHeads, s.HeadDim, st.Cache, i, st.Slots); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		st.Meta.Window = f.window(i)
		if err := b.Attention(st.Attn, st.QKV, st.Cache, i, st.Meta); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		if err := b.MatMulAdd(h, st.Attn, l.O, l.OBias); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		if l.GateUp == nil {
			if err := b.RMSNorm(st.XN, h, l.PostNorm, s.Eps); err != nil {
				return fmt.Errorf("layer %d: %w", i, err)
			}
			if err := st.SparseMLP(i, h); err != nil {
				return err
			}
			continue
		}
		if err := b.NormGateUpSiLU(st.Act, h, l.PostNorm, s.Eps, l.GateUp, l.GateUpBias); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		if err := b.MatMulAdd(h, st.Act, l.Down, l.DownBias); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return nil
}

// window is layer i's sliding attention window (0: full attention).
func (f *fusedLayers) window(i int) int {
	if i < len(f.spec.Windows) {
		return max(f.spec.Windows[i], 0)
	}
	return 0
}

// forwardGEMM runs the layers of a larger step on GEMMs. The MLP's output
// waits in Down and is added to the residual by the next layer's norm
// (AddRMSNorm), and by the final norm after the last layer, whose normed
// rows are not used: Head norms the rows it is given.
func (f *fusedLayers) forwardGEMM(h ml.Tensor, st *ml.FusedStep) error {
	b, s := f.b, &f.spec
	pending := false // a dense MLP's output waits in Down
	for i := range f.layers {
		var err error
		if pending, err = f.layerGEMM(h, st, i, pending); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	if !pending {
		return nil // Head norms the rows it is given
	}
	return b.AddRMSNorm(h, st.XN, st.Down, f.finalNorm, s.Eps)
}

// layerGEMM runs layer i, adding the previous layer's MLP output to h
// first when it is pending; it reports whether this layer's is.
func (f *fusedLayers) layerGEMM(h ml.Tensor, st *ml.FusedStep, i int, pending bool) (bool, error) {
	b, s, l := f.b, &f.spec, &f.layers[i]
	var err error
	// XN's readers are the q/k/v product, then a dense MLP's gate/up
	// product: where they take its bf16 copy, the norms write only that.
	if !pending {
		err = b.rmsNorm(st.XN, h, l.InNorm, s.Eps, l.QKV)
	} else {
		err = b.addRMSNorm(h, st.XN, st.Down, l.InNorm, s.Eps, l.QKV)
	}
	if err != nil {
		return false, err
	}
	if err := b.MatMul(st.QKV, st.XN, l.QKV, nil); err != nil {
		return false, err
	}
	if s.QKNorm {
		err = b.qkNormRoPEWriteKV(st.QKV, l.QKVBias, l.QNorm, l.KNorm, s.Eps, st.Positions, st.InvFreq,
			s.NumHeads, s.NumKVHeads, s.HeadDim, st.Cache, i, st.Slots)
	} else {
		err = b.QKVRoPEWriteKV(st.QKV, l.QKVBias, st.Positions, st.InvFreq, s.NumHeads, s.NumKVHeads, s.HeadDim,
			st.Cache, i, st.Slots)
	}
	if err != nil {
		return false, err
	}
	st.Meta.Window = f.window(i)
	if err := b.Attention(st.Attn, st.QKV, st.Cache, i, st.Meta); err != nil {
		return false, err
	}
	// The o projection lands in Down, free until the MLP.
	if err := b.MatMul(st.Down, st.Attn, l.O, l.OBias); err != nil {
		return false, err
	}
	if err := b.addRMSNorm(h, st.XN, st.Down, l.PostNorm, s.Eps, l.GateUp); err != nil {
		return false, err
	}
	if l.GateUp == nil {
		return false, st.SparseMLP(i, h)
	}
	// Act is read by the down projection alone, so it may be left as its
	// bf16 copy only (gateUpSiLU).
	if err := b.gateUpSiLU(st.Act, st.GateUp, st.XN, l.GateUp, l.GateUpBias, l.Down); err != nil {
		return false, err
	}
	return true, b.MatMul(st.Down, st.Act, l.Down, l.DownBias)
}

// Head implements ml.FusedLayers.
func (f *fusedLayers) Head(logits, x, xn ml.Tensor) error {
	if x == nil {
		return fmt.Errorf("%w: head of no rows", ErrShape)
	}
	if f.gemv && f.b.FusedDecode(x.Rows(), f.spec.Hidden) {
		return f.b.NormMatMul(logits, x, f.finalNorm, f.spec.Eps, f.lmHead, nil)
	}
	if err := f.b.RMSNorm(xn, x, f.finalNorm, f.spec.Eps); err != nil {
		return err
	}
	return f.b.MatMul(logits, xn, f.lmHead, nil)
}
