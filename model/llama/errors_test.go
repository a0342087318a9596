package llama

import (
	"context"
	"errors"
	"github.com/llmserve/llmserve/internal/shareddata"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/weights"
)

// checkpoint writes a copy of a tiny model into a temp dir with its tensors
// edited by edit (which may drop or replace tensors).
func checkpoint(t *testing.T, name string, edit func([]*weights.Tensor) []*weights.Tensor) string {
	t.Helper()
	src := filepath.Join(shareddata.Dir(t), "models", name)
	dst := t.TempDir()
	cfg, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "config.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := weights.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ts []*weights.Tensor
	for _, n := range s.Names() {
		x, err := s.Tensor(n)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, x)
	}
	if err := weights.WriteFile(filepath.Join(dst, "model.safetensors"), edit(ts), nil); err != nil {
		t.Fatal(err)
	}
	return dst
}

func loadErr(t *testing.T, path string, o model.LoadOptions) error {
	t.Helper()
	be := cpu.New(cpu.Options{Threads: 1})
	defer be.Close()
	o.Backend = be
	m, err := model.Load(path, o)
	if err == nil {
		m.Close()
	}
	return err
}

func wantErr(t *testing.T, err, sentinel error, substrs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", sentinel)
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("error %q does not wrap %v", err, sentinel)
	}
	for _, s := range substrs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	td := shareddata.Dir(t)
	qwen := filepath.Join(td, "models", "qwen2-tiny")

	t.Run("UnknownArch", func(t *testing.T) {
		dir := t.TempDir()
		cfg, _ := os.ReadFile(filepath.Join(qwen, "config.json"))
		cfg = []byte(strings.Replace(string(cfg), "Qwen2ForCausalLM", "MambaForCausalLM", 1))
		os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644)
		wantErr(t, loadErr(t, dir, model.LoadOptions{LoadFormat: "dummy"}), model.ErrUnsupportedArch,
			"MambaForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM")
	})
	t.Run("MissingTensor", func(t *testing.T) {
		const gone = "model.layers.1.mlp.up_proj.weight"
		dir := checkpoint(t, "qwen2-tiny", func(ts []*weights.Tensor) []*weights.Tensor {
			var out []*weights.Tensor
			for _, x := range ts {
				if x.Name != gone {
					out = append(out, x)
				}
			}
			return out
		})
		wantErr(t, loadErr(t, dir, model.LoadOptions{}), model.ErrMissingTensor, gone)
	})
	t.Run("MissingUntiedLMHead", func(t *testing.T) {
		dir := checkpoint(t, "llama3-tiny-bf16", func(ts []*weights.Tensor) []*weights.Tensor {
			var out []*weights.Tensor
			for _, x := range ts {
				if x.Name != "lm_head.weight" {
					out = append(out, x)
				}
			}
			return out
		})
		wantErr(t, loadErr(t, dir, model.LoadOptions{}), model.ErrMissingTensor, "lm_head.weight")
	})
	t.Run("ShapeMismatch", func(t *testing.T) {
		const name = "model.layers.0.self_attn.k_proj.weight" // [32 64]
		dir := checkpoint(t, "qwen2-tiny", func(ts []*weights.Tensor) []*weights.Tensor {
			for i, x := range ts {
				if x.Name == name {
					y := *x
					y.Shape = []int{64, 32}
					ts[i] = &y
				}
			}
			return ts
		})
		wantErr(t, loadErr(t, dir, model.LoadOptions{}), model.ErrShape, name, "[64 32]", "[32 64]")
	})
	t.Run("Truncated", func(t *testing.T) {
		dir := t.TempDir()
		cfg, _ := os.ReadFile(filepath.Join(qwen, "config.json"))
		os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644)
		st, _ := os.ReadFile(filepath.Join(qwen, "model.safetensors"))
		os.WriteFile(filepath.Join(dir, "model.safetensors"), st[:len(st)/2], 0o644)
		if err := loadErr(t, dir, model.LoadOptions{}); !errors.Is(err, weights.ErrCorrupt) {
			t.Errorf("truncated checkpoint: %v, want %v", err, weights.ErrCorrupt)
		}
	})
	t.Run("ConfigOnlyNeedsDummy", func(t *testing.T) {
		dir := t.TempDir()
		cfg, _ := os.ReadFile(filepath.Join(qwen, "config.json"))
		os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644)
		if err := loadErr(t, dir, model.LoadOptions{}); err == nil {
			t.Error("config.json alone loaded without --load-format dummy")
		}
		if err := loadErr(t, dir, model.LoadOptions{LoadFormat: "dummy"}); err != nil {
			t.Errorf("dummy from config.json alone: %v", err)
		}
	})
	for _, c := range []struct {
		name string
		o    model.LoadOptions
		want []string
	}{
		{"BadDType", model.LoadOptions{DType: "float8"}, []string{`"float8"`, "auto", "float32", "bfloat16", "float16"}},
		{"BadQuantization", model.LoadOptions{Quantization: "awq"}, []string{`"awq"`, "int8"}},
		{"BadLoadFormat", model.LoadOptions{LoadFormat: "pt"}, []string{`"pt"`, "safetensors", "dummy"}},
		{"BadKVDType", model.LoadOptions{KVCacheDType: "fp8_e5m2"}, []string{`"fp8_e5m2"`, "bfloat16", "fp8_e4m3"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			wantErr(t, loadErr(t, qwen, c.o), model.ErrBadOption, c.want...)
		})
	}
	t.Run("NotFound", func(t *testing.T) {
		wantErr(t, loadErr(t, filepath.Join(t.TempDir(), "nope"), model.LoadOptions{}), model.ErrNotFound, "Qwen/Qwen2.5-0.5B")
	})
	t.Run("BuiltinWithoutWeights", func(t *testing.T) {
		wantErr(t, loadErr(t, "Qwen/Qwen2.5-0.5B", model.LoadOptions{}), model.ErrNotFound, "dummy")
	})
}

func TestForwardErrors(t *testing.T) {
	m := load(t, filepath.Join(shareddata.Dir(t), "models", "qwen2-tiny"), model.LoadOptions{})
	V := m.cfg.VocabSize
	ok := func() *model.Batch {
		return &model.Batch{Tokens: []int32{1, 2, 3}, Positions: []int32{0, 1, 2},
			Seqs:         []model.SeqChunk{{Start: 0, Len: 3, BlockTable: []int32{5}}},
			LogitIndices: []int32{2}}
	}
	if err := m.Forward(t.Context(), ok(), make([]float32, V)); err == nil {
		t.Error("Forward before AllocateKV: no error")
	}
	if err := m.AllocateKV(8, 4); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		edit func(b *model.Batch)
		n    int // logits rows given
	}{
		{"TokenOutOfVocab", func(b *model.Batch) { b.Tokens[1] = int32(V) }, 1},
		{"NegativeToken", func(b *model.Batch) { b.Tokens[0] = -1 }, 1},
		{"PositionPastBlockTable", func(b *model.Batch) { b.Positions[2] = 4 }, 1},
		{"BlockOutOfRange", func(b *model.Batch) { b.Seqs[0].BlockTable[0] = 8 }, 1},
		{"SeqsDoNotCover", func(b *model.Batch) { b.Seqs[0].Len = 2 }, 1},
		{"PositionsLength", func(b *model.Batch) { b.Positions = b.Positions[:2] }, 1},
		{"LogitIndexOutOfRange", func(b *model.Batch) { b.LogitIndices[0] = 3 }, 1},
		{"LogitsBufferSize", func(b *model.Batch) {}, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := ok()
			c.edit(b)
			wantErr(t, m.Forward(t.Context(), b, make([]float32, c.n*V)), model.ErrBadBatch)
		})
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := m.Forward(ctx, ok(), make([]float32, V)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Forward: %v", err)
	}
	// After all the rejected batches, a good one still works.
	out := make([]float32, V)
	if err := m.Forward(t.Context(), ok(), out); err != nil {
		t.Fatal(err)
	}
	for _, v := range out {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatal("non-finite logit")
		}
	}
}

// TestDummyBuiltin loads Qwen2.5-0.5B's built-in config with dummy weights
// (1 GB of bf16) and runs a step: the offline benchmark path.
func TestDummyBuiltin(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 1 GB of dummy weights")
	}
	for _, q := range []string{""} { // int8 loading is covered by the benchmarks
		m := load(t, "Qwen/Qwen2.5-0.5B", model.LoadOptions{LoadFormat: "dummy", Quantization: q})
		cfg := m.Config()
		if cfg.HiddenSize != 896 || cfg.NumHiddenLayers != 24 || cfg.HeadDim != 64 || !cfg.TieWordEmbeddings {
			t.Fatalf("config: %+v", cfg)
		}
		// 494M parameters (tied embedding counted once).
		perParam := map[string]float64{"": 2, "int8": 1}[q]
		if got := float64(m.WeightBytes()) / perParam / 1e6; got < 490 || got > 500 {
			t.Errorf("quantization %q: %.0fM parameters, want about 494M", q, got)
		}
		if err := m.AllocateKV(4, 16); err != nil {
			t.Fatal(err)
		}
		V := cfg.VocabSize
		out := make([]float32, V)
		b := &model.Batch{Tokens: []int32{151643, 9707}, Positions: []int32{0, 1},
			Seqs: []model.SeqChunk{{Start: 0, Len: 2, BlockTable: []int32{2}}}, LogitIndices: []int32{1}}
		if err := m.Forward(t.Context(), b, out); err != nil {
			t.Fatal(err)
		}
		for _, v := range out {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatal("non-finite logit")
			}
		}
		m.Close()
	}
}
