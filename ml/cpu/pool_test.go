package cpu

import (
	"sync/atomic"
	"testing"
)

type countTask struct{ n atomic.Int64 }

func (c *countTask) item(w, i int) { c.n.Add(int64(i + 1)) }

func TestPoolRunsEveryWorker(t *testing.T) {
	for _, n := range []int{1, 2, 5} {
		p := newPool(n)
		var c countTask
		for range 1000 {
			p.run(&c, 7)
		}
		p.close()
		// Every item ran exactly once: 1000 × (1+...+7).
		if got := c.n.Load(); got != 1000*28 {
			t.Errorf("pool of %d: item sum %d, want %d", n, got, 1000*28)
		}
	}
}

func TestPoolHugeTask(t *testing.T) {
	p := newPool(2)
	defer p.close()
	var c countTask
	n := maxItems + 10
	p.run(&c, n)
	if got, want := c.n.Load(), int64(n)*int64(n+1)/2; got != want {
		t.Errorf("item sum %d, want %d", got, want)
	}
}

// BenchmarkPoolRun is the fixed cost of one parallel op (waking the workers
// and waiting for them).
func BenchmarkPoolRun(b *testing.B) {
	p := newPool(2)
	defer p.close()
	var c countTask
	for b.Loop() {
		p.run(&c, 2)
	}
}
