// Package modeltest holds the checks every architecture's tests run on
// its tiny checkpoints: the golden logits of transformers (float64) at
// every prompt position and greedy step, batched steps against the same
// sequences run alone, and the float64 reference for what the goldens do
// not cover.
package modeltest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/reference"
)

// Load loads a model directory on a fresh CPU backend (closed by cleanup).
func Load(t testing.TB, path string, o model.LoadOptions) model.Model {
	t.Helper()
	return LoadCPU(t, path, o, cpu.Options{})
}

// LoadCPU is Load on a CPU backend with options co.
func LoadCPU(t testing.TB, path string, o model.LoadOptions, co cpu.Options) model.Model {
	t.Helper()
	return LoadOn(t, path, o, cpu.New(co))
}

// LoadOn loads a model directory on be (both closed by cleanup).
func LoadOn(t testing.TB, path string, o model.LoadOptions, be ml.Backend) model.Model {
	t.Helper()
	o.Backend = be
	m, err := model.Load(path, o)
	if err != nil {
		be.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		be.Close()
	})
	return m
}

// LoadTensorParallel loads a model directory split over n ranks, each on
// its own CPU backend (from newBackend, or a fresh one when it is nil),
// joined by the in-process all-reduce (all closed by cleanup).
func LoadTensorParallel(t testing.TB, path string, n int, o model.LoadOptions, newBackend func() ml.Backend) model.Model {
	t.Helper()
	m, err := loadTensorParallel(t, path, n, o, newBackend)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// LoadTensorParallelErr is LoadTensorParallel returning Load's error.
func LoadTensorParallelErr(t testing.TB, path string, n int, o model.LoadOptions) error {
	t.Helper()
	m, err := loadTensorParallel(t, path, n, o, nil)
	if err == nil {
		m.Close()
	}
	return err
}

func loadTensorParallel(t testing.TB, path string, n int, o model.LoadOptions, newBackend func() ml.Backend) (model.Model, error) {
	tp := &model.TensorParallel{Comms: cpu.NewCollectives(n)}
	for range n {
		var be ml.Backend
		if newBackend != nil {
			be = newBackend()
		} else {
			be = cpu.New(cpu.Options{Threads: max(1, runtime.NumCPU()/n)})
		}
		tp.Backends = append(tp.Backends, be)
	}
	o.TensorParallel = tp
	m, err := model.Load(path, o)
	t.Cleanup(func() {
		if m != nil {
			m.Close()
		}
		for _, be := range tp.Backends {
			be.Close()
		}
	})
	return m, err
}

// SeqRun drives one sequence through Forward over its own blocks.
type SeqRun struct {
	M      model.Model
	Blocks []int32
	N      int // tokens written so far
}

// Step runs tokens as the sequence's next chunk and returns the logits of
// all its positions.
func (s *SeqRun) Step(t testing.TB, tokens []int32) [][]float32 {
	t.Helper()
	b := &model.Batch{Tokens: tokens, Seqs: []model.SeqChunk{{Start: 0, Len: len(tokens), BlockTable: s.Blocks}}}
	for i := range tokens {
		b.Positions = append(b.Positions, int32(s.N+i))
		b.LogitIndices = append(b.LogitIndices, int32(i))
	}
	V := s.M.Config().VocabSize
	out := make([]float32, len(tokens)*V)
	if err := s.M.Forward(t.Context(), b, out); err != nil {
		t.Fatal(err)
	}
	s.N += len(tokens)
	rows := make([][]float32, len(tokens))
	for i := range rows {
		rows[i] = out[i*V : (i+1)*V]
	}
	return rows
}

// Argmax is the index of x's largest value (the lowest on ties).
func Argmax(x []float32) int32 {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return int32(best)
}

// ArgmaxAllowed is the index of x's largest value among the tokens the
// bitset allowed allows (bit t%32 of word t/32; nil: every token), the
// lowest on ties, 0 when none is allowed: what ForwardArgmax returns for a
// masked greedy row.
func ArgmaxAllowed(x []float32, allowed []uint32) int32 {
	best, bestV := 0, float32(math.Inf(-1))
	for i, v := range x {
		if v > bestV && (allowed == nil || allowed[i/32]>>(i%32)&1 != 0) {
			best, bestV = i, v
		}
	}
	return int32(best)
}

// MaxDiff64 is the largest |got-want| and where it is.
func MaxDiff64(got []float32, want []float64) (float64, int) {
	worst, at := 0.0, 0
	for i := range got {
		if d := math.Abs(float64(got[i]) - want[i]); d > worst || d != d {
			worst, at = d, i
		}
	}
	return worst, at
}

// MaxDiff32 is the largest |a-b|.
func MaxDiff32(a, b []float32) float64 {
	worst := 0.0
	for i := range a {
		if d := math.Abs(float64(a[i]) - float64(b[i])); d > worst || d != d {
			worst = d
		}
	}
	return worst
}

// GoldenOptions set how a model is held to a checkpoint's golden.
type GoldenOptions struct {
	// Logprobs compares log-softmax values instead of raw logits.
	Logprobs bool
	// Tol bounds the difference at every prompt position and greedy step.
	Tol float64
	// Margin: a greedy step whose top-two gap exceeds it must pick the
	// golden token.
	Margin float64
	// Blocks is the sequence's KV block table (scattered, say).
	Blocks []int32
}

// CheckGolden runs the golden prompt in one step, then the greedy
// continuation one decode step at a time (teacher-forced with the golden
// tokens), against transformers' float64 logits. m must have its KV cache.
func CheckGolden(t *testing.T, m model.Model, g *shareddata.ModelGolden, o GoldenOptions) {
	t.Helper()
	diff := func(got []float32, want []float64) (float64, string) {
		if o.Logprobs {
			return reference.LogprobDiff(got, want), "logprob"
		}
		d, at := MaxDiff64(got, want)
		return d, fmt.Sprintf("logit %d", at)
	}
	seq := &SeqRun{M: m, Blocks: o.Blocks}
	rows := seq.Step(t, g.PromptIDs)
	worst := 0.0
	for p, want := range g.PromptLogits {
		d, what := diff(rows[p], want)
		worst = math.Max(worst, d)
		if d > o.Tol {
			t.Errorf("prompt position %d: %s differs by %.3g > %.3g", p, what, d, o.Tol)
		}
	}
	last := rows[len(rows)-1]
	for i, st := range g.Greedy {
		if i > 0 {
			last = seq.Step(t, []int32{g.Greedy[i-1].Token})[0]
		}
		d, what := diff(last, st.Logits)
		worst = math.Max(worst, d)
		if d > o.Tol {
			t.Errorf("greedy step %d: %s differs by %.3g > %.3g", i, what, d, o.Tol)
		}
		if got := Argmax(last); got != st.Token {
			if st.Margin > o.Margin {
				t.Errorf("greedy step %d: token %d, want %d (margin %.4f)", i, got, st.Token, st.Margin)
			} else {
				t.Logf("greedy step %d: near-tie (margin %.2g) broken the other way", i, st.Margin)
			}
		}
	}
	t.Logf("%d prompt positions and %d greedy steps: max difference %.3g", len(g.PromptLogits), len(g.Greedy), worst)
}

// BatchedEqualsSingle runs several sequences through mixed steps of
// batched — prefills of different lengths chunked across steps, decodes,
// sequences arriving late, block tables grown from a shuffled free list so
// they are scattered and interleaved — and checks every returned logit row
// against the same sequence run alone in one prefill on single.
func BatchedEqualsSingle(t *testing.T, r *rand.Rand, single, batched model.Model, tol float64) {
	t.Helper()
	const blockSize, numBlocks = 4, 96
	V := single.Config().VocabSize
	type mixedSeq struct {
		tokens  []int32 // prompt then decode tokens
		prompt  int
		arrive  int // step at which it is scheduled first
		done    int // tokens already run
		blocks  []int32
		want    [][]float32 // single-sequence logits per position
		checked int
	}
	prompts := []int{1, 7, 13, 22, 31, 5}
	seqs := make([]*mixedSeq, len(prompts))
	for i, p := range prompts {
		s := &mixedSeq{prompt: p, arrive: r.IntN(4)}
		for range p + 3 + r.IntN(6) {
			s.tokens = append(s.tokens, int32(r.IntN(V)))
		}
		seqs[i] = s
	}
	if err := single.AllocateKV(16, 4); err != nil {
		t.Fatal(err)
	}
	for _, s := range seqs {
		run := &SeqRun{M: single, Blocks: []int32{15, 3, 8, 0, 12, 6, 9, 1, 14, 4, 11}}
		s.want = run.Step(t, s.tokens)
	}
	if err := batched.AllocateKV(numBlocks, blockSize); err != nil {
		t.Fatal(err)
	}
	free := r.Perm(numBlocks)
	const budget = 16
	steps, total, worst := 0, 0, 0.0
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
				if j == n-1 || r.IntN(3) > 0 {
					b.LogitIndices = append(b.LogitIndices, int32(start+j))
				}
			}
			b.Seqs = append(b.Seqs, model.SeqChunk{Start: start, Len: n, BlockTable: slices.Clone(s.blocks)})
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
			var s *mixedSeq
			for k, sc := range b.Seqs {
				if int(li) >= sc.Start && int(li) < sc.Start+sc.Len {
					s = order[k]
				}
			}
			pos := b.Positions[li]
			d := MaxDiff32(logits[i*V:(i+1)*V], s.want[pos])
			if d > tol {
				t.Errorf("step %d: sequence of prompt %d, position %d: logits differ by %.3g", step, s.prompt, pos, d)
			}
			worst = max(worst, d)
			s.checked++
			total++
		}
	}
	for _, s := range seqs {
		if s.checked == 0 {
			t.Errorf("sequence of prompt %d: nothing checked", s.prompt)
		}
	}
	t.Logf("%d steps, %d logit rows checked, max difference %.3g (tolerance %.3g)", steps, total, worst, tol)
}

// Int8Accuracy runs the golden prompt in one step and the teacher-forced
// greedy continuation with --quantization int8 twice, with f32 activations
// (cpu.Options.ExactActivations) and with the backend's default (int8
// activations where the CPU has an int8 dot product), and returns the
// largest |logprob difference| of each from the float64 golden and between
// the two, over every prompt position and greedy step. It fails t when the
// int8 activations more than double the weight-only deviation (plus 0.05):
// the activations' rounding is about as large as the weights', so a bad
// quantizer (a wrong scale, a lost block) shows as far more.
func Int8Accuracy(t *testing.T, dir string, blocks []int32) (exact, quantized, between float64) {
	t.Helper()
	g := shareddata.ReadModelGolden(t, dir)
	run := func(co cpu.Options) [][]float32 {
		m := LoadCPU(t, dir, model.LoadOptions{Quantization: "int8", KVCacheDType: "float32"}, co)
		bs := 4
		for len(blocks)*bs < len(g.PromptIDs)+len(g.Greedy) {
			bs *= 2
		}
		if err := m.AllocateKV(int(slices.Max(blocks))+1, bs); err != nil {
			t.Fatal(err)
		}
		seq := &SeqRun{M: m, Blocks: blocks}
		rows := seq.Step(t, g.PromptIDs)
		for _, st := range g.Greedy[:len(g.Greedy)-1] {
			rows = append(rows, seq.Step(t, []int32{st.Token})[0])
		}
		return rows
	}
	ex, q := run(cpu.Options{ExactActivations: true}), run(cpu.Options{})
	for i := range ex {
		want := g.Greedy[max(0, i-len(g.PromptIDs)+1)].Logits
		if i < len(g.PromptIDs) {
			want = g.PromptLogits[i]
		}
		exact = math.Max(exact, reference.LogprobDiff(ex[i], want))
		quantized = math.Max(quantized, reference.LogprobDiff(q[i], want))
		ex64 := make([]float64, len(ex[i]))
		for j, v := range ex[i] {
			ex64[j] = float64(v)
		}
		between = math.Max(between, reference.LogprobDiff(q[i], ex64))
	}
	if quantized > 2*exact+0.05 {
		t.Errorf("int8 activations deviate by %.3g from the golden, more than twice the %.3g of f32 activations", quantized, exact)
	}
	return exact, quantized, between
}
