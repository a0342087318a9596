package cpu

import (
	"fmt"
	"sync"

	"github.com/llmserve/llmserve/ml"
)

// NewCollectives returns the n ends of an in-process all-reduce over CPU
// tensors, one per rank, for tensor parallelism within one process (tests,
// and --device cpu --tensor-parallel-size n). Rank r's calls must come
// from its own goroutine. The sum is split into n chunks, each summed by
// one rank in rank order and copied to all: every rank gets the same bits.
func NewCollectives(n int) []ml.Collective {
	g := &tpGroup{n: n, bufs: make([][]float32, n)}
	g.cond = sync.NewCond(&g.mu)
	out := make([]ml.Collective, n)
	for r := range n {
		out[r] = &member{g: g, rank: r}
	}
	return out
}

type tpGroup struct {
	n       int
	mu      sync.Mutex
	cond    *sync.Cond
	arrived int
	gen     uint64
	err     error // set by Abort
	bufs    [][]float32
}

// barrier waits until all n ranks have arrived (or the tpGroup is aborted).
func (g *tpGroup) barrier() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return g.err
	}
	gen := g.gen
	g.arrived++
	if g.arrived == g.n {
		g.arrived = 0
		g.gen++
		g.cond.Broadcast()
		return nil
	}
	for gen == g.gen && g.err == nil {
		g.cond.Wait()
	}
	if gen == g.gen {
		return g.err
	}
	return nil
}

type member struct {
	g    *tpGroup
	rank int
	sum  []float32 // this rank's chunk of the sum
}

var _ ml.Collective = (*member)(nil)

func (m *member) Rank() int { return m.rank }
func (m *member) Size() int { return m.g.n }

// AllReduceSum implements ml.Collective: three barriers (every buffer
// registered; every chunk summed; every chunk copied back).
func (m *member) AllReduceSum(t ml.Tensor) error {
	x, err := asTensor(t, "AllReduceSum", f32Only)
	if err != nil {
		return err
	}
	g := m.g
	if g.n == 1 {
		return nil
	}
	buf := x.f32[:x.rows*x.cols]
	g.bufs[m.rank] = buf
	if err := g.barrier(); err != nil {
		return err
	}
	n := len(buf)
	for r, b := range g.bufs {
		if len(b) != n {
			// Every rank sees the same lengths, so every rank fails here.
			err = fmt.Errorf("%w: AllReduceSum of %d values on rank %d but %d on rank %d", ErrShape, n, m.rank, len(b), r)
		}
	}
	lo, hi := m.rank*n/g.n, (m.rank+1)*n/g.n
	if err == nil {
		if cap(m.sum) < hi-lo {
			m.sum = make([]float32, hi-lo)
		}
		s := m.sum[:hi-lo]
		copy(s, g.bufs[0][lo:hi])
		for _, b := range g.bufs[1:] {
			for i, v := range b[lo:hi] {
				s[i] += v
			}
		}
	}
	if berr := g.barrier(); berr != nil {
		return berr
	}
	if err == nil {
		for _, b := range g.bufs {
			copy(b[lo:hi], m.sum[:hi-lo])
		}
	}
	if berr := g.barrier(); berr != nil {
		return berr
	}
	return err
}

// Abort implements ml.Collective.
func (m *member) Abort(cause error) {
	g := m.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err == nil {
		g.err = fmt.Errorf("%w: %w", ml.ErrCollectiveAborted, cause)
	}
	g.cond.Broadcast()
}

// Close implements ml.Collective.
func (m *member) Close() error { return nil }
