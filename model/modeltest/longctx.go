package modeltest

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/reference"
)

// LongContext is a long-context case: a tiny checkpoint rewritten as a bf16
// model that admits Prompt+Decode positions, random tokens, and the float64
// reference's logits at every position.
type LongContext struct {
	Dir            string // the rewritten checkpoint
	Prompt, Decode int
	Tokens         []int32
	Want           [][]float64
}

// NewLongContext builds the case for the checkpoint models/name of the test
// data directory td (the reference forward takes seconds: build it once).
func NewLongContext(t testing.TB, td, name string, prompt, decode int) *LongContext {
	t.Helper()
	c, ref := newLongContext(t, td, name, prompt, decode)
	c.Want = ref.Forward(c.Tokens)
	return c
}

// NewLongContextUnchecked is NewLongContext without the reference's logits
// (Want stays nil): for contexts where the float64 reference, quadratic in
// the length, would take minutes, and two backends are compared instead.
func NewLongContextUnchecked(t testing.TB, td, name string, prompt, decode int) *LongContext {
	t.Helper()
	c, _ := newLongContext(t, td, name, prompt, decode)
	return c
}

// newLongContext rewrites the checkpoint and draws the tokens.
func newLongContext(t testing.TB, td, name string, prompt, decode int) (*LongContext, *reference.Model) {
	t.Helper()
	dir := t.TempDir()
	if err := reference.Rewrite(filepath.Join(td, "models", name), dir, ml.BF16, 2*(prompt+decode)); err != nil {
		t.Fatal(err)
	}
	ref, err := reference.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	tokens := make([]int32, prompt+decode)
	for i := range tokens {
		tokens[i] = int32(r.IntN(ref.Config.VocabSize))
	}
	return &LongContext{Dir: dir, Prompt: prompt, Decode: decode, Tokens: tokens}, ref
}

// Run allocates m's KV cache for the case (16-token blocks in reverse
// order, so the block table is not the identity), runs the prompt in
// chunks of chunk tokens, then the decode tokens one by one, and returns
// the logprob difference from the reference at every position.
func (c *LongContext) Run(t testing.TB, m model.Model, chunk int) []float64 {
	t.Helper()
	rows := c.Rows(t, m, chunk)
	diffs := make([]float64, len(rows))
	for p := range rows {
		diffs[p] = reference.LogprobDiff(rows[p], c.Want[p])
	}
	return diffs
}

// Rows runs the case on m as Run does and returns its logits at every
// position.
func (c *LongContext) Rows(t testing.TB, m model.Model, chunk int) [][]float32 {
	t.Helper()
	const bs = 16
	blocks := (c.Prompt+c.Decode+bs-1)/bs + 1
	if err := m.AllocateKV(blocks, bs); err != nil {
		t.Fatal(err)
	}
	s := &SeqRun{M: m}
	for i := range blocks {
		s.Blocks = append(s.Blocks, int32(blocks-1-i))
	}
	var rows [][]float32
	for at := 0; at < c.Prompt; at += chunk {
		rows = append(rows, s.Step(t, c.Tokens[at:min(at+chunk, c.Prompt)])...)
	}
	for i := c.Prompt; i < c.Prompt+c.Decode; i++ {
		rows = append(rows, s.Step(t, c.Tokens[i:i+1])...)
	}
	return rows
}
