package cpu

import (
	"fmt"
	"math"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu/kernels"
)

// This file holds the ops that per-head norms and mixtures of experts are
// composed of: RMSNormHeads, TopKSoftmax, MatMulExperts and ScatterAdd.

func (b *Backend) RMSNormHeads(x, w ml.Tensor, headDim int, eps float32) error {
	xt, err := asTensor(x, "RMSNormHeads x", f32Only)
	if err != nil {
		return err
	}
	wt, err := asTensor(w, "RMSNormHeads weight", f32Only)
	if err != nil {
		return err
	}
	if headDim <= 0 || xt.cols%headDim != 0 || wt.rows*wt.cols != headDim {
		return fmt.Errorf("%w: RMSNormHeads x %v, weight %v, head dim %d", ErrShape, xt, wt, headDim)
	}
	r := &b.rows
	r.dst, r.x, r.w, r.eps, r.hd = xt, xt, wt, eps, headDim
	b.runRows(opRMSNormHeads, xt.rows, xt.cols)
	return nil
}

func (b *Backend) TopKSoftmax(weights, ids, logits ml.Tensor, k int, normalize bool) error {
	lg, err := asTensor(logits, "TopKSoftmax logits", f32Only)
	if err != nil {
		return err
	}
	wt, err := asTensor(weights, "TopKSoftmax weights", f32Only)
	if err != nil {
		return err
	}
	T, E := lg.rows, lg.cols
	if k <= 0 || k > E || len(wt.f32) < T*k {
		return fmt.Errorf("%w: TopKSoftmax top-%d of logits %v into weights %v", ErrShape, k, lg, wt)
	}
	ix, err := indices(ids, "TopKSoftmax ids", T*k)
	if err != nil {
		return err
	}
	if cap(b.probs) < E {
		b.probs = make([]float64, E)
	}
	p := b.probs[:E]
	for t := range T {
		row := lg.f32[t*E : (t+1)*E]
		mx := math.Inf(-1)
		for _, v := range row {
			mx = math.Max(mx, float64(v))
		}
		var sum float64
		for i, v := range row {
			p[i] = math.Exp(float64(v) - mx)
			sum += p[i]
		}
		// Selection of the k largest, in order (k is small: 1 to 8 on
		// the Hub), the lowest index first on ties; taken ones become -1.
		var tot float64
		ws, is := wt.f32[t*k:(t+1)*k], ix[t*k:(t+1)*k]
		for j := range k {
			best := -1
			for i, v := range p {
				if v >= 0 && (best < 0 || v > p[best]) {
					best = i
				}
			}
			is[j] = int32(best)
			tot += p[best] / sum
			p[best] = -1
		}
		for j, e := range is {
			v := math.Exp(float64(row[e])-mx) / sum
			if normalize {
				v /= tot
			}
			ws[j] = float32(v)
		}
	}
	return nil
}

// expertTask runs MatMulExperts as items of (expert group, weight-row
// block) over rows packed by expert.
type expertTask struct {
	w      *Tensor
	xg, dg []float32 // rows packed by expert: [R, K] and [R, N]
	N, K   int
	nb     int
	nbN    int     // weight-row blocks per expert
	groups []group // non-empty experts
	// q8 holds xg quantized to int8 for int8 weights (see matmulTask.q8).
	q8 *kernels.Q8Acts
}

type group struct{ expert, start, n int }

func (e *expertTask) item(_, item int) {
	g := e.groups[item/e.nbN]
	n0 := (item % e.nbN) * e.nb
	n1 := min(e.N, n0+e.nb)
	K, N := e.K, e.N
	dst := e.dg[g.start*N+n0:]
	x := e.xg[g.start*K : (g.start+g.n)*K]
	w0 := g.expert*N + n0
	gemm(e.w.dt, dst, N, x, e.q8, g.start, e.w.f32, e.w.u16, e.w, g.n, w0, w0+n1-n0, K)
}

func (b *Backend) MatMulExperts(dst, x, w, experts ml.Tensor) error {
	d, err := asTensor(dst, "MatMulExperts dst", f32Only)
	if err != nil {
		return err
	}
	xt, err := asTensor(x, "MatMulExperts x", f32Only)
	if err != nil {
		return err
	}
	wt, err := asTensor(w, "MatMulExperts w", anyWeight)
	if err != nil {
		return err
	}
	R, N, K := d.rows, d.cols, xt.cols
	if wt.cols != K || N == 0 || wt.rows%N != 0 || xt.rows == 0 || R%xt.rows != 0 {
		return fmt.Errorf("%w: MatMulExperts dst %v = x %v · experts of %v", ErrShape, d, xt, wt)
	}
	E, fan := wt.rows/N, R/xt.rows
	ex, err := indices(experts, "MatMulExperts experts", R)
	if err != nil {
		return err
	}
	if R == 0 {
		return nil
	}
	// Counting sort of the rows by expert.
	if cap(b.expCount) < E+1 {
		b.expCount = make([]int, E+1)
	}
	cnt := b.expCount[:E+1]
	clear(cnt)
	for i, e := range ex {
		if e < 0 || int(e) >= E {
			return fmt.Errorf("%w: MatMulExperts expert %d at row %d outside %d experts", ErrShape, e, i, E)
		}
		cnt[e+1]++
	}
	e := &b.exp
	e.groups = e.groups[:0]
	for i := range E {
		if cnt[i+1] > 0 {
			e.groups = append(e.groups, group{expert: i, start: cnt[i], n: cnt[i+1]})
		}
		cnt[i+1] += cnt[i]
	}
	if cap(b.expOrder) < R {
		b.expOrder = make([]int32, R)
	}
	order := b.expOrder[:R] // packed position → dst row
	if len(e.xg) < R*K {
		e.xg = make([]float32, R*K)
	}
	if len(e.dg) < R*N {
		e.dg = make([]float32, R*N)
	}
	for r, ei := range ex {
		p := cnt[ei]
		cnt[ei]++
		order[p] = int32(r)
		xr := r / fan
		copy(e.xg[p*K:(p+1)*K], xt.f32[xr*K:(xr+1)*K])
	}
	e.w, e.N, e.K = wt, N, K
	if wt.dt == ml.I8 && b.quantizeActs {
		b.q8.Quantize(e.xg[:R*K], R, K)
		e.q8 = &b.q8
	}
	e.nb = max(16, min(256, (N/(2*b.pool.n)+15)&^15))
	e.nbN = (N + e.nb - 1) / e.nb
	b.pool.runSerialOr(e, len(e.groups)*e.nbN, R*N*K >= 1<<15)
	e.w, e.q8 = nil, nil
	for p, r := range order {
		copy(d.f32[int(r)*N:int(r+1)*N], e.dg[p*N:(p+1)*N])
	}
	return nil
}

func (b *Backend) ScatterAdd(dst, src, idx, scale ml.Tensor) error {
	d, err := asTensor(dst, "ScatterAdd dst", f32Only)
	if err != nil {
		return err
	}
	s, err := asTensor(src, "ScatterAdd src", f32Only)
	if err != nil {
		return err
	}
	if d.cols != s.cols {
		return fmt.Errorf("%w: ScatterAdd dst %v vs src %v", ErrShape, d, s)
	}
	ix, err := indices(idx, "ScatterAdd idx", s.rows)
	if err != nil {
		return err
	}
	var sc []float32
	if scale != nil {
		st, err := asTensor(scale, "ScatterAdd scale", f32Only)
		if err != nil {
			return err
		}
		if len(st.f32) < s.rows {
			return fmt.Errorf("%w: ScatterAdd scale %v for %d rows", ErrShape, st, s.rows)
		}
		sc = st.f32[:s.rows]
	}
	C := d.cols
	for i, j := range ix {
		if j < 0 || int(j) >= d.rows {
			return fmt.Errorf("%w: ScatterAdd index %d at %d outside %v", ErrShape, j, i, d)
		}
	}
	for i, j := range ix {
		out := d.f32[int(j)*C : int(j+1)*C]
		in := s.f32[i*C : (i+1)*C]
		if sc == nil {
			for c, v := range in {
				out[c] += v
			}
			continue
		}
		a := sc[i]
		for c, v := range in {
			out[c] += a * v
		}
	}
	return nil
}
