package model

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"

	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/weights"
)

// WriteDummyCheckpoint writes a Hugging Face model directory to dir:
// config.json and model.safetensors holding exactly the weights
// --load-format dummy generates for path (a built-in model name or a
// directory with config.json) and seed, tensors in name order as Hugging
// Face's writer stores them. Loading dir with --load-format safetensors
// then gives the dummy model, read from a real (memory-mapped) checkpoint;
// other runtimes can convert the file.
func WriteDummyCheckpoint(dir, path string, seed int64) error {
	cfg, _, err := locate(path)
	if err != nil {
		return err
	}
	r, err := resolveOptions(cfg, LoadOptions{})
	if err != nil {
		return err
	}
	factory, _, err := lookup(cfg)
	if err != nil {
		return err
	}
	// Run the architecture's loader on dummy weights and record every
	// tensor it asks for.
	be := cpu.New(cpu.Options{})
	defer be.Close()
	got := map[string]*weights.Tensor{}
	w := &Weights{Config: cfg, DType: r.store, Compute: r.compute, KVDType: r.kv, Backend: be, Logger: slog.New(slog.DiscardHandler),
		ckpt: r.ckpt, seed: uint64(seed), record: func(t *weights.Tensor) { got[t.Name] = t }}
	m, err := factory(cfg, w)
	if err != nil {
		return err
	}
	defer m.Close()
	names := make([]string, 0, len(got))
	for n := range got {
		names = append(names, n)
	}
	sort.Strings(names)
	ts := make([]*weights.Tensor, len(names))
	for i, n := range names {
		t := *got[n]
		if t.DType != r.ckpt { // norms are generated as f32 ones
			f := t.ToF32()
			t.Data = make([]byte, len(f)*r.ckpt.Size())
			weights.ConvertFromF32(t.Data, f, r.ckpt)
			t.DType = r.ckpt
		}
		ts[i] = &t
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), js, 0o644); err != nil {
		return err
	}
	if err := weights.WriteFile(filepath.Join(dir, weights.SingleFile), ts, map[string]string{"format": "pt"}); err != nil {
		return fmt.Errorf("model: writing %s: %w", dir, err)
	}
	return nil
}
