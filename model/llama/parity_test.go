package llama

import (
	"fmt"
	"github.com/llmserve/llmserve/internal/shareddata"
	"path/filepath"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
)

// TestGoldenParity: every prompt-position logit within 1e-3 of transformers'
// float64, and a greedy continuation run through decode steps that picks the
// golden token at every step whose margin exceeds 1e-3 (with its logits
// within 1e-3 too).
func TestGoldenParity(t *testing.T) {
	td := shareddata.Dir(t)
	for _, name := range tinyModels {
		for _, bs := range []int{4, 16} {
			t.Run(fmt.Sprintf("%s/block=%d", name, bs), func(t *testing.T) {
				dir := filepath.Join(td, "models", name)
				g := shareddata.ReadModelGolden(t, dir)
				m := load(t, dir, model.LoadOptions{KVCacheDType: "float32"})
				if err := m.AllocateKV(32, bs); err != nil {
					t.Fatal(err)
				}
				// Blocks in a scattered, descending order.
				seq := &seqRun{}
				for i := range 64 / bs {
					seq.blocks = append(seq.blocks, int32(31-3*i%32))
				}
				rows := seq.step(t, m, g.PromptIDs)
				for p, want := range g.PromptLogits {
					if d, at := maxDiff64(rows[p], want); d > 1e-3 {
						t.Errorf("prompt position %d: logit %d differs by %.3g (got %v want %v)", p, at, d, rows[p][at], want[at])
					}
				}
				last := rows[len(rows)-1]
				for i, st := range g.Greedy {
					if i > 0 {
						last = seq.step(t, m, []int32{g.Greedy[i-1].Token})[0]
					}
					if d, at := maxDiff64(last, st.Logits); d > 1e-3 {
						t.Errorf("greedy step %d: logit %d differs by %.3g", i, at, d)
					}
					if got := argmax(last); got != st.Token {
						if st.Margin > 1e-3 {
							t.Errorf("greedy step %d: token %d, want %d (margin %.4f)", i, got, st.Token, st.Margin)
						} else {
							t.Logf("greedy step %d: near-tie (margin %.2g) broken the other way", i, st.Margin)
						}
					}
				}
			})
		}
	}
}

// TestBF16KVMatchesReference: with the KV cache in the model's bf16
// (vLLM's "auto"), keys and values are rounded; the step must match the
// float64 reference that rounds them the same way, and the clear greedy
// steps of the golden still agree.
func TestBF16KVMatchesReference(t *testing.T) {
	td := shareddata.Dir(t)
	dir := filepath.Join(td, "models", "llama3-tiny-bf16")
	g := shareddata.ReadModelGolden(t, dir)
	m := load(t, dir, model.LoadOptions{})
	if m.KVDType() != ml.BF16 {
		t.Fatalf("auto KV dtype = %s, want bfloat16", m.KVDType())
	}
	if err := m.AllocateKV(16, 8); err != nil {
		t.Fatal(err)
	}
	ref := loadRef(t, dir)
	ref.kvDType = ml.BF16
	tokens := append([]int32(nil), g.PromptIDs...)
	for _, st := range g.Greedy[:len(g.Greedy)-1] {
		tokens = append(tokens, st.Token)
	}
	want := ref.forward(tokens)

	seq := &seqRun{blocks: []int32{9, 2, 14, 5, 0, 11, 7, 3}}
	rows := seq.step(t, m, g.PromptIDs)
	for i := range g.Greedy {
		if i > 0 {
			rows = append(rows, seq.step(t, m, []int32{g.Greedy[i-1].Token})[0])
		}
	}
	for p := range rows {
		if d, at := maxDiff64(rows[p], want[p]); d > 1e-3 {
			t.Errorf("position %d: logit %d differs from the bf16-KV reference by %.3g", p, at, d)
		}
	}
	for i, st := range g.Greedy {
		if got := argmax(rows[len(g.PromptIDs)-1+i]); got != st.Token && st.Margin > 0.1 {
			t.Errorf("greedy step %d: token %d, want %d (margin %.4f)", i, got, st.Token, st.Margin)
		}
	}
}
