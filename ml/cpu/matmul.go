package cpu

import (
	"fmt"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu/kernels"
)

// matmulTask computes dst[T,N] = x[T,K]·w[N,K]ᵀ (+bias) as a grid of
// items: blocks of tb token rows × nb weight rows, claimed dynamically.
// Items are ordered weight-block-major so one worker's consecutive items
// tend to reuse the same weight block from cache.
type matmulTask struct {
	dst, x, w *Tensor
	bias      []float32
	T, N, K   int
	tb, nb    int
	tBlocks   int
	// q8 holds x quantized to int8 when w is int8 and the backend
	// quantizes activations; nil otherwise.
	q8 *kernels.Q8Acts
}

func (b *Backend) MatMul(dst, x, w, bias ml.Tensor) error {
	d, err := asTensor(dst, "MatMul dst", f32Only)
	if err != nil {
		return err
	}
	xt, err := asTensor(x, "MatMul x", f32Only)
	if err != nil {
		return err
	}
	wt, err := asWeight(w, "MatMul w")
	if err != nil {
		return err
	}
	if xt.cols != wt.cols || d.rows != xt.rows || d.cols != wt.rows {
		return fmt.Errorf("%w: MatMul dst %v = x %v · w %vᵀ", ErrShape, d, xt, wt)
	}
	var bs []float32
	if bias != nil {
		bt, err := asTensor(bias, "MatMul bias", f32Only)
		if err != nil {
			return err
		}
		if len(bt.f32) != wt.rows {
			return fmt.Errorf("%w: MatMul bias %v for w %v", ErrShape, bt, wt)
		}
		bs = bt.f32
	}
	T, N, K := xt.rows, wt.rows, wt.cols
	if T == 0 || N == 0 {
		return nil
	}
	m := &b.mm
	m.dst, m.x, m.w, m.bias = d, xt, wt, bs
	if wt.dt == ml.I8 && b.quantizeActs {
		b.q8.Quantize(xt.f32, T, K)
		m.q8 = &b.q8
	}
	m.T, m.N, m.K = T, N, K
	m.tb, m.nb = blocking(T, N, K, b.pool.n)
	m.tBlocks = (T + m.tb - 1) / m.tb
	nBlocks := (N + m.nb - 1) / m.nb
	b.pool.runSerialOr(m, m.tBlocks*nBlocks, T*N*K >= 1<<15)
	m.dst, m.x, m.w, m.bias, m.q8 = nil, nil, nil, nil, nil
	return nil
}

// blocking picks the item shape: weight rows split so every worker gets
// several items (balance on a shared machine).
func blocking(T, N, K, workers int) (tb, nb int) {
	// The kernels block K and N for the caches themselves; token rows are
	// split only for long prompts, to have enough items to balance.
	tb = T
	if T > 256 {
		tb = 128
	}
	nb = N / (4 * workers)
	nb = (nb + 15) &^ 15
	nb = max(32, min(nb, 256))
	return tb, nb
}

func (m *matmulTask) item(_, item int) {
	n0 := (item / m.tBlocks) * m.nb
	t0 := (item % m.tBlocks) * m.tb
	m.block(t0, min(m.T, t0+m.tb), n0, min(m.N, n0+m.nb))
}

func (m *matmulTask) block(t0, t1, n0, n1 int) {
	K, N := m.K, m.N
	dst := m.dst.f32[t0*N+n0:]
	x := m.x.f32[t0*K : t1*K]
	T, nn := t1-t0, n1-n0
	if m.w.segs != nil {
		m.segBlock(dst, x, t0, t1, n0, n1)
	} else {
		gemm(m.w.dt, dst, N, x, m.q8, t0, m.w.f32, m.w.u16, m.w, T, n0, n1, K)
	}
	if m.bias != nil {
		bias := m.bias[n0:n1]
		for t := range T {
			row := dst[t*N : t*N+nn]
			for j, v := range bias {
				row[j] += v
			}
		}
	}
}

// gemm runs the kernel of dtype dt on weight rows [n0, n1) of f32/u16 (or
// of w's int8 rows). x holds T activation rows; for int8 weights q8, when
// not nil, holds them quantized from row t0 on.
func gemm(dt ml.DType, dst []float32, ldd int, x []float32, q8 *kernels.Q8Acts, t0 int, f32 []float32, u16 []uint16, w *Tensor, T, n0, n1, K int) {
	nn := n1 - n0
	switch dt {
	case ml.F32:
		kernels.GemmF32(dst, ldd, x, f32[n0*K:n1*K], T, nn, K)
	case ml.BF16:
		kernels.GemmBF16(dst, ldd, x, u16[n0*K:n1*K], T, nn, K)
	case ml.F16:
		kernels.GemmF16(dst, ldd, x, u16[n0*K:n1*K], T, nn, K)
	case ml.I8:
		if q8 != nil {
			kernels.GemmI8Q8(dst, ldd, q8, t0, t0+T, w.i8[n0*K:n1*K], w.scales[n0:n1], nn)
			return
		}
		kernels.GemmI8(dst, ldd, x, w.i8[n0*K:n1*K], w.scales[n0:n1], T, nn, K)
	case ml.F8:
		gemmF8(dst, ldd, x, w.f8[n0*K:n1*K], w.scales[n0:n1], T, nn, K)
	}
}

// segBlock is block's kernel call for a segmented weight: one call per
// segment the rows [n0, n1) cross.
func (m *matmulTask) segBlock(dst, x []float32, t0, t1, n0, n1 int) {
	for i := range m.w.segs {
		s := &m.w.segs[i]
		lo, hi := max(n0, s.row0), min(n1, s.row0+s.rows)
		if lo >= hi {
			continue
		}
		gemm(m.w.dt, dst[lo-n0:], m.N, x, m.q8, t0, s.f32, s.u16, m.w, t1-t0, lo-s.row0, hi-s.row0, m.K)
	}
}
