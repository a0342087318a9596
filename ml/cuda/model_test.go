package cuda_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/ml/cuda"
	"github.com/llmserve/llmserve/model"
	_ "github.com/llmserve/llmserve/model/models" // registers every architecture
	"github.com/llmserve/llmserve/model/modeltest"
	"github.com/llmserve/llmserve/model/reference"
)

func gpu(t testing.TB, o cuda.Options) *cuda.Backend {
	t.Helper()
	if err := cuda.Available(); err != nil {
		if os.Getenv("LLMSERVE_REQUIRE_GPU") != "" {
			t.Fatalf("LLMSERVE_REQUIRE_GPU set but CUDA unavailable: %v", err)
		}
		t.Skipf("CUDA unavailable: %v", err)
	}
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b, err := cuda.NewBackend(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// seqRun drives one sequence through Forward.
type seqRun struct {
	m      model.Model
	blocks []int32
	n      int
}

func (s *seqRun) step(t testing.TB, tokens []int32) [][]float32 {
	t.Helper()
	b := &model.Batch{Tokens: tokens, Seqs: []model.SeqChunk{{Start: 0, Len: len(tokens), BlockTable: s.blocks}}}
	for i := range tokens {
		b.Positions = append(b.Positions, int32(s.n+i))
		b.LogitIndices = append(b.LogitIndices, int32(i))
	}
	V := s.m.Config().VocabSize
	out := make([]float32, len(tokens)*V)
	if err := s.m.Forward(t.Context(), b, out); err != nil {
		t.Fatal(err)
	}
	s.n += len(tokens)
	rows := make([][]float32, len(tokens))
	for i := range rows {
		rows[i] = out[i*V : (i+1)*V]
	}
	return rows
}

func argmax(x []float32) int32 {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return int32(best)
}

func maxDiff(got []float32, want []float64) float64 {
	worst := 0.0
	for i := range got {
		if d := math.Abs(float64(got[i]) - want[i]); d > worst || d != d {
			worst = d
		}
	}
	return worst
}

func loadOn(t testing.TB, be ml.Backend, dir string, o model.LoadOptions) model.Model {
	t.Helper()
	return loadOnKV(t, be, dir, o, 32, 4)
}

// loadOnKV is loadOn with a KV cache of blocks blocks of blockSize tokens.
func loadOnKV(t testing.TB, be ml.Backend, dir string, o model.LoadOptions, blocks, blockSize int) model.Model {
	t.Helper()
	o.Backend = be
	m, err := model.Load(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.AllocateKV(blocks, blockSize); err != nil {
		t.Fatal(err)
	}
	return m
}

// scattered is a permutation of the 32 blocks (13 is coprime with 32).
var scattered = func() []int32 {
	b := make([]int32, 32)
	for i := range b {
		b[i] = int32((i*13 + 5) % 32)
	}
	return b
}()

// TestModelGolden: whole-model logits on the tiny checkpoints (f32 KV)
// against transformers' float64 golden, prompt positions and a
// teacher-forced greedy continuation. Exact mode (f32 activations, GEMV
// kernels only) must meet the CPU model's 1e-3 on logits. The default
// (tensor-core GEMMs on split bf16 activations) must meet the numerics
// issue's bar for bf16 compute: logprobs within 0.15, the golden token
// wherever the top-two margin exceeds 0.3. RoundActivations (one bf16
// rounding per GEMM input, as vLLM computes) moves these sensitive random
// checkpoints by tenths of a nat, so it is held only to 1.0. The default
// is also run with the served default KV cache, bf16 like vLLM's: rounding
// the keys and values alone moves llama3-tiny by 0.29 (transformers itself
// in bf16 is off by 0.77), so that configuration is held to 0.5; the 0.15
// bar is for the computation, with an f32 cache.
func TestModelGolden(t *testing.T) {
	td := shareddata.Dir(t)
	for _, name := range []string{"qwen2-tiny", "llama3-tiny-bf16"} {
		for _, mode := range []string{"exact", "default", "default-kv-auto", "round", "served"} {
			tol, margin := 1e-3, 2e-3
			diff := maxDiff
			switch mode {
			case "default":
				tol, margin, diff = 0.15, 0.3, reference.LogprobDiff
			case "default-kv-auto":
				tol, margin, diff = 0.5, 1.0, reference.LogprobDiff
			case "round", "served":
				tol, margin, diff = 1.0, 1.0, reference.LogprobDiff
			}
			exact := mode == "exact"
			t.Run(name+"/"+mode, func(t *testing.T) {
				dir := filepath.Join(td, "models", name)
				g := shareddata.ReadModelGolden(t, dir)
				// SkinnyMaxT -1: prefill and decode both take the path under test.
				o := cuda.Options{ExactActivations: exact, RoundActivations: mode == "round" || mode == "served"}
				if !exact {
					o.SkinnyMaxT = -1
				}
				be := gpu(t, o)
				kv := "float32"
				if mode == "default-kv-auto" || mode == "served" {
					// The cache in the model's dtype; served adds rounded
					// GEMM inputs: the server's defaults (--gemm-activations auto).
					kv = "auto"
				}
				m := loadOn(t, be, dir, model.LoadOptions{KVCacheDType: kv})
				s := &seqRun{m: m, blocks: scattered}
				rows := s.step(t, g.PromptIDs)
				worst := 0.0
				for p, want := range g.PromptLogits {
					worst = math.Max(worst, diff(rows[p], want))
				}
				t.Logf("prompt: max |diff| vs golden %.3g (tol %.0e)", worst, tol)
				if worst > tol {
					t.Errorf("prompt differs from golden by %.3g > %.0e", worst, tol)
				}
				last := rows[len(rows)-1]
				worst = 0
				for i, st := range g.Greedy {
					if i > 0 {
						last = s.step(t, []int32{g.Greedy[i-1].Token})[0]
					}
					worst = math.Max(worst, diff(last, st.Logits))
					if got := argmax(last); got != st.Token && st.Margin > margin {
						t.Errorf("greedy step %d: token %d, want %d (margin %.4f)", i, got, st.Token, st.Margin)
					}
				}
				t.Logf("greedy: max |diff| vs golden %.3g", worst)
				if worst > tol {
					t.Errorf("greedy steps differ from golden by %.3g > %.0e", worst, tol)
				}
			})
		}
	}
}

// TestModelMatchesCPU: whole-model logits of both tiny checkpoints (prompt
// and 24 teacher-forced greedy steps) on the GPU against the CPU backend.
func TestModelMatchesCPU(t *testing.T) {
	td := shareddata.Dir(t)
	for _, name := range []string{"qwen2-tiny", "llama3-tiny-bf16"} {
		for _, tc := range []struct {
			o     cuda.Options
			kv, q string // q: --quantization, the same on both backends
		}{{cuda.Options{ExactActivations: true}, "float32", ""}, {cuda.Options{ExactActivations: true}, "auto", ""},
			{cuda.Options{}, "float32", ""}, {cuda.Options{}, "float32", "fp8"}} {
			o := tc.o
			t.Run(fmt.Sprintf("%s/exact=%v/kv=%s/q=%s", name, o.ExactActivations, tc.kv, tc.q), func(t *testing.T) {
				dir := filepath.Join(td, "models", name)
				g := shareddata.ReadModelGolden(t, dir)
				run := func(be ml.Backend) [][]float32 {
					m := loadOn(t, be, dir, model.LoadOptions{KVCacheDType: tc.kv, Quantization: tc.q})
					s := &seqRun{m: m, blocks: scattered}
					rows := s.step(t, g.PromptIDs)
					for i := 1; i < len(g.Greedy); i++ {
						rows = append(rows, s.step(t, []int32{g.Greedy[i-1].Token})...)
					}
					return rows
				}
				cb := cpu.New(cpu.Options{})
				t.Cleanup(func() { cb.Close() })
				want := run(cb)
				got := run(gpu(t, o))
				// The default's tensor-core GEMMs take split activations, so
				// both paths keep f32-grade logits.
				tol := 1e-3
				worst := 0.0
				for i := range want {
					for j := range want[i] {
						worst = math.Max(worst, math.Abs(float64(got[i][j]-want[i][j])))
					}
				}
				t.Logf("%d positions: max |GPU-CPU| logit diff %.3g (tol %.0e)", len(want), worst, tol)
				if worst > tol {
					t.Errorf("logits differ from CPU by %.3g > %.0e", worst, tol)
				}
			})
		}
	}
}

// TestModelGreedyMatchesCPU: free-running greedy decoding of the f32
// checkpoint gives the same tokens on the GPU (default fast path, graphs on)
// as on the CPU backend; logits agree to 1e-3.
func TestModelGreedyMatchesCPU(t *testing.T) {
	td := shareddata.Dir(t)
	dir := filepath.Join(td, "models", "qwen2-tiny")
	g := shareddata.ReadModelGolden(t, dir)
	run := func(be ml.Backend) ([]int32, [][]float32) {
		m := loadOn(t, be, dir, model.LoadOptions{})
		s := &seqRun{m: m, blocks: scattered}
		rows := s.step(t, g.PromptIDs)
		last := rows[len(rows)-1]
		var toks []int32
		var logits [][]float32
		for i := 0; i < 40; i++ {
			tok := argmax(last)
			toks = append(toks, tok)
			logits = append(logits, append([]float32(nil), last...))
			last = s.step(t, []int32{tok})[0]
		}
		return toks, logits
	}
	gb := gpu(t, cuda.Options{GraphMinOps: 8})
	cb := cpu.New(cpu.Options{})
	t.Cleanup(func() { cb.Close() })
	wantT, wantL := run(cb)
	gotT, gotL := run(gb)
	for i := range wantT {
		d := 0.0
		for j := range wantL[i] {
			d = math.Max(d, math.Abs(float64(gotL[i][j]-wantL[i][j])))
		}
		if d > 1e-3 {
			t.Errorf("step %d: logits differ from CPU by %.3g", i, d)
		}
		if gotT[i] != wantT[i] {
			t.Fatalf("step %d: GPU token %d, CPU token %d (GPU %v, CPU %v)", i, gotT[i], wantT[i], gotT, wantT)
		}
	}
	t.Logf("40 greedy tokens equal: %v", gotT)
}

// TestModelForwardArgmax: model.DeviceArgmaxer on the GPU. A prefill with
// mixed greedy flags gives greedy rows Forward's argmax and other rows
// Forward's logits; then free-running greedy decoding through ForwardArgmax
// (only token ids downloaded) gives the CPU backend's tokens.
func TestModelForwardArgmax(t *testing.T) {
	td := shareddata.Dir(t)
	dir := filepath.Join(td, "models", "qwen2-tiny")
	g := shareddata.ReadModelGolden(t, dir)
	gb := gpu(t, cuda.Options{GraphMinOps: 8})
	ref := loadOn(t, gb, dir, model.LoadOptions{})
	m, ok := loadOn(t, gb, dir, model.LoadOptions{}).(model.DeviceArgmaxer)
	if !ok || !m.ArgmaxOnDevice() {
		t.Fatal("the model on the CUDA backend does not reduce greedy rows on the device")
	}
	V := m.Config().VocabSize
	want := (&seqRun{m: ref, blocks: scattered}).step(t, g.PromptIDs)
	P := len(g.PromptIDs)
	b := &model.Batch{Tokens: g.PromptIDs, Seqs: []model.SeqChunk{{Start: 0, Len: P, BlockTable: scattered}}}
	greedy := make([]bool, P)
	for i := range P {
		b.Positions = append(b.Positions, int32(i))
		b.LogitIndices = append(b.LogitIndices, int32(i))
		greedy[i] = i%3 != 1 // runs of both kinds
	}
	ids := make([]int32, P)
	out := make([]float32, P*V)
	if err := m.ForwardArgmax(t.Context(), b, greedy, ids, out); err != nil {
		t.Fatal(err)
	}
	for i := range P {
		if greedy[i] {
			if w := argmax(want[i]); ids[i] != w {
				t.Errorf("row %d: device argmax %d, Forward's %d", i, ids[i], w)
			}
			continue
		}
		if d := maxDiff(out[i*V:(i+1)*V], f64(want[i])); d > 1e-5 {
			t.Errorf("row %d: logits differ from Forward's by %.3g", i, d)
		}
	}
	// Again with allowed-token masks on some greedy rows (a grammar's): the
	// device argmax among the allowed tokens, rows without a mask as before.
	W := (V + 31) / 32
	masks := make([][]uint32, P)
	for i := range P {
		if !greedy[i] || i%2 == 1 {
			continue
		}
		masks[i] = make([]uint32, W)
		for j := i; j < V; j += 7 + i {
			masks[i][j/32] |= 1 << (j % 32)
		}
	}
	b.AllowedTokens = func(row int, words []uint32) bool {
		if masks[row] == nil {
			return false
		}
		copy(words, masks[row])
		return true
	}
	if err := m.ForwardArgmax(t.Context(), b, greedy, ids, out); err != nil {
		t.Fatal(err)
	}
	for i := range P {
		if !greedy[i] {
			continue
		}
		if best := modeltest.ArgmaxAllowed(want[i], masks[i]); ids[i] != best {
			t.Errorf("masked row %d: device argmax %d, want %d", i, ids[i], best)
		}
	}
	// Free-running greedy decode through ForwardArgmax vs the CPU.
	cb := cpu.New(cpu.Options{})
	t.Cleanup(func() { cb.Close() })
	cs := &seqRun{m: loadOn(t, cb, dir, model.LoadOptions{}), blocks: scattered}
	last := cs.step(t, g.PromptIDs)[P-1]
	tok := ids[P-1]
	if !greedy[P-1] {
		tok = argmax(out[(P-1)*V:])
	}
	one := make([]float32, V)
	for step := 0; step < 40; step++ {
		if w := argmax(last); tok != w {
			t.Fatalf("step %d: GPU token %d, CPU token %d", step, tok, w)
		}
		last = cs.step(t, []int32{tok})[0]
		b := &model.Batch{Tokens: []int32{tok}, Positions: []int32{int32(P + step)}, LogitIndices: []int32{0},
			Seqs: []model.SeqChunk{{Start: 0, Len: 1, BlockTable: scattered}}}
		id := []int32{-1}
		if err := m.ForwardArgmax(t.Context(), b, []bool{true}, id, one); err != nil {
			t.Fatal(err)
		}
		tok = id[0]
	}
}

func f64(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

// BenchmarkModelDecode: model.Forward decode steps of Qwen2.5-1.5B (dummy
// bf16 weights) at several batch sizes, context ~100, logits downloaded.
func BenchmarkModelDecode(bm *testing.B) {
	for _, v := range []struct {
		name string
		o    cuda.Options
	}{
		{"step", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-notail", cuda.Options{FusedDecodeMaxT: 4}},
		{"fused", cuda.Options{FusedDecodeMaxT: 4, DisableStepKernel: true}},
		{"unfused", cuda.Options{FusedDecodeMaxT: -1}},
		{"step-stamped", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-1bps", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ks2121", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ks2124", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ks4444", cuda.Options{FusedDecodeMaxT: 4}},
		// One-token steps at long contexts, the attention warps taking
		// one head each and sharing a GQA group's K/V loads (gqa).
		{"step-stamped-gqa", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx2000", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx2000-gqa", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx8000", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx8000-gqa", cuda.Options{FusedDecodeMaxT: 4}},
		// The one-head attention's other pass forms: pipelined loads, and
		// twice the keys a pass.
		{"step-stamped-pipe", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx2000-pipe", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx8000-pipe", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-wide", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx2000-wide", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx8000-wide", cuda.Options{FusedDecodeMaxT: 4}},
		// The lane-per-dims attention where the tensor-core one is the
		// default.
		{"step-stamped-lane", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx2000-lane", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx8000-lane", cuda.Options{FusedDecodeMaxT: 4}},
		{"moe-step-stamped-lane", cuda.Options{FusedDecodeMaxT: 4}},
		{"q8b-step-stamped-lane", cuda.Options{FusedDecodeMaxT: 4}},
		{"q8b-step-stamped-ctx8000", cuda.Options{FusedDecodeMaxT: 4}},
		{"q8b-step-stamped-ctx8000-lane", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx8000-ns64", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx8000-ns128", cuda.Options{FusedDecodeMaxT: 4}},
		{"moe-step", cuda.Options{FusedDecodeMaxT: 4}},
		{"moe-step-stamped", cuda.Options{FusedDecodeMaxT: 4}},
		{"q8b-step-stamped", cuda.Options{FusedDecodeMaxT: 4}},
		{"q8b-step-stamped-fp8", cuda.Options{FusedDecodeMaxT: 4}},
		// With the L2 prefetch of each layer's o and gate/up weights.
		{"step-stamped-pf", cuda.Options{FusedDecodeMaxT: 4}},
		// FP8 weights (--quantization fp8), whose step reads half the bytes,
		// and an FP8 KV cache (--kv-cache-dtype fp8) at long context.
		{"step-stamped-fp8", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-ctx8000-kv8", cuda.Options{FusedDecodeMaxT: 4}},
		{"moe-step-stamped-pf", cuda.Options{FusedDecodeMaxT: 4}},
		// The prefetch issued once the layer's q/k/v are in (the attention
		// phase leaves HBM mostly idle): o and gate/up, or o alone.
		{"step-stamped-pfa", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-pfo", cuda.Options{FusedDecodeMaxT: 4}},
		{"q8b-step-stamped-pfa", cuda.Options{FusedDecodeMaxT: 4}},
		{"q8b-step-stamped-pfo", cuda.Options{FusedDecodeMaxT: 4}},
		{"moe-step-stamped-pfo", cuda.Options{FusedDecodeMaxT: 4}},
		{"step-stamped-fp8-pfo", cuda.Options{FusedDecodeMaxT: 4}},
	} {
		bm.Run(v.name, func(bm *testing.B) {
			benchDecode(bm, v.o, strings.Contains(v.name, "step-stamped"), strings.HasSuffix(v.name, "1bps"), v.name)
		})
	}
	for _, mode := range []int{0, 1, 2, 3, 4} {
		for _, stamped := range []bool{false, true} {
			name := fmt.Sprintf("sync-%d", mode)
			if stamped {
				name = fmt.Sprintf("syncs-%d", mode)
			}
			bm.Run(name, func(bm *testing.B) { benchDecode(bm, cuda.Options{FusedDecodeMaxT: 4}, stamped, false, name) })
		}
	}
	for _, ns := range []int{1, 2, 4, 8, 16, 32} {
		name := fmt.Sprintf("ns%d", ns)
		bm.Run(name, func(bm *testing.B) { benchDecode(bm, cuda.Options{FusedDecodeMaxT: 4}, true, false, name) })
	}
}

// benchDecode times greedy decode steps (token ids downloaded, as the
// engine runs them) of Qwen2.5-1.5B with dummy weights at 100 tokens of
// context. The name's dash-separated parts choose: "moe-" Qwen3-30B-A3B's
// layers (12 of its 48), "q8b-" Qwen3-8B's (12 of its 36); "ctxN" N tokens
// of context, at the batch sizes the cache holds; "gqa" attention warps
// sharing a GQA group's K/V loads; "pipe" and "wide" the one-head
// attention's pipelined and wide passes, "lane" its passes as they are
// (the tensor-core attention is the default where it applies); "nsN" N
// attention pieces per head (per KV head in the tensor-core form); "pf" the step's L2 prefetch of the o and gate/up weights at a layer's start, "pfa" at its attention's, "pfo" of the o weights alone there; "fp8"
// FP8 weights; "kv8" an FP8 KV cache. With stamped, one-token steps also
// report the decode-step kernel's mean SM kilocycles per layer in each
// phase (a sparse MLP's router, top-k, experts' gate/up, and experts' down
// with the weighted sum, in place of gate/up and down).
func benchDecode(bm *testing.B, o cuda.Options, stamped, oneBlockPerSM bool, name string) {
	be := gpu(bm, o)
	parts := strings.Split(name, "-")
	pf := ""
	for _, m := range []string{"pf", "pfa", "pfo"} {
		if slices.Contains(parts, m) {
			pf = m
		}
	}
	cuda.SetStepPrefetch(be, pf)
	if i := strings.Index(name, "-ks"); i >= 0 {
		k := name[i+3:]
		cuda.SetStepKS(be, int(k[0]-'0'), int(k[1]-'0'), int(k[2]-'0'), int(k[3]-'0'))
	}
	if strings.HasSuffix(name, "-notail") {
		cuda.SetStepTailPDL(be, false)
	}
	if strings.HasPrefix(name, "sync") {
		cuda.SetStepSyncMode(be, int(name[len(name)-1]-'0'))
	}
	// number is the integer after prefix in one of name's dash-separated
	// parts ("ctx8000"), or def.
	number := func(prefix string, def int) int {
		for _, p := range parts {
			if v, ok := strings.CutPrefix(p, prefix); ok && v != "" {
				n, err := strconv.Atoi(v)
				if err != nil {
					bm.Fatalf("benchmark %s: %v", name, err)
				}
				return n
			}
		}
		return def
	}
	if ns := number("ns", 0); ns > 0 {
		cuda.SetStepSplits(be, ns)
	}
	cuda.SetStepGroupHeads(be, slices.Contains(parts, "gqa"))
	switch {
	case slices.Contains(parts, "pipe"):
		cuda.SetStepAttnForm(be, cuda.StepAttnPipe)
	case slices.Contains(parts, "wide"):
		cuda.SetStepAttnForm(be, cuda.StepAttnWide)
	case slices.Contains(parts, "lane"):
		cuda.SetStepAttnForm(be, cuda.StepAttnPasses)
	}
	ctx := number("ctx", 100)
	if stamped {
		cuda.StampSteps(be)
	}
	if oneBlockPerSM {
		cuda.SetStepGridPerSM(be, 1)
	}
	path, phases := "Qwen/Qwen2.5-1.5B", []string{"qkv", "sync", "attn", "o", "gateup", "down"}
	// Larger models' layers, 12 of them: Qwen3-30B-A3B's sparse MLPs and
	// Qwen3-8B's dense ones.
	larger := map[string]string{"moe-": "Qwen/Qwen3-30B-A3B", "q8b-": "Qwen/Qwen3-8B"}
	if m, ok := larger[name[:min(4, len(name))]]; ok {
		var cfg *model.Config
		path, cfg = builtinVariant(bm, m, func(c *model.Config) { c.NumHiddenLayers = 12 })
		if cfg.NumExperts > 0 {
			phases = append(phases[:4], "router", "topk", "expgateup", "expdown")
		}
	}
	lo := model.LoadOptions{Backend: be, LoadFormat: "dummy", DType: "bfloat16"}
	if slices.Contains(parts, "fp8") {
		lo.Quantization = "fp8"
	}
	if slices.Contains(parts, "kv8") {
		lo.KVCacheDType = "fp8"
	}
	lm, err := model.Load(path, lo)
	if err != nil {
		bm.Fatal(err)
	}
	defer lm.Close()
	m := lm.(model.DeviceArgmaxer)
	const bs, kvBlocks = 16, 256*8 + 8
	if err := lm.AllocateKV(kvBlocks, bs); err != nil {
		bm.Fatal(err)
	}
	nb := ctx/bs + 1 // blocks a sequence holds: its context and the new token
	for _, T := range []int{1, 2, 4, 32} {
		if T*nb > kvBlocks {
			continue
		}
		bm.Run(fmt.Sprintf("T=%d", T), func(bm *testing.B) {
			b := &model.Batch{}
			for i := 0; i < T; i++ {
				bt := make([]int32, nb)
				for j := range bt {
					bt[j] = int32(i*nb + j)
				}
				b.Tokens = append(b.Tokens, int32(i+7))
				b.Positions = append(b.Positions, int32(ctx))
				b.Seqs = append(b.Seqs, model.SeqChunk{Start: i, Len: 1, BlockTable: bt})
				b.LogitIndices = append(b.LogitIndices, int32(i))
			}
			sec := timeGreedySteps(bm, m, b, lm.Config().VocabSize)
			bm.ReportMetric(sec*1e3, "ms/step")
			bm.ReportMetric(float64(T)/sec, "tok/s")
			if stamped && T == 1 {
				cyc, err := cuda.StepPhaseCycles(be, len(phases))
				if err != nil {
					bm.Fatal(err)
				}
				for i, name := range phases {
					bm.ReportMetric(cyc[i]/1e3, name+"-kcyc")
				}
			}
		})
	}
}

// TestModelFusedDecodeMatchesUnfused: the bf16 checkpoint's prompt and 24
// teacher-forced decode steps with the fused decode ops (layer by layer:
// no decode-step kernel) and without them (decode MatMuls on f32
// activations, as the fused norms keep them) give the same logits up to
// f32 rounding (every fused op keeps f32 activations) and the same greedy
// tokens where the golden's margin is clear. With an FP8 cache the fused
// q/k/v epilogue writes the E4M3 codes: a key that f32 rounding moves
// across a rounding boundary takes the next code, so the bar is the
// decode-step test's.
func TestModelFusedDecodeMatchesUnfused(t *testing.T) {
	td := shareddata.Dir(t)
	dir := filepath.Join(td, "models", "llama3-tiny-bf16")
	g := shareddata.ReadModelGolden(t, dir)
	for _, c := range []struct {
		kv  string
		bar float64
	}{{"float32", 1e-3}, {"fp8", 0.05}} {
		t.Run("kv="+c.kv, func(t *testing.T) {
			run := func(o cuda.Options) [][]float32 {
				m := loadOn(t, gpu(t, o), dir, model.LoadOptions{KVCacheDType: c.kv})
				s := &seqRun{m: m, blocks: scattered}
				rows := s.step(t, g.PromptIDs)
				for i := 1; i < len(g.Greedy); i++ {
					rows = append(rows, s.step(t, []int32{g.Greedy[i-1].Token})...)
				}
				return rows
			}
			want := run(cuda.Options{FusedDecodeMaxT: -1, SkinnyMaxT: 1, GraphMinOps: 8})
			got := run(cuda.Options{FusedDecodeMaxT: 1, GraphMinOps: 8, DisableStepKernel: true})
			worst := 0.0
			for i := range want {
				for j := range want[i] {
					worst = math.Max(worst, math.Abs(float64(got[i][j]-want[i][j])))
				}
			}
			t.Logf("%d positions: max |fused-unfused| logit diff %.3g", len(want), worst)
			if !(worst <= c.bar) {
				t.Errorf("fused decode logits differ from the unfused ops by %.3g > %g", worst, c.bar)
			}
			np := len(g.PromptIDs)
			for i, st := range g.Greedy[:len(g.Greedy)-1] {
				if st.Margin > 0.3 && argmax(got[np-1+i]) != argmax(want[np-1+i]) {
					t.Errorf("step %d: fused token %d, unfused %d", i, argmax(got[np-1+i]), argmax(want[np-1+i]))
				}
			}
		})
	}
}

// TestModelStepKernelSyncModes: every grid-barrier variant of the
// decode-step kernel gives the default's logits bit for bit (the barrier
// orders work; it must not change any of it).
func TestModelStepKernelSyncModes(t *testing.T) {
	dir := filepath.Join(shareddata.Dir(t), "models", "llama3-tiny-bf16")
	g := shareddata.ReadModelGolden(t, dir)
	run := func(mode int) [][]float32 {
		be := gpu(t, cuda.Options{FusedDecodeMaxT: 1, GraphMinOps: 8})
		cuda.SetStepSyncMode(be, mode)
		m := loadOn(t, be, dir, model.LoadOptions{KVCacheDType: "bfloat16"})
		s := &seqRun{m: m, blocks: scattered}
		rows := s.step(t, g.PromptIDs[:4])
		for i := 0; i < 40; i++ {
			rows = append(rows, s.step(t, []int32{int32(i*31+7) % int32(m.Config().VocabSize)})...)
		}
		if n := cuda.StepLaunches(be); n != 40 {
			t.Fatalf("sync mode %d: decode-step kernel ran %d times for 40 steps", mode, n)
		}
		return rows
	}
	want := run(0)
	for mode := 1; mode <= 4; mode++ {
		got := run(mode)
		for i := range want {
			for j := range want[i] {
				if got[i][j] != want[i][j] {
					t.Fatalf("sync mode %d, position %d, logit %d: %g, mode 0 %g", mode, i, j, got[i][j], want[i][j])
				}
			}
		}
	}
}

// TestModelStepKernelRefusedFallsBack: when the device refuses the
// cooperative decode-step launch (here a grid one block larger than can be
// resident, as a GPU shared with other work or capped by MPS does), the
// step runs again layer by layer and so do all later steps: the logits are
// those of a backend with the step kernel off, and no step fails.
func TestModelStepKernelRefusedFallsBack(t *testing.T) {
	dir := filepath.Join(shareddata.Dir(t), "models", "llama3-tiny-bf16")
	g := shareddata.ReadModelGolden(t, dir)
	run := func(o cuda.Options, oversize bool) ([][]float32, *cuda.Backend) {
		be := gpu(t, o)
		if oversize {
			cuda.SetStepGridOversize(be, 1)
		}
		m := loadOn(t, be, dir, model.LoadOptions{KVCacheDType: "bfloat16"})
		s := &seqRun{m: m, blocks: scattered}
		rows := s.step(t, g.PromptIDs[:4])
		for i := 0; i < 12; i++ {
			rows = append(rows, s.step(t, []int32{int32(i*31+7) % int32(m.Config().VocabSize)})...)
		}
		return rows, be
	}
	want, _ := run(cuda.Options{FusedDecodeMaxT: 1, GraphMinOps: 8, DisableStepKernel: true}, false)
	got, be := run(cuda.Options{FusedDecodeMaxT: 1, GraphMinOps: 8}, true)
	if !cuda.StepRefused(be) {
		t.Fatal("an oversized cooperative launch was not refused")
	}
	if n := cuda.StepLaunches(be); n != 1 {
		t.Errorf("decode-step kernel recorded %d times, want 1 (the refused launch; later steps decline)", n)
	}
	for i := range want {
		for j := range want[i] {
			if got[i][j] != want[i][j] {
				t.Fatalf("position %d, logit %d: %g, with the step kernel off %g", i, j, got[i][j], want[i][j])
			}
		}
	}
}

// TestModelStepKernelMatchesLayerByLayer: each checkpoint in bf16 (bf16 KV
// cache, and FP8 for the dense ones; the MoE one's sparse MLPs included)
// decoding 110 teacher-forced tokens after 4 prompt tokens, so attention's
// piece count grows from 1 to 15, in one decode-step launch per token and
// with the unfused ops on f32 activations: close logits at every position,
// and the decode-step kernel really ran every decode step.
func TestModelStepKernelMatchesLayerByLayer(t *testing.T) {
	td := shareddata.Dir(t)
	// qwen3 adds per-head q/k norms, qwen3-moe (loaded in bf16) sparse MLPs;
	// an FP8 cache is written by the q/k/v GEMV's epilogue (llama3) and by
	// the q/k norm phase (qwen3).
	for _, c := range []struct{ name, kv string }{
		{"llama3-tiny-bf16", "bfloat16"}, {"qwen3-tiny-bf16", "bfloat16"}, {"qwen3-moe-tiny", "bfloat16"},
		{"llama3-tiny-bf16", "fp8"}, {"qwen3-tiny-bf16", "fp8"},
	} {
		name := c.name
		t.Run(name+"/kv="+c.kv, func(t *testing.T) {
			dir := filepath.Join(td, "models", name)
			g := shareddata.ReadModelGolden(t, dir)
			const steps = 110
			run := func(o cuda.Options) ([][]float32, int) {
				be := gpu(t, o)
				m := loadOn(t, be, dir, model.LoadOptions{DType: "bfloat16", KVCacheDType: c.kv})
				s := &seqRun{m: m, blocks: scattered}
				rows := s.step(t, g.PromptIDs[:4])
				V := int32(m.Config().VocabSize)
				for i := 0; i < steps; i++ {
					rows = append(rows, s.step(t, []int32{(int32(i)*7919 + 13) % V})...)
				}
				return rows, cuda.StepLaunches(be)
			}
			want, _ := run(cuda.Options{FusedDecodeMaxT: -1, SkinnyMaxT: 1, GraphMinOps: 8})
			got, launches := run(cuda.Options{FusedDecodeMaxT: 1, GraphMinOps: 8})
			if launches != steps {
				t.Fatalf("decode-step kernel ran %d times for %d one-token steps", launches, steps)
			}
			worst, at := 0.0, 0
			for i := range want {
				for j := range want[i] {
					if d := math.Abs(float64(got[i][j] - want[i][j])); d > worst || d != d {
						worst, at = d, i
					}
				}
			}
			t.Logf("%d positions: max |step kernel - unfused| logit diff %.3g (position %d)", len(want), worst, at)
			if worst > 0.05 {
				t.Errorf("decode-step kernel logits differ from the unfused ops by %.3g > 0.05 at position %d", worst, at)
			}
		})
	}
}

// TestStepAttentionPieces: the decode-step kernel's attention with its
// context forced into 1, 3, 16 and 40 pieces per head (16: one full merge
// group; 40: three groups, the last of them empty), and the tensor-core
// form's into 1, 3 and 40 pieces per KV head (40: half of them empty,
// merged by their own phase), over a cache of
// one-token blocks in scattered order, so that a piece spans more blocks
// than the 32 whose table entries a warp holds at once: llama3-tiny-bf16
// decoding 150 tokens after 4 prompt tokens gives the unfused ops' logits
// at every position.
func TestStepAttentionPieces(t *testing.T) {
	td := shareddata.Dir(t)
	dir := filepath.Join(td, "models", "llama3-tiny-bf16")
	g := shareddata.ReadModelGolden(t, dir)
	const blocks, steps = 200, 150
	table := make([]int32, blocks)
	for i := range table {
		table[i] = int32((i*77 + 3) % blocks) // 77 is coprime with 200
	}
	run := func(o cuda.Options, pieces int, groupHeads bool, form int) ([][]float32, int) {
		be := gpu(t, o)
		if pieces > 0 {
			cuda.SetStepSplits(be, pieces)
		}
		cuda.SetStepGroupHeads(be, groupHeads)
		cuda.SetStepAttnForm(be, form)
		m := loadOnKV(t, be, dir, model.LoadOptions{DType: "bfloat16", KVCacheDType: "bfloat16"}, blocks, 1)
		s := &seqRun{m: m, blocks: table}
		rows := s.step(t, g.PromptIDs[:4])
		V := int32(m.Config().VocabSize)
		for i := range steps {
			rows = append(rows, s.step(t, []int32{(int32(i)*7919 + 13) % V})...)
		}
		return rows, cuda.StepLaunches(be)
	}
	want, _ := run(cuda.Options{FusedDecodeMaxT: -1, SkinnyMaxT: 1, GraphMinOps: 8}, 0, false, cuda.StepAttnPasses)
	for _, c := range []struct {
		pieces     int
		groupHeads bool // the attention warps share the GQA group's K/V loads
		form       int  // how one-head warps run their passes
	}{
		{1, false, cuda.StepAttnPasses}, {3, false, cuda.StepAttnPasses}, {16, false, cuda.StepAttnPasses},
		{40, false, cuda.StepAttnPasses}, {3, true, cuda.StepAttnPasses}, {40, true, cuda.StepAttnPasses},
		{1, false, cuda.StepAttnPipe}, {3, false, cuda.StepAttnPipe}, {40, false, cuda.StepAttnPipe},
		{3, false, cuda.StepAttnWide}, {40, false, cuda.StepAttnWide},
		{1, false, cuda.StepAttnTC}, {3, false, cuda.StepAttnTC}, {40, false, cuda.StepAttnTC},
	} {
		got, launches := run(cuda.Options{FusedDecodeMaxT: 1, GraphMinOps: 8}, c.pieces, c.groupHeads, c.form)
		name := fmt.Sprintf("%d pieces (group heads %v, form %d)", c.pieces, c.groupHeads, c.form)
		if launches != steps {
			t.Fatalf("%s: decode-step kernel ran %d times for %d one-token steps", name, launches, steps)
		}
		worst, at := 0.0, 0
		for i := range want {
			for j := range want[i] {
				if d := math.Abs(float64(got[i][j] - want[i][j])); d > worst || d != d {
					worst, at = d, i
				}
			}
		}
		t.Logf("%s: max |step kernel - unfused| logit diff %.3g (position %d)", name, worst, at)
		if worst > 0.05 {
			t.Errorf("%s: decode-step kernel logits differ from the unfused ops by %.3g > 0.05 at position %d", name, worst, at)
		}
	}
}

// TestModelStepKernelAtScale: Qwen2.5-1.5B's shapes (dummy bf16 weights),
// where the decode-step phases split K over 2 and 8 warps (the tiny
// checkpoints' shapes split none): 40 decode steps in the one-launch kernel
// and layer by layer with the same fused GEMVs. The layer-by-layer o and
// down projections read bf16 copies of their inputs, so the logits agree
// to bf16 rounding, not exactly; a wrong split or row pairing would be off
// by the logits' own size. With -short (the CUDA emulator, where a step of
// these shapes is slow) it runs the default form, the tensor-core
// attention, for 4 steps of each model. The sparse
// case takes Qwen3-30B-A3B's layer shapes (hidden 2048, experts'
// intermediate 768, top 8) with 16 experts, 2 layers and a smaller
// vocabulary: the decode step's experts' phases at the shapes they are
// tuned for, where the tiny MoE checkpoint's take one task an expert.
func TestModelStepKernelAtScale(t *testing.T) {
	steps := 40
	moe, _ := builtinVariant(t, "Qwen/Qwen3-30B-A3B", func(c *model.Config) {
		c.NumHiddenLayers, c.NumExperts, c.VocabSize = 2, 16, 4096
	})
	const dense = "Qwen/Qwen2.5-1.5B"
	cases := []struct {
		model        string
		form, pieces int
	}{
		{moe, cuda.StepAttnTC, 0}, {dense, cuda.StepAttnTC, 0},
		{dense, cuda.StepAttnTC, 3}, {moe, cuda.StepAttnPasses, 0},
		{dense, cuda.StepAttnPasses, 0}, {dense, cuda.StepAttnPasses, 1},
		{dense, cuda.StepAttnPipe, 1}, {dense, cuda.StepAttnPipe, 3},
		{dense, cuda.StepAttnWide, 1},
	}
	if testing.Short() {
		steps, cases = 4, cases[:2]
	}
	run := func(path string, o cuda.Options, form, pieces int) ([][]float32, int) {
		prompt := func(vocab int32) []int32 { return []int32{9, 99, 999, 9999 % vocab} }
		return decodeDummy(t, path, o, form, pieces, prompt, 0, steps)
	}
	want := map[string][][]float32{}
	// Each attention form, with the default pieces and with one piece a
	// head (up to 44 keys: several passes, at head dim 128).
	for _, c := range cases {
		if want[c.model] == nil {
			want[c.model], _ = run(c.model, cuda.Options{FusedDecodeMaxT: 4, DisableStepKernel: true}, cuda.StepAttnPasses, 0)
		}
		name := fmt.Sprintf("%s, form %d, %d pieces", c.model, c.form, c.pieces)
		if c.model == moe {
			name = fmt.Sprintf("Qwen3-30B-A3B's shapes, form %d, %d pieces", c.form, c.pieces)
		}
		got, launches := run(c.model, cuda.Options{FusedDecodeMaxT: 4}, c.form, c.pieces)
		checkStepLogits(t, name, got, want[c.model], launches, steps)
	}
}

// decodeDummy loads the checkpoint config at dir with dummy bf16 weights
// on a backend of options o, attention form form and pieces pieces a head
// (0: the default), feeds the prompt (of the model's vocabulary) in one
// step and then steps one-token steps, and returns the logits from the
// prompt's row fromRow on and the decode-step kernel's launches.
func decodeDummy(t *testing.T, dir string, o cuda.Options, form, pieces int, prompt func(vocab int32) []int32,
	fromRow, steps int) ([][]float32, int) {
	t.Helper()
	be := gpu(t, o)
	cuda.SetStepAttnForm(be, form)
	if pieces > 0 {
		cuda.SetStepSplits(be, pieces)
	}
	m, err := model.Load(dir, model.LoadOptions{Backend: be, LoadFormat: "dummy", DType: "bfloat16"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.AllocateKV(32, 4); err != nil {
		t.Fatal(err)
	}
	s := &seqRun{m: m, blocks: scattered}
	vocab := int32(m.Config().VocabSize)
	rows := s.step(t, prompt(vocab))[fromRow:]
	for i := 0; i < steps; i++ {
		rows = append(rows, s.step(t, []int32{int32(i*7919+13) % vocab})...)
	}
	return rows, cuda.StepLaunches(be)
}

// checkStepLogits: the decode-step kernel ran each of steps one-token
// steps, and its logits got agree with the layer-by-layer path's want to
// that path's bf16 rounding (5% of the largest logit; see
// TestModelStepKernelAtScale).
func checkStepLogits(t *testing.T, name string, got, want [][]float32, launches, steps int) {
	t.Helper()
	if launches != steps {
		t.Fatalf("%s: decode-step kernel ran %d times for %d one-token steps", name, launches, steps)
	}
	worst, scale := 0.0, 0.0
	for i, row := range want {
		for j := range row {
			scale = max(scale, math.Abs(float64(row[j])))
			if d := math.Abs(float64(got[i][j] - row[j])); d > worst || d != d {
				worst = d
			}
		}
	}
	t.Logf("%s: max |step kernel - layer by layer| logit diff %.3g (largest logit %.3g)", name, worst, scale)
	if !(worst <= 0.05*scale) || scale == 0 {
		t.Errorf("%s: decode-step and layer-by-layer logits differ by %.3g (largest logit %.3g)", name, worst, scale)
	}
}

// TestStepAttentionShapes: the decode step's tensor-core attention at the
// head dims and GQA groups it takes (head dims 32, 64 and 128; groups of
// 1, 2, 5, 8 and 12 query heads, 12 being two sets of a warp's 8 and 4),
// with its default pieces and forced to 3 and 7 a KV head, after a
// 37-token prompt in blocks of 4 in scattered order: 2-layer models of
// dummy bf16 weights decode 8 tokens in the one-launch kernel and layer by
// layer, and the logits agree to the layer-by-layer path's bf16 rounding
// (see TestModelStepKernelAtScale).
func TestStepAttentionShapes(t *testing.T) {
	const steps = 8
	for _, c := range []struct {
		base                string
		hidden, nh, nkv, hd int
	}{
		{"Qwen/Qwen2.5-1.5B", 256, 4, 4, 64},
		{"Qwen/Qwen3-8B", 384, 6, 3, 32},
		{"Qwen/Qwen2.5-1.5B", 640, 10, 2, 64},
		{"Qwen/Qwen3-8B", 1024, 8, 1, 128},
		{"Qwen/Qwen2.5-1.5B", 1536, 12, 1, 128},
	} {
		dir, _ := builtinVariant(t, c.base, func(cfg *model.Config) {
			cfg.NumHiddenLayers, cfg.VocabSize, cfg.IntermediateSize = 2, 2048, 512
			cfg.HiddenSize, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim = c.hidden, c.nh, c.nkv, c.hd
		})
		run := func(o cuda.Options, form, pieces int) ([][]float32, int) {
			prompt := func(vocab int32) []int32 {
				p := make([]int32, 37)
				for i := range p {
					p[i] = int32(i*131+7) % vocab
				}
				return p
			}
			return decodeDummy(t, dir, o, form, pieces, prompt, 36, steps)
		}
		want, _ := run(cuda.Options{FusedDecodeMaxT: 4, DisableStepKernel: true}, cuda.StepAttnPasses, 0)
		for _, pieces := range []int{0, 3, 7} {
			name := fmt.Sprintf("%s's layers, %d heads, %d KV heads, head dim %d, %d pieces", c.base, c.nh, c.nkv, c.hd, pieces)
			got, launches := run(cuda.Options{FusedDecodeMaxT: 4}, cuda.StepAttnTC, pieces)
			checkStepLogits(t, name, got, want, launches, steps)
		}
	}
}

// TestStepAttentionTCAccuracy: the tensor-core attention of the decode
// step against the f32 one (a lane per head's dims) on the real tiny
// checkpoint whose logits move most with attention's rounding: 60
// one-token steps, every one in the decode-step kernel. The typical
// position agrees to f32 accuracy and the worst one to a few bf16 cache
// roundings that went the other way. With q in two bf16 parts (16 bits)
// the median position missed its bound by 3 times and the worst by 3.
func TestStepAttentionTCAccuracy(t *testing.T) {
	td := shareddata.Dir(t)
	const steps = 60
	dir := filepath.Join(td, "models", "llama3-tiny-bf16")
	g := shareddata.ReadModelGolden(t, dir)
	run := func(form int) [][]float32 {
		be := gpu(t, cuda.Options{})
		cuda.SetStepAttnForm(be, form)
		m := loadOn(t, be, dir, model.LoadOptions{})
		s := &seqRun{m: m, blocks: scattered}
		V := int32(m.Config().VocabSize)
		rows := s.step(t, g.PromptIDs)
		for i := 0; i < steps; i++ {
			rows = append(rows, s.step(t, []int32{(int32(i)*7919 + 13) % V})...)
		}
		if n := cuda.StepLaunches(be); n != steps {
			t.Fatalf("decode-step kernel ran %d times for %d one-token steps", n, steps)
		}
		return rows
	}
	lane, tc := run(cuda.StepAttnPasses), run(cuda.StepAttnTC)
	per := make([]float64, len(lane)) // each position's largest logit difference
	for i := range lane {
		for j := range lane[i] {
			if d := math.Abs(float64(tc[i][j] - lane[i][j])); d > per[i] || d != d {
				per[i] = d
			}
		}
	}
	slices.Sort(per)
	median, worst := per[len(per)/2], per[len(per)-1]
	t.Logf("%d positions: |tensor cores - f32| logit diff median %.3g, max %.3g", len(per), median, worst)
	if !(median <= 3e-5) || !(worst <= 5e-4) {
		t.Errorf("tensor-core attention's logits differ from the f32 form's by %.3g at the median position, %.3g at most",
			median, worst)
	}
}

// builtinVariant writes built-in config name, as edit changes it, to a
// temporary directory for model.Load (dummy weights) and returns the
// directory and the config.
func builtinVariant(tb testing.TB, name string, edit func(*model.Config)) (string, *model.Config) {
	cfg, ok := model.BuiltinConfig(name)
	if !ok {
		tb.Fatalf("no built-in %s config", name)
	}
	edit(cfg) // BuiltinConfig returns a copy
	js, err := json.Marshal(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), js, 0o644); err != nil {
		tb.Fatal(err)
	}
	return dir, cfg
}

// TestLazyKernels: with LazyKernels and an empty kernel cache, only the
// units the model asks for compile (its head dim's decode-step kernel for
// a bf16 cache, the FP8 kernels only for FP8 weights or an FP8 cache);
// decode steps run (on the fused GEMVs) while the decode-step kernel
// compiles, and once it is there the steps take the one-launch kernel.
// The logits match a backend that has every kernel and takes the same
// path each step (fused GEMVs until the lazy one's decode-step kernel
// runs, that kernel after): which step that is depends on the compile,
// and the two paths' logits on these checkpoints differ by more than
// this bound where a bf16 KV-cache rounding goes the other way (see
// TestModelStepKernelMatchesLayerByLayer), so a backend on the other path
// would match or not by luck.
func TestLazyKernels(t *testing.T) {
	td := shareddata.Dir(t)
	const headDim = 16 // both checkpoints'
	for _, c := range []struct {
		model string
		o     model.LoadOptions
	}{
		{"llama3-tiny-bf16", model.LoadOptions{}},
		{"llama3-tiny-bf16", model.LoadOptions{Quantization: "fp8"}},
		{"llama3-tiny-bf16", model.LoadOptions{KVCacheDType: "fp8"}},
		{"qwen3-moe-tiny", model.LoadOptions{DType: "bfloat16"}}, // an f32 checkpoint
	} {
		o := c.o
		t.Run(fmt.Sprintf("%s/quantization=%s/kv=%s", c.model, o.Quantization, o.KVCacheDType), func(t *testing.T) {
			dir := filepath.Join(td, "models", c.model)
			g := shareddata.ReadModelGolden(t, dir)
			f8, f8KV := o.Quantization == "fp8", o.KVCacheDType == "fp8"
			moe := c.model == "qwen3-moe-tiny"
			be := gpu(t, cuda.Options{LazyKernels: true, CacheDir: t.TempDir()})
			lazy := &seqRun{m: loadOn(t, be, dir, o), blocks: scattered}
			refBE := gpu(t, cuda.Options{})
			ref := &seqRun{m: loadOn(t, refBE, dir, o), blocks: scattered}
			cuda.HoldStepKernel(refBE, true)
			worst := 0.0
			check := func(step int, got, want [][]float32) {
				t.Helper()
				for i := range want {
					d := maxDiff(got[i], f64(want[i]))
					if d > 1e-3 {
						t.Fatalf("step %d row %d: lazy backend's logits differ by %.3g", step, i, d)
					}
					worst = max(worst, d)
				}
			}
			check(0, lazy.step(t, g.PromptIDs), ref.step(t, g.PromptIDs))
			tok := g.Greedy[0].Token
			fused := 0 // one-token steps the lazy backend ran on the fused GEMVs
			for i := 1; i <= 40; i++ {
				if i == 20 {
					cuda.WaitStepKernels(be)
				}
				lazyBefore, refBefore := cuda.StepLaunches(be), cuda.StepLaunches(refBE)
				got := lazy.step(t, []int32{tok})
				stepKernel := cuda.StepLaunches(be) > lazyBefore
				if stepKernel {
					cuda.HoldStepKernel(refBE, false)
				} else {
					fused++
				}
				want := ref.step(t, []int32{tok})
				if refStep := cuda.StepLaunches(refBE) > refBefore; refStep != stepKernel {
					t.Fatalf("step %d: the decode-step kernel ran on the lazy backend %v, on the other %v", i, stepKernel, refStep)
				}
				check(i, got, want)
				tok = argmax(want[0])
			}
			t.Logf("%d of 40 one-token steps on the fused GEMVs; logits within %.3g", fused, worst)
			if cuda.StepLaunches(be) == 0 {
				t.Error("no step took the decode-step kernel once it had compiled")
			}
			// Every decode-step unit but the model's, without anything FP8
			// the FP8 units, and the fused GEMVs of more rows than one
			// never compiled.
			want := cuda.UnusedUnits(be)
			for _, u := range cuda.StepUnits() {
				if u != cuda.StepUnit(headDim, f8, moe) {
					want = append(want, u)
				}
			}
			if !f8 && !f8KV {
				want = append(want, cuda.FP8Units()...)
			}
			slices.Sort(want)
			want = slices.Compact(want)
			if got := cuda.PendingUnits(be); !slices.Equal(got, want) {
				t.Errorf("units never compiled: %v, want %v", got, want)
			}
		})
	}
}

// BenchmarkModelServeSteps times the steps a server runs under the issue's
// c=64 load of 1,024-token prompts (Qwen2.5-1.5B, dummy bf16 weights,
// rounded GEMM activations as served): 64 greedy decode rows at 100 and
// 1,100 tokens of context, a prompt step of eight 1,024-token prompts, and
// the mixed step of 64 decode rows beside eight prompts of 1,016 tokens
// (8,192 tokens in all); "-lane" keeps the per-token attention pieces on
// the lane-per-dims kernel. Under Nsight Compute it gives each step's
// kernels.
func BenchmarkModelServeSteps(bm *testing.B) {
	type seq struct{ ctx, n int } // tokens cached before the step, new tokens
	decodes := func(ctx int) []seq { return slices.Repeat([]seq{{ctx, 1}}, 64) }
	prompts := func(n int) []seq { return slices.Repeat([]seq{{0, n}}, 8) }
	cases := []struct {
		name string
		seqs []seq
	}{
		{"decode64-ctx100", decodes(100)},
		{"decode64-ctx1100", decodes(1100)},
		{"prefill8x1024", prompts(1024)},
		{"mixed64x1100-8x1016", append(decodes(1100), prompts(1016)...)},
	}
	// "-lane": the per-token pieces on the lane-per-dims kernel; "-narrow":
	// flash's narrow form (64 rows a block) for the prompts.
	for _, suffix := range []string{"", "-lane", "-narrow"} {
		be := gpu(bm, cuda.Options{RoundActivations: true})
		cuda.SetLaneAttention(be, suffix == "-lane")
		if suffix == "-narrow" {
			defer cuda.SetFlashWideWaves(cuda.SetFlashWideWaves(math.Inf(1)))
		}
		lm, err := model.Load("Qwen/Qwen2.5-1.5B", model.LoadOptions{Backend: be, LoadFormat: "dummy", DType: "bfloat16"})
		if err != nil {
			bm.Fatal(err)
		}
		const bs, kvBlocks = 16, 5200
		if err := lm.AllocateKV(kvBlocks, bs); err != nil {
			bm.Fatal(err)
		}
		m := lm.(model.DeviceArgmaxer)
		for _, c := range cases {
			if suffix == "-narrow" && !strings.Contains(c.name, "x1024") && !strings.Contains(c.name, "mixed") {
				continue // no prompt: flash does not run
			}
			bm.Run(c.name+suffix, func(bm *testing.B) {
				b, next := &model.Batch{}, int32(0)
				for _, s := range c.seqs {
					bt := make([]int32, (s.ctx+s.n+bs-1)/bs)
					for j := range bt {
						bt[j] = next
						next++
					}
					if int(next) > kvBlocks {
						bm.Fatalf("%d KV blocks needed, %d allocated", next, kvBlocks)
					}
					b.Seqs = append(b.Seqs, model.SeqChunk{Start: len(b.Tokens), Len: s.n, BlockTable: bt})
					for p := s.ctx; p < s.ctx+s.n; p++ {
						b.Tokens = append(b.Tokens, int32(7+p%1000))
						b.Positions = append(b.Positions, int32(p))
					}
					b.LogitIndices = append(b.LogitIndices, int32(len(b.Tokens)-1))
				}
				sec := timeGreedySteps(bm, m, b, lm.Config().VocabSize)
				bm.ReportMetric(sec*1e3, "ms/step")
				bm.ReportMetric(float64(len(b.Tokens))/sec, "tok/s")
			})
		}
		lm.Close()
	}
}

// timeGreedySteps runs step b three times (its graph captured), then times
// bm.N runs of it, every logit row greedy (token ids downloaded, as the
// engine runs them), and returns the seconds a step.
func timeGreedySteps(bm *testing.B, m model.DeviceArgmaxer, b *model.Batch, vocab int) float64 {
	rows := len(b.LogitIndices)
	greedy, toks := make([]bool, rows), make([]int32, rows)
	for i := range greedy {
		greedy[i] = true
	}
	out := make([]float32, rows*vocab) // not downloaded: every row is greedy
	for i := 0; i < 3; i++ {
		if err := m.ForwardArgmax(bm.Context(), b, greedy, toks, out); err != nil {
			bm.Fatal(err)
		}
	}
	bm.ResetTimer()
	for i := 0; i < bm.N; i++ {
		if err := m.ForwardArgmax(bm.Context(), b, greedy, toks, out); err != nil {
			bm.Fatal(err)
		}
	}
	return bm.Elapsed().Seconds() / float64(bm.N)
}
