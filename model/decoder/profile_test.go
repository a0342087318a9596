package decoder

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/model"
)

// TestProfileStep: the start-up profile step runs before AllocateKV, leaves
// no KV cache behind and its step buffers at the profiled size (a later
// step of that size allocates none), and the model then serves exactly as
// one that was never profiled.
func TestProfileStep(t *testing.T) {
	dir := filepath.Join(shareddata.Dir(t), "models", "qwen2-tiny")
	g := shareddata.ReadModelGolden(t, dir)
	m := load(t, dir, model.LoadOptions{})
	if err := m.ProfileStep(t.Context(), 48, 5); err != nil {
		t.Fatal(err)
	}
	if m.kv != nil {
		t.Fatal("ProfileStep left a KV cache")
	}
	if m.s.capT < 48 || m.s.capL < 5 {
		t.Fatalf("step buffers hold %d tokens and %d logit rows after profiling 48 and 5", m.s.capT, m.s.capL)
	}
	if err := m.AllocateKV(32, 4); err != nil {
		t.Fatal(err)
	}
	fresh := load(t, dir, model.LoadOptions{})
	if err := fresh.AllocateKV(32, 4); err != nil {
		t.Fatal(err)
	}
	scattered := []int32{9, 2, 14, 5, 0, 11, 7, 3}
	a, b := &seqRun{blocks: scattered}, &seqRun{blocks: scattered}
	got, want := a.step(t, m, g.PromptIDs), b.step(t, fresh, g.PromptIDs)
	for i := range want {
		if d := maxDiff32(got[i], want[i]); d != 0 {
			t.Fatalf("prompt row %d: profiled model differs by %g", i, d)
		}
	}
	if err := m.ProfileStep(t.Context(), 8, 1); !errors.Is(err, model.ErrBadConfig) {
		t.Errorf("ProfileStep after AllocateKV: %v, want ErrBadConfig", err)
	}
	if err := fresh.Close(); err != nil {
		t.Fatal(err)
	}
	other := load(t, dir, model.LoadOptions{})
	if err := other.ProfileStep(t.Context(), 4, 5); !errors.Is(err, model.ErrBadBatch) {
		t.Errorf("5 logit rows of 4 tokens: %v, want ErrBadBatch", err)
	}
}
