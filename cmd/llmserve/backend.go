package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/ml/cuda"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/model/llama"
)

// newBackend opens the compute backend for --device: cpu, cuda, or auto
// (CUDA when a usable GPU and its libraries are found, else the CPU).
// The one place backends are chosen.
// enforceEager (vLLM's --enforce-eager) turns CUDA graphs off.
func newBackend(device string, enforceEager bool) (ml.Backend, error) {
	copts := cuda.Options{Logger: slog.Default(), DisableGraphs: enforceEager}
	switch device {
	case "cpu":
		return cpu.New(cpu.Options{Logger: slog.Default()}), nil
	case "cuda":
		b, err := cuda.New(copts)
		if err != nil {
			return nil, fmt.Errorf("CUDA backend not available: %w", err)
		}
		return b, nil
	case "auto", "":
		if b, err := cuda.New(copts); err == nil {
			return b, nil
		} else {
			slog.Default().Info("no usable CUDA device, using the CPU", "reason", err.Error())
		}
		return cpu.New(cpu.Options{Logger: slog.Default()}), nil
	}
	return nil, fmt.Errorf("--device %q: want auto, cpu or cuda", device)
}

// memInfo is implemented by backends that know their device memory (CUDA).
type memInfo interface {
	MemInfo() (free, total int64, err error)
}

// Device memory the KV cache leaves alone besides the weights: with a
// profiled model, besides its measured step buffers too, deviceReserve for
// what the profile does not allocate (CUDA graphs and the lazily loaded
// kernels of warm-up, allocator slack); without one, a flat guess.
const (
	deviceReserve         = 512 << 20
	unprofiledActivations = 1 << 30
)

// kvBlocks sizes the KV cache: --kv-cache-memory, else on a GPU what
// --gpu-memory-utilization leaves after the weights and the activations of
// the largest step (measured by a model.Profiler's profile step at
// --max-num-batched-tokens, as vLLM does) and deviceReserve, else 1 GiB.
func kvBlocks(ctx context.Context, cfg *config, be ml.Backend, m model.Model) (int, error) {
	log := slog.Default()
	if cfg.NumGPUBlocks > 0 {
		return cfg.NumGPUBlocks, nil // --num-gpu-blocks-override
	}
	mem := cfg.KVCacheMemory
	if mem == 0 {
		mem = defaultCPUKVMemory
		if mi, ok := be.(memInfo); ok {
			free0, total, err := mi.MemInfo()
			if err != nil {
				return 0, fmt.Errorf("reading device memory: %w", err)
			}
			free, activations := free0, int64(unprofiledActivations)
			p, profiled := m.(model.Profiler)
			if profiled {
				rows := min(cfg.MaxNumSeqs, cfg.MaxNumBatchedTokens)
				if err := p.ProfileStep(ctx, cfg.MaxNumBatchedTokens, rows); err != nil {
					return 0, fmt.Errorf("profiling a step of %d tokens (--max-num-batched-tokens): %w", cfg.MaxNumBatchedTokens, err)
				}
				if free, _, err = mi.MemInfo(); err != nil {
					return 0, fmt.Errorf("reading device memory: %w", err)
				}
				activations = max(0, free0-free)
			}
			reserve := int64(deviceReserve)
			if !profiled {
				reserve = unprofiledActivations // covers everything, as before profiling
			}
			mem = int64(float64(total)*cfg.GPUMemoryUtilization) - (total - free) - reserve
			if mem <= 0 {
				return 0, fmt.Errorf("no device memory left for the KV cache (total %s, in use %s after the weights and a %d-token step, reserve %s, --gpu-memory-utilization %v): raise it, lower --max-num-batched-tokens or use --kv-cache-memory",
					humanBytes(total), humanBytes(total-free), cfg.MaxNumBatchedTokens, humanBytes(reserve), cfg.GPUMemoryUtilization)
			}
			// The reference's start-up VRAM table.
			per := m.KVBytesPerToken()
			log.Info("device memory",
				"total", humanBytes(total), "free_after_weights", humanBytes(free0), "gpu_memory_utilization", cfg.GPUMemoryUtilization,
				"weights", humanBytes(m.WeightBytes()), "activations", humanBytes(activations), "activations_profiled", profiled,
				"profile_tokens", cfg.MaxNumBatchedTokens, "reserve", humanBytes(reserve),
				"kv_cache", humanBytes(mem), "kv_bytes_per_token", per, "kv_capacity_tokens", mem/max(per, 1))
		}
	}
	per := m.KVBytesPerToken() * int64(cfg.BlockSize)
	if per <= 0 {
		return 0, errors.New("model reports no KV memory per token")
	}
	n := mem / per
	if n < 1 {
		return 0, fmt.Errorf("--kv-cache-memory %s holds no block of %d tokens (%s each)", humanBytes(mem), cfg.BlockSize, humanBytes(per))
	}
	return int(n), nil
}

// warmUp runs throwaway steps on a GPU before serving, so that the first
// requests do not pay one-time costs: cuBLAS loads each GEMM kernel lazily on
// first use (milliseconds each), and so do the attention and sampling
// kernels. It covers decode batches of 1 to maxSeqs sequences (a second
// or so) and prefill chunks up to maxBatched tokens, as vLLM's start-up
// graph capture and profiling run does. The keys and values it writes land in KV
// blocks that hold nothing yet. Failures are logged, not fatal.
func warmUp(ctx context.Context, be ml.Backend, m model.Model, numBlocks, blockSize, maxSeqs, maxBatched int, log *slog.Logger) {
	if be.Name() != "cuda" || numBlocks < 1 {
		return
	}
	t0 := time.Now()
	da, _ := m.(model.DeviceArgmaxer)
	V := m.Config().VocabSize
	step := func(b *model.Batch) error {
		rows := len(b.LogitIndices)
		logits := make([]float32, rows*V)
		if da != nil && da.ArgmaxOnDevice() {
			greedy := make([]bool, rows)
			for i := range greedy {
				greedy[i] = true
			}
			return da.ForwardArgmax(ctx, b, greedy, make([]int32, rows), logits)
		}
		return m.Forward(ctx, b, logits)
	}
	steps := 0
	// prefill is one sequence of n prompt tokens (logits for its last)
	// after d one-token decode rows.
	prefill := func(n, d int) error {
		b := &model.Batch{}
		for i := range d {
			b.Tokens = append(b.Tokens, int32(i%V))
			b.Positions = append(b.Positions, int32(i%blockSize))
			b.Seqs = append(b.Seqs, model.SeqChunk{Start: i, Len: 1, BlockTable: []int32{int32(i % numBlocks)}})
			b.LogitIndices = append(b.LogitIndices, int32(i))
		}
		table := make([]int32, (n+blockSize-1)/blockSize)
		for i := range table {
			table[i] = int32(i % numBlocks)
		}
		b.Seqs = append(b.Seqs, model.SeqChunk{Start: d, Len: n, BlockTable: table})
		for i := range n {
			b.Tokens = append(b.Tokens, int32(i%V))
			b.Positions = append(b.Positions, int32(i))
		}
		b.LogitIndices = append(b.LogitIndices, int32(d+n-1))
		steps++
		return step(b)
	}
	decode := func(T int) error {
		b := &model.Batch{}
		for i := range T {
			b.Tokens = append(b.Tokens, int32(i%V))
			b.Positions = append(b.Positions, int32(i%blockSize))
			b.Seqs = append(b.Seqs, model.SeqChunk{Start: i, Len: 1, BlockTable: []int32{int32(i % numBlocks)}})
			b.LogitIndices = append(b.LogitIndices, int32(i))
		}
		steps++
		return step(b)
	}
	maxT := min(maxBatched, numBlocks*blockSize)
	// The largest shapes first: the step buffers then never grow again, so
	// the device pointers (and the graphs recorded below) stay valid.
	err := prefill(maxT, 0)
	if err == nil {
		err = decode(maxSeqs)
	}
	// Every decode batch size: cuBLAS picks its kernel by the row count.
	for T := 1; T <= maxSeqs && err == nil; T++ {
		err = decode(T)
	}
	// Steps with prompt tokens are padded to a few token and logit-row
	// counts (model/llama): run each pair twice, which captures its graph.
	for _, T := range paddedSizes(maxT) {
		for L := 1; L < T && L <= maxSeqs && err == nil; L *= 2 {
			for range 2 {
				if err = prefill(T-(L-1), L-1); err != nil {
					break
				}
			}
		}
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Warn("warm-up step failed", "err", err)
		return
	}
	attrs := []any{"steps", steps, "seconds", fmt.Sprintf("%.2f", time.Since(t0).Seconds())}
	if mi, ok := be.(memInfo); ok {
		// What deviceReserve had to cover: the graphs and kernels warm-up loaded.
		if free, _, err := mi.MemInfo(); err == nil {
			attrs = append(attrs, "device_free", humanBytes(free))
		}
	}
	log.Info("warmed up", attrs...)
}

// paddedSizes are the step token counts model/llama pads prompt-carrying
// steps to, up to maxT.
func paddedSizes(maxT int) []int {
	var out []int
	for t := 1; t <= maxT; t = llama.PadTokens(t) + 1 {
		if p := llama.PadTokens(t); p <= maxT {
			out = append(out, p)
		}
	}
	return out
}
