package llama

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/model"
)

// mistralDir makes a MistralForCausalLM checkpoint of llama3-tiny-bf16's
// weights (the same layout) with the given sliding_window (0: null).
func mistralDir(t *testing.T, window int) string {
	t.Helper()
	src := filepath.Join(shareddata.Dir(t), "models", "llama3-tiny-bf16")
	data, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["architectures"] = []string{"MistralForCausalLM"}
	cfg["model_type"] = "mistral"
	cfg["rope_parameters"] = map[string]any{"rope_type": "default", "rope_theta": 1e6}
	cfg["sliding_window"] = nil
	if window > 0 {
		cfg["sliding_window"] = window
	}
	dir := t.TempDir()
	out, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), out, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(src, "model.safetensors"), filepath.Join(dir, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestMistralSlidingWindow: with sliding_window set, prompt positions past
// the window and decode steps match the float64 reference, which masks as
// transformers does (keys j with i-j < window), across KV block
// boundaries; without it Mistral is Llama with default RoPE.
func TestMistralSlidingWindow(t *testing.T) {
	for _, window := range []int{0, 6, 13} {
		dir := mistralDir(t, window)
		m := load(t, dir, model.LoadOptions{DType: "float32", KVCacheDType: "float32"})
		if got := m.Spec().Window(2); got != window {
			t.Fatalf("window %d: spec says %d", window, got)
		}
		if err := m.AllocateKV(32, 4); err != nil {
			t.Fatal(err)
		}
		ref := loadRef(t, dir)
		r := rand.New(rand.NewPCG(5, uint64(window)))
		tokens := make([]int32, 45)
		for i := range tokens {
			tokens[i] = int32(r.IntN(m.cfg.VocabSize))
		}
		want := ref.Forward(tokens)
		seq := &seqRun{blocks: []int32{30, 1, 17, 4, 22, 9, 0, 13, 26, 5, 11, 19}}
		var rows [][]float32
		for _, n := range []int{20, 17, 1, 1, 1, 1, 1, 1, 1, 1} {
			rows = append(rows, seq.step(t, m, tokens[seq.n:seq.n+n])...)
		}
		for p, row := range rows {
			if d, at := maxDiff64(row, want[p]); d > 2e-3 {
				t.Errorf("window %d: position %d: logit %d differs from the reference by %.3g", window, p, at, d)
			}
		}
	}
	// Batched steps with windows equal single-sequence runs, up to f32
	// summation order (1e-4 on logits of magnitude ~10; a wrong window
	// or block moves them by ~1).
	dir := mistralDir(t, 5)
	runMixed(t, rand.New(rand.NewPCG(8, 9)), load(t, dir, model.LoadOptions{}), load(t, dir, model.LoadOptions{}), 1e-4)
}
