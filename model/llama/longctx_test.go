package llama

import (
	"math"
	"slices"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/modeltest"
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
			c := modeltest.NewLongContext(t, td, name, prompt, decode)
			diffs := c.Run(t, load(t, c.Dir, model.LoadOptions{}), chunk)
			for p, d := range diffs {
				if d > 5e-2 {
					t.Errorf("position %d: logprobs differ from the float64 reference by %.3g > 5e-2", p, d)
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
