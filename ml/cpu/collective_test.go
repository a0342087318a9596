package cpu

import (
	"errors"
	"sync"
	"testing"

	"github.com/llmserve/llmserve/ml"
)

// TestCollectivesAllReduce: every rank ends with the elementwise sum, the
// same bits on each, over repeated calls and lengths that do not split
// evenly into chunks.
func TestCollectivesAllReduce(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4} {
		comms := NewCollectives(n)
		bes := make([]*Backend, n)
		for r := range bes {
			bes[r] = New(Options{Threads: 1})
			defer bes[r].Close()
		}
		for _, size := range []int{1, 7, 64, 1000} {
			out := make([][]float32, n)
			var wg sync.WaitGroup
			for r := range n {
				wg.Go(func() {
					x, _ := bes[r].NewTensor(ml.F32, 1, size)
					src := make([]float32, size)
					for i := range src {
						src[i] = float32(r+1) * (float32(i) + 0.1)
					}
					for range 3 { // reduces the already-reduced tensor
						if err := bes[r].UploadF32(x, src); err != nil {
							t.Error(err)
						}
						if err := comms[r].AllReduceSum(x); err != nil {
							t.Error(err)
							return
						}
					}
					out[r] = make([]float32, size)
					if err := bes[r].Download(out[r], x); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			tot := float32(n * (n + 1) / 2)
			for r := range n {
				for i, v := range out[r] {
					if want := tot * (float32(i) + 0.1); v != out[0][i] || abs32(v-want) > 1e-3*want {
						t.Fatalf("n=%d size=%d rank %d [%d] = %v, want %v (rank 0: %v)", n, size, r, i, v, want, out[0][i])
					}
				}
			}
		}
	}
}

func abs32(x float32) float32 {
	if x < 0 {
		return -x
	}
	return x
}

// TestCollectivesAbort: a rank that never comes does not leave the others
// waiting once the group is aborted, and later calls fail at once.
func TestCollectivesAbort(t *testing.T) {
	comms := NewCollectives(3)
	be := New(Options{Threads: 1})
	defer be.Close()
	errs := make(chan error, 2)
	for r := range 2 {
		go func() {
			x, _ := be.NewTensor(ml.F32, 1, 4)
			errs <- comms[r].AllReduceSum(x)
		}()
	}
	comms[2].Abort(errors.New("rank 2 failed"))
	for range 2 {
		if err := <-errs; !errors.Is(err, ml.ErrCollectiveAborted) {
			t.Errorf("waiting rank: %v, want ErrCollectiveAborted", err)
		}
	}
	x, _ := be.NewTensor(ml.F32, 1, 4)
	if err := comms[0].AllReduceSum(x); !errors.Is(err, ml.ErrCollectiveAborted) {
		t.Errorf("after abort: %v", err)
	}
}
