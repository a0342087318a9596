package llama

import (
	"fmt"
	"github.com/llmserve/llmserve/internal/shareddata"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
)

// TestBatchedEqualsSingle runs several sequences through mixed steps —
// prefills of different lengths chunked across steps, decodes, sequences
// arriving late, block tables grown from a shuffled free list so they are
// scattered and interleaved — and checks every returned logit row against
// the same sequence run alone in one prefill.
func TestBatchedEqualsSingle(t *testing.T) {
	td := shareddata.Dir(t)
	cases := []struct {
		name string
		opts model.LoadOptions
	}{
		{"qwen2-tiny", model.LoadOptions{}},
		{"llama3-tiny-bf16", model.LoadOptions{}}, // f32 KV (auto on the CPU)
		{"llama3-tiny-bf16", model.LoadOptions{KVCacheDType: "bfloat16"}},
		{"llama3-tiny-bf16", model.LoadOptions{KVCacheDType: "float32", Quantization: "int8"}},
		{"qwen2-tiny", model.LoadOptions{DType: "float16", KVCacheDType: "float16"}},
	}
	for ci, c := range cases {
		t.Run(fmt.Sprintf("%s/%s-%s-kv%s", c.name, c.opts.DType, c.opts.Quantization, c.opts.KVCacheDType), func(t *testing.T) {
			dir := filepath.Join(td, "models", c.name)
			single := load(t, dir, c.opts)
			batched := load(t, dir, c.opts)
			r := rand.New(rand.NewPCG(7, uint64(ci)))
			// Batched and single steps may sum in another order; a 16-bit KV
			// cache can turn that f32 noise into a one-ulp rounding flip of a
			// key or value, which moves a logit by up to ~1e-2 (see
			// TestBF16KVMatchesReference). A wrong slot or block is far off.
			tol := 1e-5
			if single.KVDType() != ml.F32 {
				tol = 2e-2
			}
			runMixed(t, r, single, batched, tol)
		})
	}
}

type mixedSeq struct {
	tokens  []int32 // prompt then decode tokens
	prompt  int
	arrive  int // step at which it is scheduled first
	done    int // tokens already run
	blocks  []int32
	want    [][]float32 // single-sequence logits per position
	checked int
}

func runMixed(t *testing.T, r *rand.Rand, single, batched *Model, tol float64) {
	t.Helper()
	const blockSize, numBlocks = 4, 96
	V := single.cfg.VocabSize
	prompts := []int{1, 7, 13, 22, 31, 5}
	seqs := make([]*mixedSeq, len(prompts))
	for i, p := range prompts {
		s := &mixedSeq{prompt: p, arrive: r.IntN(4)}
		for range p + 3 + r.IntN(6) {
			s.tokens = append(s.tokens, int32(r.IntN(V)))
		}
		seqs[i] = s
	}

	// Single-sequence forward: one prefill of all tokens, alone in the cache.
	if err := single.AllocateKV(16, 4); err != nil {
		t.Fatal(err)
	}
	for _, s := range seqs {
		run := &seqRun{blocks: []int32{15, 3, 8, 0, 12, 6, 9, 1, 14, 4, 11}}
		s.want = run.step(t, single, s.tokens)
	}

	if err := batched.AllocateKV(numBlocks, blockSize); err != nil {
		t.Fatal(err)
	}
	free := r.Perm(numBlocks)
	const budget = 16
	steps := 0
	for step := 0; ; step++ {
		var b model.Batch
		var order []*mixedSeq
		left := budget
		active := false
		for _, s := range seqs {
			if s.done == len(s.tokens) {
				continue
			}
			active = true
			if step < s.arrive || left == 0 {
				continue
			}
			n := 1 // decode
			if s.done < s.prompt {
				n = min(s.prompt-s.done, left, 1+r.IntN(9)) // a prefill chunk
			}
			left -= n
			for (s.done+n+blockSize-1)/blockSize > len(s.blocks) {
				s.blocks = append(s.blocks, int32(free[0]))
				free = free[1:]
			}
			start := len(b.Tokens)
			for j := range n {
				b.Tokens = append(b.Tokens, s.tokens[s.done+j])
				b.Positions = append(b.Positions, int32(s.done+j))
				// Ask for logits of most positions, not all.
				if j == n-1 || r.IntN(3) > 0 {
					b.LogitIndices = append(b.LogitIndices, int32(start+j))
				}
			}
			b.Seqs = append(b.Seqs, model.SeqChunk{Start: start, Len: n, BlockTable: append([]int32(nil), s.blocks...)})
			order = append(order, s)
			s.done += n
		}
		if !active {
			break
		}
		if len(b.Tokens) == 0 {
			continue
		}
		steps++
		logits := make([]float32, len(b.LogitIndices)*V)
		if err := batched.Forward(t.Context(), &b, logits); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		for i, li := range b.LogitIndices {
			// Find the token's sequence and position.
			var s *mixedSeq
			for k, sc := range b.Seqs {
				if int(li) >= sc.Start && int(li) < sc.Start+sc.Len {
					s = order[k]
				}
			}
			pos := b.Positions[li]
			got := logits[i*V : (i+1)*V]
			if d := maxDiff32(got, s.want[pos]); d > tol {
				t.Errorf("step %d: sequence of prompt %d, position %d: logits differ by %.3g", step, s.prompt, pos, d)
			}
			s.checked++
		}
	}
	total := 0
	for _, s := range seqs {
		total += s.checked
		if s.checked == 0 {
			t.Errorf("sequence of prompt %d: nothing checked", s.prompt)
		}
	}
	t.Logf("%d steps, %d logit rows checked", steps, total)
}
