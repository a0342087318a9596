package main

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
)

// TestLiveTensorParallelCPU: --tensor-parallel-size 2 serves the tiny
// Qwen2 split over two in-process CPU ranks (or, with
// LLMSERVE_E2E_DEVICE=cuda, over two GPUs through NCCL), and its greedy
// continuation is transformers' (up to the first near-tie).
func TestLiveTensorParallelCPU(t *testing.T) {
	l := startLive(t, "--tensor-parallel-size", "2")
	if !strings.Contains(l.logs.String(), "tensor-parallel model loaded") {
		t.Errorf("no tensor-parallel load in the log:\n%s", l.logs)
	}
	greedyMatchesGolden(t, l)
}

// TestTensorParallelStartupErrors: sizes that do not split the model, and
// GPUs that are not there, stop the server at start-up with a clear error.
func TestTensorParallelStartupErrors(t *testing.T) {
	mdir := filepath.Join(shareddata.Dir(t), "models", "qwen2-tiny")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--device", "cpu", "--tensor-parallel-size", "3"}, "num_attention_heads 4 is not divisible"},
		{[]string{"--device", "cpu", "-tp", "8"}, "--tensor-parallel-size 8 does not split the model"},
	} {
		args := append([]string{"--model", mdir, "--skip-tokenizer-init", "--host", "127.0.0.1", "--port", "0"}, c.args...)
		cfg, err := parseFlags(args, func(string) string { return "" }, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		err = serve(context.Background(), cfg, slog.New(slog.DiscardHandler), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.args, err, c.want)
		}
	}
	// More GPUs than present (none here; with CUDA, more than the host has).
	if _, err := newGroup("cuda", gpuOptions{}, 64); err == nil ||
		!(strings.Contains(err.Error(), "CUDA backend not available") || strings.Contains(err.Error(), "only")) {
		t.Errorf("64 GPUs: %v", err)
	}
	if _, err := newGroup("tpu", gpuOptions{}, 2); err == nil {
		t.Error("--device tpu accepted")
	}
}
