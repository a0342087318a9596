package cpu

import (
	"sync"
	"sync/atomic"
)

// task is one parallel op split into items; item(w, i) runs item i on
// worker w (w indexes per-worker scratch).
type task interface {
	item(w, i int)
}

// pool runs tasks on the calling goroutine (worker 0) plus n-1 persistent
// goroutines. Items are claimed from one atomic word, so:
//   - a worker the OS has not scheduled yet simply claims nothing: the
//     caller never waits for a worker to wake up, only for items that were
//     claimed and are still running (this matters on a shared machine,
//     where a descheduled thread would otherwise stall every op);
//   - running a task allocates nothing (tasks are pointers to
//     preallocated structs held in an interface).
//
// A pool runs one task at a time; it is not safe for concurrent use.
type pool struct {
	n    int
	wake []chan struct{} // one buffered token per worker goroutine
	fin  chan struct{}   // token from the worker that completes the last item

	// state packs the task's generation (ABA guard for late workers),
	// item count and next unclaimed item: gen<<40 | total<<20 | next.
	state atomic.Uint64
	done  atomic.Int64 // items completed
	cur   task         // written before state is published for a generation
	gen   uint64

	alive sync.WaitGroup
}

const (
	itemBits = 20
	itemMask = 1<<itemBits - 1
	// maxItems bounds a task's items (they are packed into 20 bits).
	maxItems = itemMask
)

func newPool(n int) *pool {
	p := &pool{n: n, wake: make([]chan struct{}, n-1), fin: make(chan struct{}, 1)}
	for i := range p.wake {
		ch := make(chan struct{}, 1)
		p.wake[i] = ch
		p.alive.Add(1)
		go func(w int) {
			defer p.alive.Done()
			for range ch {
				p.work(w)
			}
		}(i + 1)
	}
	return p
}

// claim takes the next item of the current task, if any.
func (p *pool) claim() (task, int, int64, bool) {
	for {
		s := p.state.Load()
		total, next := s>>itemBits&itemMask, s&itemMask
		if next >= total {
			return nil, 0, 0, false
		}
		if p.state.CompareAndSwap(s, s+1) {
			// The task cannot finish (and cur change) before this item is done.
			return p.cur, int(next), int64(total), true
		}
	}
}

func (p *pool) work(w int) {
	for {
		t, i, total, ok := p.claim()
		if !ok {
			return
		}
		t.item(w, i)
		if p.done.Add(1) == total && w != 0 {
			select {
			case p.fin <- struct{}{}:
			default:
			}
		}
	}
}

// run runs items [0, items) of t over the pool and returns when all are done.
func (p *pool) run(t task, items int) {
	if p.n == 1 || items <= 1 {
		for i := range items {
			t.item(0, i)
		}
		return
	}
	if items > maxItems { // a huge step: run it in windows (allocates, rare)
		for lo := 0; lo < items; lo += maxItems {
			p.run(offsetTask{t, lo}, min(maxItems, items-lo))
		}
		return
	}
	p.gen++
	p.cur = t
	p.done.Store(0)
	p.state.Store(p.gen<<(2*itemBits) | uint64(items)<<itemBits)
	for _, ch := range p.wake {
		select {
		case ch <- struct{}{}:
		default: // already has a wake-up pending
		}
	}
	p.work(0)
	for p.done.Load() < int64(items) {
		<-p.fin // a stale token from an earlier task just loops once more
	}
	p.cur = nil
}

// runSerialOr runs t on the caller alone when the work is too small to be
// worth waking the other workers.
func (p *pool) runSerialOr(t task, items int, parallel bool) {
	if !parallel {
		for i := range items {
			t.item(0, i)
		}
		return
	}
	p.run(t, items)
}

func (p *pool) close() {
	for _, ch := range p.wake {
		close(ch)
	}
	p.alive.Wait()
}

// offsetTask runs items [off, off+n) of t as items [0, n).
type offsetTask struct {
	t   task
	off int
}

func (o offsetTask) item(w, i int) { o.t.item(w, o.off+i) }

// funcTask adapts a closure for the few non-hot-path ops (weight loading).
type funcTask func(item int)

func (f funcTask) item(_, i int) { f(i) }

// parallelFor runs fn(i) for i in [0, items) over the pool (allocates; not
// for the hot path).
func (p *pool) parallelFor(items int, fn func(item int)) {
	p.run(funcTask(fn), items)
}
