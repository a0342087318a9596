package llama

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/reference"
)

// TestLongContextMatchesReference runs a 4,096-token prompt through chunked
// prefill (512-token chunks, as --max-num-batched-tokens 512 schedules it)
// and a few decode steps on bf16 checkpoints of a Qwen2 and a llama3-scaled
// Llama config at the default dtype, against the float64 reference: RoPE
// errors grow with the position (a bf16-rounded frequency was off by nats
// at 2-3k tokens), so the short golden prompts cannot catch them.
func TestLongContextMatchesReference(t *testing.T) {
	if testing.Short() {
		t.Skip("long context: -short")
	}
	td := shareddata.Dir(t)
	const prompt, chunk, decode = 4096, 512, 4
	for _, name := range []string{"qwen2-tiny", "llama3-tiny-bf16"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := reference.Rewrite(filepath.Join(td, "models", name), dir, ml.BF16, 8192); err != nil {
				t.Fatal(err)
			}
			ref, err := reference.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			m := load(t, dir, model.LoadOptions{})
			const bs = 16
			blocks := (prompt+decode+bs-1)/bs + 1
			if err := m.AllocateKV(blocks, bs); err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(1, 2))
			tokens := make([]int32, prompt+decode)
			for i := range tokens {
				tokens[i] = int32(r.IntN(m.cfg.VocabSize))
			}
			want := ref.Forward(tokens)
			// Blocks in reverse order, so the table is not the identity.
			seq := &seqRun{}
			for i := range blocks {
				seq.blocks = append(seq.blocks, int32(blocks-1-i))
			}
			var rows [][]float32
			for at := 0; at < prompt; at += chunk {
				rows = append(rows, seq.step(t, m, tokens[at:at+chunk])...)
			}
			for i := prompt; i < prompt+decode; i++ {
				rows = append(rows, seq.step(t, m, tokens[i:i+1])...)
			}
			diffs := make([]float64, len(rows))
			for p := range rows {
				diffs[p] = logprobDiff(rows[p], want[p])
				if diffs[p] > 5e-2 {
					t.Errorf("position %d: logprobs differ from the float64 reference by %.3g > 5e-2", p, diffs[p])
				}
			}
			tail := slices.Max(diffs[prompt-chunk:])
			slices.Sort(diffs)
			t.Logf("max |logprob - reference|: all %.3g, median %.3g, last chunk and decode %.3g",
				diffs[len(diffs)-1], diffs[len(diffs)/2], tail)
			if med := diffs[len(diffs)/2]; med > 2e-3 || math.IsNaN(med) {
				t.Errorf("median position differs by %.3g > 2e-3", med)
			}
		})
	}
}
