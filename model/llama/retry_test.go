package llama

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/model"
)

// refusingBackend is a CPU backend whose next refusals downloads fail the
// way ml/cuda reports a cooperative launch the GPU refused when it flushes
// a step: ml.ErrRetryStep.
type refusingBackend struct {
	*cpu.Backend
	refusals int
}

func (r *refusingBackend) Download(dst []float32, t ml.Tensor) error {
	if r.refusals > 0 {
		r.refusals--
		return fmt.Errorf("%w: cooperative launch refused (test)", ml.ErrRetryStep)
	}
	return r.Backend.Download(dst, t)
}

// TestForwardRetriesRefusedStep: a step refused once at launch is run again
// and gives the logits an undisturbed run gives; a step refused twice
// returns the error.
func TestForwardRetriesRefusedStep(t *testing.T) {
	dir := filepath.Join(shareddata.Dir(t), "models", "qwen2-tiny")
	plain := load(t, dir, model.LoadOptions{})
	be := &refusingBackend{Backend: cpu.New(cpu.Options{})}
	t.Cleanup(func() { be.Close() })
	lm, err := model.Load(dir, model.LoadOptions{Backend: be})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lm.Close() })
	refusing := lm.(*Model)
	for _, m := range []*Model{plain, refusing} {
		if err := m.AllocateKV(8, 4); err != nil {
			t.Fatal(err)
		}
	}
	a, b := &seqRun{blocks: []int32{3, 6}}, &seqRun{blocks: []int32{3, 6}}
	prompt := []int32{5, 9, 2}
	want, got := a.step(t, plain, prompt), b.step(t, refusing, prompt)
	if d := maxDiff32(want[2], got[2]); d != 0 {
		t.Fatalf("prompt logits differ by %g", d)
	}
	for i := range 3 {
		tok := argmax(want[len(want)-1])
		be.refusals = 1
		want, got = a.step(t, plain, []int32{tok}), b.step(t, refusing, []int32{tok})
		if be.refusals != 0 {
			t.Fatalf("decode step %d: the refusal was not consumed", i)
		}
		if d := maxDiff32(want[0], got[0]); d != 0 {
			t.Errorf("decode step %d: logits after a retried step differ by %g", i, d)
		}
	}
	be.refusals = 2
	bt := &model.Batch{Tokens: []int32{1}, Positions: []int32{int32(b.n)},
		Seqs: []model.SeqChunk{{Start: 0, Len: 1, BlockTable: b.blocks}}, LogitIndices: []int32{0}}
	err = refusing.Forward(t.Context(), bt, make([]float32, refusing.cfg.VocabSize))
	if !errors.Is(err, ml.ErrRetryStep) {
		t.Errorf("a step refused twice: err = %v, want ml.ErrRetryStep", err)
	}
}
