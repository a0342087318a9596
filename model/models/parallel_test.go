package models_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/decoder"
	_ "github.com/llmserve/llmserve/model/models"
	"github.com/llmserve/llmserve/model/modeltest"
)

// The tiny checkpoints and the group sizes that split them: llama3-tiny
// has 6 heads (2 only); the others 4 heads and 2 KV heads, so 4 ranks
// replicate each KV head on two ranks. qwen3-moe-tiny splits its experts'
// intermediate size (48) too.
var tpCases = []struct {
	name  string
	sizes []int
}{
	{"qwen2-tiny", []int{1, 2, 4}},
	{"llama3-tiny-bf16", []int{2}},
	{"qwen3-tiny-bf16", []int{2, 4}},
	{"qwen3-moe-tiny", []int{2, 4}},
}

// TestTensorParallelMatchesSingle: split over 1 (the collective code path
// with a group of one), 2 or 4 ranks on the CPU with the in-process
// all-reduce, every prompt position of the golden prompt and every step of
// its greedy continuation (decode steps, teacher-forced) has the logits of
// the unsplit model within 1e-4, and the greedy tokens agree.
func TestTensorParallelMatchesSingle(t *testing.T) {
	td := shareddata.Dir(t)
	for _, c := range tpCases {
		dir := filepath.Join(td, "models", c.name)
		g := shareddata.ReadModelGolden(t, dir)
		for _, n := range c.sizes {
			t.Run(fmt.Sprintf("%s/tp=%d", c.name, n), func(t *testing.T) {
				single := modeltest.Load(t, dir, model.LoadOptions{})
				split := modeltest.LoadTensorParallel(t, dir, n, model.LoadOptions{}, nil)
				if p, ok := split.(model.TensorParalleler); !ok || p.TensorParallelSize() != n {
					t.Fatalf("%T is not split over %d ranks", split, n)
				}
				for _, m := range []model.Model{single, split} {
					if err := m.AllocateKV(16, 4); err != nil {
						t.Fatal(err)
					}
				}
				blocks := []int32{9, 2, 14, 5, 0, 11, 7, 3, 12, 1, 15, 4, 10, 6, 13, 8}
				a := &modeltest.SeqRun{M: single, Blocks: blocks}
				b := &modeltest.SeqRun{M: split, Blocks: blocks}
				want, got := a.Step(t, g.PromptIDs), b.Step(t, g.PromptIDs)
				worst := 0.0
				check := func(what string, got, want []float32) {
					d := modeltest.MaxDiff32(got, want)
					worst = max(worst, d)
					if d > 1e-4 {
						t.Errorf("%s: logits differ by %.3g", what, d)
					}
					if modeltest.Argmax(got) != modeltest.Argmax(want) {
						t.Errorf("%s: greedy token %d, want %d", what, modeltest.Argmax(got), modeltest.Argmax(want))
					}
				}
				for p := range want {
					check(fmt.Sprintf("prompt position %d", p), got[p], want[p])
				}
				for i, st := range g.Greedy {
					tok := []int32{st.Token}
					check(fmt.Sprintf("greedy step %d", i), b.Step(t, tok)[0], a.Step(t, tok)[0])
				}
				t.Logf("%d prompt positions, %d decode steps: max difference %.3g", len(want), len(g.Greedy), worst)
			})
		}
	}
}

// TestTensorParallelBatchedEqualsSingle: mixed batched steps (chunked
// prefills, decodes, late arrivals, scattered block tables) on the split
// model give each sequence's logits as the unsplit model run alone.
func TestTensorParallelBatchedEqualsSingle(t *testing.T) {
	td := shareddata.Dir(t)
	for i, c := range []struct {
		name string
		n    int
	}{{"qwen2-tiny", 4}, {"llama3-tiny-bf16", 2}, {"qwen3-moe-tiny", 2}} {
		t.Run(fmt.Sprintf("%s/tp=%d", c.name, c.n), func(t *testing.T) {
			dir := filepath.Join(td, "models", c.name)
			single := modeltest.Load(t, dir, model.LoadOptions{})
			split := modeltest.LoadTensorParallel(t, dir, c.n, model.LoadOptions{}, nil)
			modeltest.BatchedEqualsSingle(t, rand.New(rand.NewPCG(11, uint64(i))), single, split, 1e-4)
		})
	}
}

// loadCounter is a CPU backend that records the size of every weight it
// is given.
type loadCounter struct {
	*cpu.Backend
	mu     sync.Mutex
	elems  int      // rows*cols over all LoadWeight calls
	bytes  int      // the host bytes handed over
	shapes [][2]int // each call's rows and cols
}

func (c *loadCounter) LoadWeight(rows, cols int, data []byte, src, store ml.DType) (ml.Tensor, error) {
	c.mu.Lock()
	c.elems += rows * cols
	c.bytes += len(data)
	c.shapes = append(c.shapes, [2]int{rows, cols})
	c.mu.Unlock()
	return c.Backend.LoadWeight(rows, cols, data, src, store)
}

// AliasWeight counts a weight used in place like a loaded one (the whole
// model aliases what the mapped checkpoint stores in its dtype).
func (c *loadCounter) AliasWeight(rows, cols int, dt ml.DType, parts ...[]byte) (ml.Tensor, error) {
	c.mu.Lock()
	c.elems += rows * cols
	for _, p := range parts {
		c.bytes += len(p)
	}
	c.shapes = append(c.shapes, [2]int{rows, cols})
	c.mu.Unlock()
	return c.Backend.AliasWeight(rows, cols, dt, parts...)
}

// TestTensorParallelLoadsShards: each rank is handed only its rows and
// columns of the checkpoint's tensors (its heads, KV heads, intermediate
// and vocabulary slices, plus the replicated norms and one zero embedding
// row), never a whole projection, and its KV cache holds its KV heads only
// (one of the two on each of four ranks when they are replicated).
func TestTensorParallelLoadsShards(t *testing.T) {
	td := shareddata.Dir(t)
	for _, c := range []struct {
		name string
		n    int
	}{{"llama3-tiny-bf16", 2}, {"qwen2-tiny", 4}, {"qwen3-moe-tiny", 4}} {
		t.Run(fmt.Sprintf("%s/tp=%d", c.name, c.n), func(t *testing.T) {
			dir := filepath.Join(td, "models", c.name)
			cfg, err := model.ReadConfig(dir)
			if err != nil {
				t.Fatal(err)
			}
			var counters []*loadCounter
			split := modeltest.LoadTensorParallel(t, dir, c.n, model.LoadOptions{}, func() ml.Backend {
				lc := &loadCounter{Backend: cpu.New(cpu.Options{Threads: 1})}
				counters = append(counters, lc)
				return lc
			})
			n, H, hd, L := c.n, cfg.HiddenSize, cfg.HeadDim, cfg.NumHiddenLayers
			nh, nkv, V := cfg.NumAttentionHeads/n, max(1, cfg.NumKeyValueHeads/n), cfg.VocabSize/n
			// What one rank holds, element by element.
			want := (V+1)*H + H // embedding slice and its zero row, final norm
			if !cfg.TieWordEmbeddings {
				want += V * H
			}
			perLayer := 2*H + (nh+2*nkv)*hd*H + H*nh*hd // norms, q, k, v, o
			if cfg.Arch() == "Qwen2ForCausalLM" {
				perLayer += (nh + 2*nkv) * hd // q, k, v biases
			}
			if cfg.Experts() > 0 {
				I := cfg.MoEIntermediateSize / n
				perLayer += 2*hd + cfg.Experts()*H + cfg.Experts()*3*I*H // q/k norms, router, experts
			} else {
				perLayer += 3 * (cfg.IntermediateSize / n) * H
			}
			want += L * perLayer
			whole := &loadCounter{Backend: cpu.New(cpu.Options{Threads: 1})}
			defer whole.Close()
			m, err := model.Load(dir, model.LoadOptions{Backend: whole})
			if err != nil {
				t.Fatal(err)
			}
			m.Close()
			full := whole.elems
			p := split.(*decoder.Parallel)
			for r, lc := range counters {
				if lc.elems != want {
					t.Errorf("rank %d was handed %d weight elements, want %d (the whole model: %d)", r, lc.elems, want, full)
				}
				// The tensors come in the same order as to the unsplit model:
				// each is its n-th share, or a norm or the router, whole.
				if len(lc.shapes) != len(whole.shapes) {
					t.Fatalf("rank %d loaded %d tensors, the whole model %d", r, len(lc.shapes), len(whole.shapes))
				}
				for i, s := range lc.shapes {
					e, f := s[0]*s[1], whole.shapes[i][0]*whole.shapes[i][1]
					share := e*n == f || (i == 0 && e == f/n+H) || // the embedding's slice and zero row
						e*min(n, cfg.NumKeyValueHeads) == f // k and v: replicated KV heads
					replicated := e == f && (s[0] == 1 || (s[0] == cfg.Experts() && s[1] == H))
					if !share && !replicated {
						t.Errorf("rank %d: weight %d is %v, the whole one %v", r, i, s, whole.shapes[i])
					}
				}
				kv := p.Ranks()[r].KVBytesPerToken()
				if w := int64(2 * L * nkv * hd * 4); kv != w {
					t.Errorf("rank %d: %d KV bytes per token, want %d (%d KV heads)", r, kv, w, nkv)
				}
			}
			t.Logf("per rank %d of %d weight elements", want, full)
		})
	}
}

// TestTensorParallelStartupErrors: a group size that does not split the
// model fails at load, before any weight is read, saying which dimension.
func TestTensorParallelStartupErrors(t *testing.T) {
	td := shareddata.Dir(t)
	for _, c := range []struct {
		name string
		n    int
		want string
	}{
		{"llama3-tiny-bf16", 4, "num_attention_heads 6 is not divisible"},
		{"qwen2-tiny", 3, "num_attention_heads 4 is not divisible"},
		{"qwen2-tiny", 8, "num_attention_heads 4"},
	} {
		err := modeltest.LoadTensorParallelErr(t, filepath.Join(td, "models", c.name), c.n, model.LoadOptions{})
		if !errors.Is(err, model.ErrBadConfig) || !strings.Contains(err.Error(), c.want) ||
			!strings.Contains(err.Error(), fmt.Sprintf("--tensor-parallel-size %d", c.n)) {
			t.Errorf("%s over %d ranks: %v, want ErrBadConfig saying %q", c.name, c.n, err, c.want)
		}
	}
	base := model.Config{NumAttentionHeads: 32, NumKeyValueHeads: 8, IntermediateSize: 14336, VocabSize: 128256, NumHiddenLayers: 2}
	for _, c := range []struct {
		edit func(*model.Config)
		n    int
		want string // "" when it splits
	}{
		{func(*model.Config) {}, 8, ""},
		{func(c *model.Config) { c.NumKeyValueHeads = 2 }, 8, ""}, // KV heads replicated on 4 ranks each
		{func(c *model.Config) { c.VocabSize = 151665 }, 8, ""},   // uneven vocabulary slices
		{func(c *model.Config) { c.NumKeyValueHeads = 12; c.NumAttentionHeads = 48 }, 8, "num_key_value_heads 12 is not divisible"},
		{func(c *model.Config) { c.NumKeyValueHeads = 3; c.NumAttentionHeads = 24 }, 8, "num_key_value_heads 3 neither divides"},
		{func(c *model.Config) { c.IntermediateSize = 100 }, 8, "intermediate_size 100"},
		{func(c *model.Config) { c.VocabSize = 4 }, 8, "vocab_size 4 is smaller"},
		{func(*model.Config) {}, 0, "at least 1"},
	} {
		cfg := base
		c.edit(&cfg)
		err := decoder.CheckTensorParallel(&cfg, decoder.Spec{}, c.n)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v over %d: %v", cfg, c.n, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v over %d: %v, want %q", cfg, c.n, err, c.want)
		}
	}
	moe := base
	moe.MoEIntermediateSize, moe.NumExperts, moe.NumExpertsPerTok = 36, 8, 2
	if err := decoder.CheckTensorParallel(&moe, decoder.Spec{MoE: decoder.MoEFromConfig(&moe)}, 8); err == nil ||
		!strings.Contains(err.Error(), "moe_intermediate_size 36") || strings.Contains(err.Error(), "intermediate_size 14336") {
		t.Errorf("MoE: %v", err)
	}
	// A group whose collectives do not match its backends.
	dir := filepath.Join(td, "models", "qwen2-tiny")
	be := cpu.New(cpu.Options{Threads: 1})
	defer be.Close()
	_, err := model.Load(dir, model.LoadOptions{TensorParallel: &model.TensorParallel{
		Backends: []ml.Backend{be, be}, Comms: cpu.NewCollectives(3)[:2]}})
	if !errors.Is(err, model.ErrBadOption) {
		t.Errorf("mismatched collectives: %v", err)
	}
}

// TestTensorParallelBadBatch: a bad batch fails before any rank starts and
// leaves the group usable; closing twice is harmless.
func TestTensorParallelBadBatch(t *testing.T) {
	dir := filepath.Join(shareddata.Dir(t), "models", "qwen2-tiny")
	m := modeltest.LoadTensorParallel(t, dir, 2, model.LoadOptions{}, nil)
	if err := m.AllocateKV(8, 4); err != nil {
		t.Fatal(err)
	}
	V := m.Config().VocabSize
	bad := &model.Batch{Tokens: []int32{int32(V)}, Positions: []int32{0},
		Seqs: []model.SeqChunk{{Start: 0, Len: 1, BlockTable: []int32{0}}}, LogitIndices: []int32{0}}
	if err := m.Forward(t.Context(), bad, make([]float32, V)); !errors.Is(err, model.ErrBadBatch) {
		t.Fatalf("token outside the vocabulary: %v", err)
	}
	bad.Tokens[0] = 3
	run := &modeltest.SeqRun{M: m, Blocks: []int32{1, 2}}
	run.Step(t, []int32{3, 4, 5})
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Forward(t.Context(), bad, make([]float32, V)); err == nil {
		t.Error("Forward after Close")
	}
}

// TestTensorParallelDecodeDoesNotAllocate: a split model's decode step of
// the same shape as the last allocates nothing either (the ranks'
// goroutines are started once; their scratch and host buffers are kept).
func TestTensorParallelDecodeDoesNotAllocate(t *testing.T) {
	dir := filepath.Join(shareddata.Dir(t), "models", "llama3-tiny-bf16")
	m := modeltest.LoadTensorParallel(t, dir, 2, model.LoadOptions{}, nil)
	if err := m.AllocateKV(16, 4); err != nil {
		t.Fatal(err)
	}
	V := m.Config().VocabSize
	logits := make([]float32, 2*V)
	b := &model.Batch{Tokens: []int32{1, 300}, Positions: []int32{0, 0},
		Seqs:         []model.SeqChunk{{Start: 0, Len: 1, BlockTable: []int32{3, 4}}, {Start: 1, Len: 1, BlockTable: []int32{7, 1}}},
		LogitIndices: []int32{0, 1}}
	pos := int32(0)
	step := func() {
		b.Positions[0], b.Positions[1] = pos, pos
		pos = (pos + 1) % 8
		if err := m.Forward(t.Context(), b, logits); err != nil {
			t.Fatal(err)
		}
	}
	step()
	if n := testing.AllocsPerRun(20, step); n != 0 {
		t.Errorf("decode step: %v allocations", n)
	}
}

// TestTensorParallelInt8: with --quantization int8 the split model runs
// (the tied, quantized embedding sliced with its zero row) and is as close
// to the float model as the unsplit int8 model is: row-parallel o and down
// are quantized per row of each rank's columns, so their scales differ
// (and are finer), and the two int8 models differ from each other by
// about as much as each from the float one.
func TestTensorParallelInt8(t *testing.T) {
	dir := filepath.Join(shareddata.Dir(t), "models", "qwen2-tiny")
	o := model.LoadOptions{Quantization: "int8"}
	float := modeltest.Load(t, dir, model.LoadOptions{})
	single := modeltest.Load(t, dir, o)
	split := modeltest.LoadTensorParallel(t, dir, 2, o, nil)
	g := shareddata.ReadModelGolden(t, dir)
	rows := func(m model.Model) [][]float32 {
		if err := m.AllocateKV(16, 4); err != nil {
			t.Fatal(err)
		}
		return (&modeltest.SeqRun{M: m, Blocks: []int32{3, 1, 4, 0, 5, 9, 2, 6}}).Step(t, g.PromptIDs)
	}
	ref, a, b := rows(float), rows(single), rows(split)
	var dSingle, dSplit float64
	for p := range ref {
		dSingle = max(dSingle, modeltest.MaxDiff32(a[p], ref[p]))
		dSplit = max(dSplit, modeltest.MaxDiff32(b[p], ref[p]))
	}
	if dSplit > 1.5*dSingle {
		t.Errorf("int8 split over 2: %.3g from the float model, unsplit int8 %.3g", dSplit, dSingle)
	}
	t.Logf("from the float model: unsplit int8 %.3g, split int8 %.3g", dSingle, dSplit)
}
