package cpu

import (
	"fmt"
	"math"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu/kernels"
)

// Row-wise ops share one task type so none allocates: the op is an enum and
// its operands are fields of the Backend's preallocated rowsTask.
type rowOp uint8

const (
	opEmbedding rowOp = iota
	opRMSNorm
	opAddRMSNorm
	opSiLUMul
	opGather
	opRMSNormHeads
)

type rowsTask struct {
	op             rowOp
	chunk          int
	rows           int
	dst, x, res, w *Tensor
	idx            []int32
	eps            float32
	hd             int // opRMSNormHeads' head width
}

// parallelRows is the element count below which a row op stays on the
// calling goroutine: waking workers costs a few microseconds.
const parallelRows = 1 << 15

func (b *Backend) runRows(op rowOp, rows, cols int) {
	r := &b.rows
	r.op, r.rows = op, rows
	parallel := rows > 1 && rows*cols >= parallelRows
	n := b.pool.n
	if !parallel {
		n = 1
	}
	r.chunk = max(1, rows/(4*n))
	b.pool.runSerialOr(r, (rows+r.chunk-1)/r.chunk, parallel)
	r.dst, r.x, r.res, r.w, r.idx = nil, nil, nil, nil, nil
}

func (r *rowsTask) item(_, item int) {
	lo := item * r.chunk
	hi := min(r.rows, lo+r.chunk)
	for i := lo; i < hi; i++ {
		r.row(i)
	}
}

func (r *rowsTask) row(i int) {
	switch r.op {
	case opEmbedding:
		embedRow(r.dst.f32[i*r.dst.cols:(i+1)*r.dst.cols], r.w, int(r.idx[i]))
	case opGather:
		c := r.dst.cols
		j := int(r.idx[i])
		copy(r.dst.f32[i*c:(i+1)*c], r.x.f32[j*c:(j+1)*c])
	case opRMSNorm:
		c := r.dst.cols
		rmsNorm(r.dst.f32[i*c:(i+1)*c], r.x.f32[i*c:(i+1)*c], r.w.f32, r.eps)
	case opRMSNormHeads:
		c := r.dst.cols
		for h := 0; h < c; h += r.hd {
			x := r.x.f32[i*c+h : i*c+h+r.hd]
			rmsNorm(r.dst.f32[i*c+h:i*c+h+r.hd], x, r.w.f32, r.eps)
		}
	case opAddRMSNorm:
		c := r.dst.cols
		res := r.res.f32[i*c : (i+1)*c]
		x := r.x.f32[i*c : (i+1)*c]
		for j := range res {
			res[j] += x[j]
		}
		rmsNorm(r.dst.f32[i*c:(i+1)*c], res, r.w.f32, r.eps)
	case opSiLUMul:
		c := r.dst.cols
		g := r.x.f32[i*2*c : i*2*c+c]
		u := r.x.f32[i*2*c+c : (i+1)*2*c]
		kernels.SiLUMul(r.dst.f32[i*c:(i+1)*c], g, u)
	}
}

// rmsNorm sums squares in float64: it costs nothing next to the matmuls
// and keeps the scale exact to f32 precision for any width.
func rmsNorm(dst, x, w []float32, eps float32) {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	inv := float32(1 / math.Sqrt(ss/float64(len(x))+float64(eps)))
	w = w[:len(x)]
	dst = dst[:len(x)]
	for j, v := range x {
		dst[j] = v * inv * w[j]
	}
}

func embedRow(dst []float32, table *Tensor, id int) {
	c := table.cols
	switch table.dt {
	case ml.F32:
		copy(dst, table.f32[id*c:(id+1)*c])
	case ml.BF16:
		kernels.BF16ToF32(dst, table.u16[id*c:(id+1)*c])
	case ml.F16:
		kernels.F16ToF32(dst, table.u16[id*c:(id+1)*c])
	case ml.I8:
		s := table.scales[id]
		for j, q := range table.i8[id*c : (id+1)*c] {
			dst[j] = float32(q) * s
		}
	case ml.F8:
		s := table.scales[id]
		for j, q := range table.f8[id*c : (id+1)*c] {
			dst[j] = s * ml.F8Value(q)
		}
	}
}

func (b *Backend) Embedding(dst, table, ids ml.Tensor) error {
	d, err := asTensor(dst, "Embedding dst", f32Only)
	if err != nil {
		return err
	}
	tb, err := asTensor(table, "Embedding table", anyWeight)
	if err != nil {
		return err
	}
	if d.cols != tb.cols {
		return fmt.Errorf("%w: Embedding dst %v vs table %v", ErrShape, d, tb)
	}
	idx, err := indices(ids, "Embedding ids", d.rows)
	if err != nil {
		return err
	}
	for i, id := range idx {
		if id < 0 || int(id) >= tb.rows {
			return fmt.Errorf("%w: Embedding id %d at %d outside table of %d rows", ErrShape, id, i, tb.rows)
		}
	}
	r := &b.rows
	r.dst, r.w, r.idx = d, tb, idx
	b.runRows(opEmbedding, d.rows, d.cols)
	return nil
}

func (b *Backend) normArgs(what string, dst, x, w ml.Tensor) (*Tensor, *Tensor, *Tensor, error) {
	// The operand names are only built on the error path: concatenating
	// them up front would allocate on every call.
	d, err := asTensor(dst, "dst", f32Only)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	xt, err := asTensor(x, "x", f32Only)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	wt, err := asTensor(w, "weight", f32Only)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	if d.rows != xt.rows || d.cols != xt.cols || wt.rows*wt.cols != xt.cols {
		return nil, nil, nil, fmt.Errorf("%w: %s dst %v, x %v, weight %v", ErrShape, what, d, xt, wt)
	}
	return d, xt, wt, nil
}

func (b *Backend) RMSNorm(dst, x, w ml.Tensor, eps float32) error {
	d, xt, wt, err := b.normArgs("RMSNorm", dst, x, w)
	if err != nil {
		return err
	}
	r := &b.rows
	r.dst, r.x, r.w, r.eps = d, xt, wt, eps
	b.runRows(opRMSNorm, d.rows, d.cols)
	return nil
}

func (b *Backend) AddRMSNorm(residual, dst, x, w ml.Tensor, eps float32) error {
	d, xt, wt, err := b.normArgs("AddRMSNorm", dst, x, w)
	if err != nil {
		return err
	}
	res, err := asTensor(residual, "AddRMSNorm residual", f32Only)
	if err != nil {
		return err
	}
	if res.rows != xt.rows || res.cols != xt.cols {
		return fmt.Errorf("%w: AddRMSNorm residual %v vs x %v", ErrShape, res, xt)
	}
	r := &b.rows
	r.dst, r.x, r.res, r.w, r.eps = d, xt, res, wt, eps
	b.runRows(opAddRMSNorm, d.rows, d.cols)
	return nil
}

func (b *Backend) SiLUMul(dst, gateUp ml.Tensor) error {
	d, err := asTensor(dst, "SiLUMul dst", f32Only)
	if err != nil {
		return err
	}
	gu, err := asTensor(gateUp, "SiLUMul gateUp", f32Only)
	if err != nil {
		return err
	}
	if gu.rows != d.rows || gu.cols != 2*d.cols {
		return fmt.Errorf("%w: SiLUMul dst %v vs gateUp %v", ErrShape, d, gu)
	}
	r := &b.rows
	r.dst, r.x = d, gu
	b.runRows(opSiLUMul, d.rows, d.cols)
	return nil
}

func (b *Backend) GatherRows(dst, src, idx ml.Tensor) error {
	d, err := asTensor(dst, "GatherRows dst", f32Only)
	if err != nil {
		return err
	}
	s, err := asTensor(src, "GatherRows src", f32Only)
	if err != nil {
		return err
	}
	if d.cols != s.cols {
		return fmt.Errorf("%w: GatherRows dst %v vs src %v", ErrShape, d, s)
	}
	ix, err := indices(idx, "GatherRows idx", d.rows)
	if err != nil {
		return err
	}
	for i, j := range ix {
		if j < 0 || int(j) >= s.rows {
			return fmt.Errorf("%w: GatherRows index %d at %d outside %v", ErrShape, j, i, s)
		}
	}
	r := &b.rows
	r.dst, r.x, r.idx = d, s, ix
	b.runRows(opGather, d.rows, d.cols)
	return nil
}

// ropeTask rotates tokens in parallel; each worker keeps its cos/sin row.
type ropeTask struct {
	x         *Tensor
	pos       []int32
	inv       []float32
	heads, hd int
	scratch   [][]float32 // per worker: cos then sin, hd/2 each
}

func (b *Backend) RoPE(x, positions, invFreq ml.Tensor, numHeads, headDim int) error {
	xt, err := asTensor(x, "RoPE x", f32Only)
	if err != nil {
		return err
	}
	if headDim <= 0 || headDim%2 != 0 || numHeads <= 0 || xt.cols != numHeads*headDim {
		return fmt.Errorf("%w: RoPE x %v with %d heads of %d", ErrShape, xt, numHeads, headDim)
	}
	it, err := asTensor(invFreq, "RoPE invFreq", f32Only)
	if err != nil {
		return err
	}
	if len(it.f32) < headDim/2 {
		return fmt.Errorf("%w: RoPE invFreq %v for head dim %d", ErrShape, it, headDim)
	}
	pos, err := indices(positions, "RoPE positions", xt.rows)
	if err != nil {
		return err
	}
	r := &b.rope
	r.x, r.pos, r.inv, r.heads, r.hd = xt, pos, it.f32[:headDim/2], numHeads, headDim
	for i := range r.scratch {
		if len(r.scratch[i]) < headDim {
			r.scratch[i] = make([]float32, headDim)
		}
	}
	b.pool.runSerialOr(r, xt.rows, xt.rows > 1 && xt.rows*xt.cols >= parallelRows/4)
	r.x = nil
	return nil
}

func (r *ropeTask) item(w, t int) {
	half := r.hd / 2
	cs := r.scratch[w][:half]
	sn := r.scratch[w][half:r.hd]
	// Angles in float64: an f32 pos*invFreq loses ~1e-3 rad at 10^4.
	p := float64(r.pos[t])
	for i, f := range r.inv {
		s, c := math.Sincos(p * float64(f))
		cs[i], sn[i] = float32(c), float32(s)
	}
	row := r.x.f32[t*r.x.cols : (t+1)*r.x.cols]
	for h := range r.heads {
		x1 := row[h*r.hd : h*r.hd+half]
		x2 := row[h*r.hd+half : (h+1)*r.hd]
		for i := range x1 {
			a, b := x1[i], x2[i]
			x1[i] = a*cs[i] - b*sn[i]
			x2[i] = b*cs[i] + a*sn[i]
		}
	}
}
