package cpu

import (
	"sync"
	"sync/atomic"
)

// task is one parallel op. run is called once per worker with the worker's
// index w in [0, n); tasks usually split their work into items claimed
// through an atomic counter, so a worker slowed by another process on the
// machine just claims fewer items.
type task interface {
	run(w, n int)
}

// pool is a fixed set of goroutines that run tasks. The caller's goroutine
// is worker 0, so a pool of n has n-1 goroutines. Tasks are passed as
// interface values holding pointers to preallocated structs: running one
// does not allocate.
type pool struct {
	n     int
	work  []chan task
	busy  sync.WaitGroup // the current task's workers
	alive sync.WaitGroup // the goroutines, for Close
}

func newPool(n int) *pool {
	p := &pool{n: n, work: make([]chan task, n-1)}
	for i := range p.work {
		ch := make(chan task)
		p.work[i] = ch
		p.alive.Add(1)
		go func(w int) {
			defer p.alive.Done()
			for t := range ch {
				t.run(w, n)
				p.busy.Done()
			}
		}(i + 1)
	}
	return p
}

// run runs t on all workers and waits for them.
func (p *pool) run(t task) {
	if p.n == 1 {
		t.run(0, 1)
		return
	}
	p.busy.Add(p.n - 1)
	for _, ch := range p.work {
		ch <- t
	}
	t.run(0, p.n)
	p.busy.Wait()
}

// runSerialOr runs t on the caller alone when the work is too small to be
// worth waking the other workers.
func (p *pool) runSerialOr(t task, parallel bool) {
	if !parallel {
		t.run(0, 1)
		return
	}
	p.run(t)
}

func (p *pool) close() {
	for _, ch := range p.work {
		close(ch)
	}
	p.alive.Wait()
}

// counter hands out work items [0, total) in chunks.
type counter struct {
	next  atomic.Int64
	total int64
}

func (c *counter) reset(total int) {
	c.next.Store(0)
	c.total = int64(total)
}

// claim returns the next item, or false when all are taken.
func (c *counter) claim() (int, bool) {
	i := c.next.Add(1) - 1
	return int(i), i < c.total
}

// funcTask adapts a closure for the few non-hot-path ops (weight loading).
type funcTask struct {
	c  counter
	fn func(item int)
}

func (f *funcTask) run(w, n int) {
	for {
		i, ok := f.c.claim()
		if !ok {
			return
		}
		f.fn(i)
	}
}

// parallelFor runs fn(i) for i in [0, items) over the pool (allocates; not
// for the hot path).
func (p *pool) parallelFor(items int, fn func(item int)) {
	t := &funcTask{fn: fn}
	t.c.reset(items)
	p.run(t)
}
