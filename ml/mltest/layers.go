package mltest

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/llmserve/llmserve/ml"
)

// ReferenceLayers runs the layers of an ml.LayerFuser as a composition of
// be's base ops, step by step as ml.FusedLayers states it: the reference
// that backends' fused layers are checked against (CheckFusedLayers), and,
// through Fusing, a way to run a model's fused-layer path on any backend.
// It is written for clarity, not speed: the stacked q/k/v projection is
// split on the host.
func ReferenceLayers(be ml.Backend, spec ml.LayerSpec, layers []ml.DecoderLayer, finalNorm, lmHead ml.Tensor) (ml.FusedLayers, error) {
	if len(layers) == 0 || finalNorm == nil || lmHead == nil {
		return nil, errors.New("mltest: reference layers need layers, a final norm and an lm_head")
	}
	if spec.QKNorm {
		for i, l := range layers {
			if l.QNorm == nil || l.KNorm == nil {
				return nil, fmt.Errorf("mltest: layer %d lacks its q/k norms", i)
			}
		}
	}
	return &refLayers{be: be, spec: spec, layers: layers, finalNorm: finalNorm, lmHead: lmHead}, nil
}

type refLayers struct {
	be                ml.Backend
	spec              ml.LayerSpec
	layers            []ml.DecoderLayer
	finalNorm, lmHead ml.Tensor

	// q, k and v cut from the stacked projection, [capT, ...] each.
	capT    int
	q, k, v ml.Tensor
	host    []float32
}

func (r *refLayers) ensure(T int) error {
	if T <= r.capT {
		return nil
	}
	s := &r.spec
	for _, t := range []ml.Tensor{r.q, r.k, r.v} {
		if t != nil {
			r.be.Free(t)
		}
	}
	r.q, r.k, r.v, r.capT = nil, nil, nil, 0
	var err error
	if r.q, err = r.be.NewTensor(ml.F32, T, s.NumHeads*s.HeadDim); err != nil {
		return err
	}
	if r.k, err = r.be.NewTensor(ml.F32, T, s.NumKVHeads*s.HeadDim); err != nil {
		return err
	}
	if r.v, err = r.be.NewTensor(ml.F32, T, s.NumKVHeads*s.HeadDim); err != nil {
		return err
	}
	r.capT = T
	return nil
}

// Forward implements ml.FusedLayers.
func (r *refLayers) Forward(h ml.Tensor, st *ml.FusedStep) error {
	T := h.Rows()
	if err := r.ensure(T); err != nil {
		return err
	}
	for i := range r.layers {
		if err := r.layer(h, st, i, T); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return nil
}

func (r *refLayers) layer(h ml.Tensor, st *ml.FusedStep, i, T int) error {
	be, s, l := r.be, &r.spec, &r.layers[i]
	q, k, v := be.View(r.q, 0, T), be.View(r.k, 0, T), be.View(r.v, 0, T)
	if err := be.RMSNorm(st.XN, h, l.InNorm, s.Eps); err != nil {
		return err
	}
	if err := be.MatMul(st.QKV, st.XN, l.QKV, l.QKVBias); err != nil {
		return err
	}
	if err := r.split(st.QKV, T, q, k, v); err != nil {
		return err
	}
	if s.QKNorm {
		if err := be.RMSNormHeads(q, l.QNorm, s.HeadDim, s.Eps); err != nil {
			return err
		}
		if err := be.RMSNormHeads(k, l.KNorm, s.HeadDim, s.Eps); err != nil {
			return err
		}
	}
	if err := be.RoPE(q, st.Positions, st.InvFreq, s.NumHeads, s.HeadDim); err != nil {
		return err
	}
	if err := be.RoPE(k, st.Positions, st.InvFreq, s.NumKVHeads, s.HeadDim); err != nil {
		return err
	}
	if err := be.WriteKV(st.Cache, i, k, v, st.Slots); err != nil {
		return err
	}
	st.Meta.Window = 0
	if s.Windows != nil {
		st.Meta.Window = s.Windows[i]
	}
	if err := be.Attention(st.Attn, q, st.Cache, i, st.Meta); err != nil {
		return err
	}
	if err := be.MatMul(st.Down, st.Attn, l.O, l.OBias); err != nil {
		return err
	}
	if err := be.AddRMSNorm(h, st.XN, st.Down, l.PostNorm, s.Eps); err != nil {
		return err
	}
	if l.GateUp == nil && l.Down == nil {
		return st.SparseMLP(i, h)
	}
	if err := be.MatMul(st.GateUp, st.XN, l.GateUp, l.GateUpBias); err != nil {
		return err
	}
	if err := be.SiLUMul(st.Act, st.GateUp); err != nil {
		return err
	}
	if err := be.MatMul(st.Down, st.Act, l.Down, l.DownBias); err != nil {
		return err
	}
	// The base ops have no plain add: AddRMSNorm adds, and its normed rows
	// are not used.
	return be.AddRMSNorm(h, st.XN, st.Down, l.PostNorm, s.Eps)
}

// split copies the q, k and v columns of the stacked projection qkv apart.
func (r *refLayers) split(qkv ml.Tensor, T int, q, k, v ml.Tensor) error {
	qd, kvd := q.Cols(), k.Cols()
	width := qd + 2*kvd
	if qkv.Cols() != width {
		return fmt.Errorf("mltest: qkv has %d columns, want %d", qkv.Cols(), width)
	}
	if cap(r.host) < T*width {
		r.host = make([]float32, T*width)
	}
	all := r.host[:T*width]
	if err := r.be.Download(all, qkv); err != nil {
		return err
	}
	for _, part := range []struct {
		dst      ml.Tensor
		off, len int
	}{{q, 0, qd}, {k, qd, kvd}, {v, qd + kvd, kvd}} {
		cols := make([]float32, 0, T*part.len)
		for t := range T {
			cols = append(cols, all[t*width+part.off:t*width+part.off+part.len]...)
		}
		if err := r.be.UploadF32(part.dst, cols); err != nil {
			return err
		}
	}
	return nil
}

// Head implements ml.FusedLayers.
func (r *refLayers) Head(logits, x, xn ml.Tensor) error {
	if err := r.be.RMSNorm(xn, x, r.finalNorm, r.spec.Eps); err != nil {
		return err
	}
	return r.be.MatMul(logits, xn, r.lmHead, nil)
}

// Fusing wraps be as an ml.LayerFuser whose fused layers are
// ReferenceLayers on be, so that a model takes its fused-layer path (the
// stacked weight layout, FusedLayers' step contract) on a backend without
// fused kernels, e.g. the CPU in CI. It keeps be's ActivationDType and
// in-place weights, and counts the steps its layers run.
func Fusing(be ml.Backend) *FusingBackend { return &FusingBackend{Backend: be} }

// FusingBackend is Fusing's backend.
type FusingBackend struct {
	ml.Backend
	steps atomic.Int64
}

// Steps is the number of Forward calls of the layers it fused.
func (f *FusingBackend) Steps() int64 { return f.steps.Load() }

func (*FusingBackend) FusesLayers(ml.LayerSpec) bool { return true }

func (f *FusingBackend) FuseLayers(spec ml.LayerSpec, layers []ml.DecoderLayer, finalNorm, lmHead ml.Tensor) (ml.FusedLayers, error) {
	fl, err := ReferenceLayers(f.Backend, spec, layers, finalNorm, lmHead)
	if err != nil {
		return nil, err
	}
	return countedLayers{fl, &f.steps}, nil
}

type countedLayers struct {
	ml.FusedLayers
	steps *atomic.Int64
}

func (c countedLayers) Forward(h ml.Tensor, st *ml.FusedStep) error {
	c.steps.Add(1)
	return c.FusedLayers.Forward(h, st)
}

// ActivationDType is be's, or the weights' dtype when be does not say
// (what model.Load assumes of such a backend).
func (f *FusingBackend) ActivationDType(weights ml.DType) ml.DType {
	if a, ok := f.Backend.(ml.ActivationDTyper); ok {
		return a.ActivationDType(weights)
	}
	return weights
}

func (f *FusingBackend) AliasWeight(rows, cols int, dt ml.DType, parts ...[]byte) (ml.Tensor, error) {
	if a, ok := f.Backend.(ml.WeightAliaser); ok {
		return a.AliasWeight(rows, cols, dt, parts...)
	}
	return nil, fmt.Errorf("%w: in-place weights", ml.ErrUnsupported)
}

// FusedCase is one configuration CheckFusedLayers runs.
type FusedCase struct {
	Name        string
	Spec        ml.LayerSpec
	Layers, V   int
	Bias        bool     // q/k/v, o and MLP biases
	WeightDType ml.DType // of the matrices (norms and biases are F32)
	KVDType     ml.DType
}

// FusedCases are the shapes CheckFusedLayers covers: GQA 2:1 and 1:1,
// with and without biases, per-head q/k norms and sliding windows (run
// only where the fuser takes them).
func FusedCases(wdt, kvdt ml.DType) []FusedCase {
	base := ml.LayerSpec{Hidden: 64, Intermediate: 96, NumHeads: 4, NumKVHeads: 2, HeadDim: 16, Eps: 1e-6}
	mha := base
	mha.NumKVHeads = 4
	qk := base
	qk.QKNorm = true
	win := base
	win.Windows = []int{0, 5}
	return []FusedCase{
		{"gqa-bias", base, 2, 80, true, wdt, kvdt},
		{"gqa", base, 2, 80, false, wdt, kvdt},
		{"mha", mha, 2, 80, false, wdt, kvdt},
		{"qk-norm", qk, 2, 80, false, wdt, kvdt},
		{"window", win, 2, 80, false, wdt, kvdt},
	}
}

// CheckFusedLayers runs each case the fuser takes through its fused layers
// and through ReferenceLayers on be, on the same random weights and
// inputs: steps of two sequences (both prompts in one step, then decode
// steps of both and of one), comparing the residual stream after Forward
// and the Head's logits of every row. Errors are relative to the largest
// reference value of a step's output.
func CheckFusedLayers(t *testing.T, be ml.Backend, fuser ml.LayerFuser, tol float64, cases []FusedCase) {
	t.Helper()
	ran := 0
	for _, c := range cases {
		if !fuser.FusesLayers(c.Spec) {
			t.Logf("%s: not fused, skipped", c.Name)
			continue
		}
		ran++
		t.Run(c.Name, func(t *testing.T) {
			worst, err := CompareFusedLayers(be, fuser, c)
			if err != nil {
				t.Fatal(err)
			}
			if worst > tol {
				t.Errorf("fused layers differ from the reference by %.3g > %.3g", worst, tol)
			}
			t.Logf("max relative difference %.3g", worst)
		})
	}
	if ran == 0 {
		t.Fatal("the fuser took none of the cases")
	}
}

// CompareFusedLayers is CheckFusedLayers' comparison of one case: the
// largest relative difference between the fuser's and the reference's
// outputs.
func CompareFusedLayers(be ml.Backend, fuser ml.LayerFuser, c FusedCase) (float64, error) {
	r := rand.New(rand.NewPCG(7, uint64(len(c.Name))))
	s := c.Spec
	H, I, qd, kvd := s.Hidden, s.Intermediate, s.NumHeads*s.HeadDim, s.NumKVHeads*s.HeadDim
	var tensors []ml.Tensor
	defer func() {
		for _, t := range tensors {
			be.Free(t)
		}
	}()
	var err error
	keep := func(t ml.Tensor, e error) ml.Tensor {
		if e != nil && err == nil {
			err = e
		}
		if t != nil {
			tensors = append(tensors, t)
		}
		return t
	}
	f32 := func(rows, cols int, vals []float32) ml.Tensor {
		t := keep(be.NewTensor(ml.F32, rows, cols))
		if err == nil && vals != nil {
			err = be.UploadF32(t, vals)
		}
		return t
	}
	i32 := func(vals []int32) ml.Tensor {
		t := keep(be.NewTensor(ml.I32, 1, len(vals)))
		if err == nil {
			err = be.UploadI32(t, vals)
		}
		return t
	}
	weight := func(rows, cols int) ml.Tensor {
		scale := float32(1 / math.Sqrt(float64(cols)))
		vals := RandF32(r, rows*cols, scale)
		return keep(be.LoadWeight(rows, cols, Encode(ml.F32, vals), ml.F32, c.WeightDType))
	}
	norm := func(n int) ml.Tensor {
		vals := make([]float32, n)
		for i := range vals {
			vals[i] = 1 + 0.2*(r.Float32()-0.5)
		}
		return f32(1, n, vals)
	}
	bias := func(n int) ml.Tensor {
		if !c.Bias {
			return nil
		}
		return f32(1, n, RandF32(r, n, 0.1))
	}
	layers := make([]ml.DecoderLayer, c.Layers)
	for i := range layers {
		l := &layers[i]
		l.InNorm, l.PostNorm = norm(H), norm(H)
		l.QKV, l.O, l.GateUp, l.Down = weight(qd+2*kvd, H), weight(H, qd), weight(2*I, H), weight(H, I)
		l.QKVBias, l.OBias, l.GateUpBias, l.DownBias = bias(qd+2*kvd), bias(H), bias(2*I), bias(H)
		if s.QKNorm {
			l.QNorm, l.KNorm = norm(s.HeadDim), norm(s.HeadDim)
		}
	}
	finalNorm, lmHead := norm(H), weight(c.V, H)
	inv := make([]float32, s.HeadDim/2)
	for i := range inv {
		inv[i] = float32(math.Pow(10000, -2*float64(i)/float64(s.HeadDim)))
	}
	invFreq := f32(1, len(inv), inv)
	if err != nil {
		return 0, err
	}
	fused, err := fuser.FuseLayers(s, layers, finalNorm, lmHead)
	if err != nil {
		return 0, err
	}
	ref, err := ReferenceLayers(be, s, layers, finalNorm, lmHead)
	if err != nil {
		return 0, err
	}
	const blockSize, blocks = 4, 8
	var caches []ml.KVCache
	for range 2 {
		kv, err := be.NewKVCache(c.Layers, blocks, blockSize, s.NumKVHeads, s.HeadDim, c.KVDType)
		if err != nil {
			return 0, err
		}
		defer be.FreeKVCache(kv)
		caches = append(caches, kv)
	}
	// Two sequences with interleaved block tables; each step is the tokens
	// of the sequences in it, with their positions.
	tables := [][]int32{{6, 1, 4, 3}, {0, 7, 2, 5}}
	type chunk struct{ seq, from, n int }
	steps := [][]chunk{
		{{0, 0, 7}, {1, 0, 5}},
		{{0, 7, 1}, {1, 5, 1}},
		{{0, 8, 1}},
		{{0, 9, 1}},
		{{1, 6, 1}},
		{{0, 10, 3}},
	}
	worst := 0.0
	for si, step := range steps {
		var pos, tokSeq, slots []int32
		var bt []int32
		for i, ch := range step {
			bt = append(bt, tables[ch.seq]...)
			for p := ch.from; p < ch.from+ch.n; p++ {
				pos = append(pos, int32(p))
				tokSeq = append(tokSeq, int32(i))
				slots = append(slots, tables[ch.seq][p/blockSize]*blockSize+int32(p%blockSize))
			}
		}
		T := len(pos)
		embedded := RandF32(r, T*H, 1)
		var outs [2][]float32
		for run, fl := range []ml.FusedLayers{fused, ref} {
			h := f32(T, H, embedded)
			st := &ml.FusedStep{Positions: i32(pos), InvFreq: invFreq, Slots: i32(slots), Cache: caches[run],
				XN: f32(T, H, nil), QKV: f32(T, qd+2*kvd, nil), Attn: f32(T, qd, nil), Down: f32(T, H, nil),
				GateUp: f32(T, 2*I, nil), Act: f32(T, I, nil)}
			maxCtx := 0
			for _, p := range pos {
				maxCtx = max(maxCtx, int(p)+1)
			}
			st.Meta = &ml.AttentionMeta{NumTokens: T, NumSeqs: len(step), TokenSeq: i32(tokSeq), Positions: st.Positions,
				BlockTables: keep(be.NewTensor(ml.I32, len(step), len(tables[0]))), MaxBlocks: len(tables[0]), MaxContext: maxCtx,
				NumHeads: s.NumHeads, NumKVHeads: s.NumKVHeads, HeadDim: s.HeadDim, Scale: float32(1 / math.Sqrt(float64(s.HeadDim)))}
			logits := f32(T, c.V, nil)
			if err != nil {
				return 0, err
			}
			if err := be.UploadI32(st.Meta.BlockTables, bt); err != nil {
				return 0, err
			}
			if err := fl.Forward(h, st); err != nil {
				return 0, fmt.Errorf("step %d: %w", si, err)
			}
			out := make([]float32, T*H+T*c.V)
			if err := be.Download(out[:T*H], h); err != nil {
				return 0, err
			}
			if err := fl.Head(logits, h, st.XN); err != nil {
				return 0, fmt.Errorf("step %d head: %w", si, err)
			}
			if err := be.Download(out[T*H:], logits); err != nil {
				return 0, err
			}
			outs[run] = out
		}
		worst = math.Max(worst, relDiff(outs[0][:T*H], outs[1][:T*H]))
		worst = math.Max(worst, relDiff(outs[0][T*H:], outs[1][T*H:]))
	}
	return worst, nil
}

// relDiff is max|got-want| / max(1, max|want|); NaNs count as infinite.
func relDiff(got, want []float32) float64 {
	scale, d := 1.0, 0.0
	for i := range want {
		scale = math.Max(scale, math.Abs(float64(want[i])))
		e := math.Abs(float64(got[i]) - float64(want[i]))
		if math.IsNaN(e) {
			return math.Inf(1)
		}
		d = math.Max(d, e)
	}
	return d / scale
}
