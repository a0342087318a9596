package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/ml/cuda"
	"github.com/llmserve/llmserve/model"
)

// openedDevice is openDevice's result: the backend, and with
// --tensor-parallel-size > 1 the group it is the first of.
type openedDevice struct {
	be    ml.Backend
	group *model.TensorParallel
	err   error
}

// openDevice opens the backend (or group of backends) cfg asks for.
func openDevice(cfg *config) openedDevice {
	if cfg.TensorParallelSize > 1 {
		group, err := newGroup(cfg.Device, cfg.gpuOptions(), cfg.TensorParallelSize)
		if err != nil {
			return openedDevice{err: err}
		}
		return openedDevice{be: group.Backends[0], group: group}
	}
	be, err := newBackend(cfg.Device, cfg.gpuOptions())
	return openedDevice{be: be, err: err}
}

// close closes what openDevice opened.
func (d openedDevice) close(log *slog.Logger) {
	switch {
	case d.group != nil:
		closeGroup(d.group, log)
	case d.be != nil:
		if err := d.be.Close(); err != nil {
			log.Warn("closing the backend", "err", err)
		}
	}
}

// gpuOptions are the flags that set up the CUDA backend.
type gpuOptions struct {
	EnforceEager bool   // vLLM's --enforce-eager: no CUDA graphs
	Activations  string // --gemm-activations: auto (""), bf16 or split
}

func (c *config) gpuOptions() gpuOptions {
	return gpuOptions{EnforceEager: c.EnforceEager, Activations: c.GemmActivations}
}

// roundActivations says whether the GEMMs take activations rounded once to
// bf16. auto does, as vLLM and a bf16 transformers forward compute; split
// keeps f32-grade products at twice the tensor-core work.
func (o gpuOptions) roundActivations() bool { return o.Activations != "split" }

// cuda is the CUDA backend's options for GPU device.
func (o gpuOptions) cuda(device int) cuda.Options {
	// Serving may start before the decode-step kernels have compiled.
	return cuda.Options{Device: device, Logger: slog.Default(), DisableGraphs: o.EnforceEager,
		RoundActivations: o.roundActivations(), LazyKernels: true}
}

// cpuRefused says why the CPU backend cannot serve with o, or nil.
func (o gpuOptions) cpuRefused() error {
	// auto means f32 on the CPU; only an explicit bf16 cannot be honoured.
	if o.Activations == "bf16" {
		return errors.New("--gemm-activations bf16 needs the CUDA backend: the CPU keeps activations in f32")
	}
	return nil
}

// newBackend opens the compute backend for --device: cpu, cuda, or auto
// (CUDA when a usable GPU and its libraries are found, else the CPU).
// The one place backends are chosen.
func newBackend(device string, o gpuOptions) (ml.Backend, error) {
	copts := o.cuda(0)
	switch device {
	case "cpu":
		if err := o.cpuRefused(); err != nil {
			return nil, err
		}
		return cpu.New(cpu.Options{Logger: slog.Default()}), nil
	case "cuda":
		b, err := cuda.New(copts)
		if err != nil {
			return nil, fmt.Errorf("CUDA backend not available: %w", err)
		}
		return b, nil
	case "auto", "":
		b, err := cuda.New(copts)
		if err == nil {
			return b, nil
		}
		if rerr := o.cpuRefused(); rerr != nil {
			return nil, fmt.Errorf("no usable CUDA device (%v), and %w", err, rerr)
		}
		slog.Default().Info("no usable CUDA device, using the CPU", "reason", err.Error())
		return cpu.New(cpu.Options{Logger: slog.Default()}), nil
	}
	return nil, fmt.Errorf("--device %q: want auto, cpu or cuda", device)
}

// newGroup opens the backends of --tensor-parallel-size n > 1 (n = 1:
// nil, the model runs on newBackend's): n GPUs joined by NCCL, or with
// --device cpu n CPU backends sharing the cores, joined by the in-process
// all-reduce. --device auto takes the GPUs when CUDA is usable, else the
// CPU. Every failure is a start-up error saying what is missing.
func newGroup(device string, o gpuOptions, n int) (*model.TensorParallel, error) {
	log := slog.Default()
	cpuGroup := func() *model.TensorParallel {
		tp := &model.TensorParallel{Comms: cpu.NewCollectives(n)}
		threads := max(1, runtime.NumCPU()/n)
		for range n {
			tp.Backends = append(tp.Backends, cpu.New(cpu.Options{Logger: log, Threads: threads}))
		}
		log.Info("tensor parallelism on the CPU: in-process all-reduce", "ranks", n, "threads_per_rank", threads)
		return tp
	}
	switch device {
	case "cpu":
		if err := o.cpuRefused(); err != nil {
			return nil, err
		}
		return cpuGroup(), nil
	case "cuda", "auto", "":
	default:
		return nil, fmt.Errorf("--device %q: want auto, cpu or cuda", device)
	}
	if err := cuda.Available(); err != nil {
		if device == "cuda" {
			return nil, fmt.Errorf("CUDA backend not available: %w", err)
		}
		if rerr := o.cpuRefused(); rerr != nil {
			return nil, fmt.Errorf("no usable CUDA device (%v), and %w", err, rerr)
		}
		log.Info("no usable CUDA device, using the CPU", "reason", err.Error())
		return cpuGroup(), nil
	}
	have, err := cuda.DeviceCount()
	if err != nil {
		return nil, fmt.Errorf("CUDA backend not available: %w", err)
	}
	if n > have {
		return nil, fmt.Errorf("--tensor-parallel-size %d: only %d GPU(s) present (CUDA_VISIBLE_DEVICES=%q)", n, have, os.Getenv("CUDA_VISIBLE_DEVICES"))
	}
	var bes []*cuda.Backend
	fail := func(err error) (*model.TensorParallel, error) {
		for _, b := range bes {
			b.Close()
		}
		return nil, err
	}
	for r := range n {
		b, err := cuda.NewBackend(o.cuda(r))
		if err != nil {
			return fail(fmt.Errorf("CUDA backend for GPU %d: %w", r, err))
		}
		bes = append(bes, b)
	}
	comms, err := cuda.NewNCCL(bes)
	if err != nil {
		return fail(fmt.Errorf("--tensor-parallel-size %d: %w", n, err))
	}
	tp := &model.TensorParallel{Comms: comms}
	for _, b := range bes {
		tp.Backends = append(tp.Backends, b)
	}
	return tp, nil
}

// closeGroup closes a group's collectives and backends.
func closeGroup(tp *model.TensorParallel, log *slog.Logger) {
	if tp == nil {
		return
	}
	for _, c := range tp.Comms {
		if err := c.Close(); err != nil {
			log.Warn("closing a collective", "err", err)
		}
	}
	for _, b := range tp.Backends {
		if err := b.Close(); err != nil {
			log.Warn("closing a backend", "err", err)
		}
	}
}

// tensorParallelSize is the number of devices m is split over (1: one).
func tensorParallelSize(m model.Model) int {
	if p, ok := m.(model.TensorParalleler); ok {
		return p.TensorParallelSize()
	}
	return 1
}

// memInfo is implemented by backends that know their device memory (CUDA).
type memInfo interface {
	MemInfo() (free, total int64, err error)
}

// defaultBatchedTokens is --max-num-batched-tokens' default, vLLM's: 8192
// on a GPU of at least 70 GiB that is not an A100, else 2048. On an H100 the
// larger steps shortened every prompt-bound figure of the long-context
// workloads (results/h100/2026-12-05-faaa86d) and left one-token decode as
// it was.
func defaultBatchedTokens(be ml.Backend) int {
	type named interface{ DeviceName() string }
	mi, sized := be.(memInfo)
	n, hasName := be.(named)
	if sized && hasName && !strings.Contains(strings.ToLower(n.DeviceName()), "a100") {
		if _, total, err := mi.MemInfo(); err == nil && total >= 70<<30 {
			return 8192
		}
	}
	return 2048
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
			per := m.KVBytesPerToken() / int64(tensorParallelSize(m)) // one device's share
			log.Info("device memory",
				"total", humanBytes(total), "free_after_weights", humanBytes(free0), "gpu_memory_utilization", cfg.GPUMemoryUtilization,
				"weights", humanBytes(m.WeightBytes()), "activations", humanBytes(activations), "activations_profiled", profiled,
				"profile_tokens", cfg.MaxNumBatchedTokens, "reserve", humanBytes(reserve),
				"kv_cache", humanBytes(mem), "kv_bytes_per_token", per, "kv_capacity_tokens", mem/max(per, 1))
		}
	}
	// With tensor parallelism mem is each device's (as vLLM's
	// --kv-cache-memory-bytes), and a block takes its share on every one.
	mem *= int64(tensorParallelSize(m))
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

// warmUp runs the model's warm-up steps (model.WarmUpper) on a GPU before
// serving, so that the first requests do not pay one-time costs: cuBLAS
// loads each GEMM kernel lazily on first use (milliseconds each), and so do
// the attention and sampling kernels, and each padded step shape captures
// its CUDA graph on its second run. Failures are logged, not fatal.
func warmUp(ctx context.Context, be ml.Backend, m model.Model, numBlocks, blockSize, maxSeqs, maxBatched int, log *slog.Logger) {
	wu, ok := m.(model.WarmUpper)
	if be.Name() != "cuda" || numBlocks < 1 || !ok {
		return
	}
	t0 := time.Now()
	steps, err := wu.WarmUp(ctx, model.WarmUpOptions{NumBlocks: numBlocks, BlockSize: blockSize,
		MaxSeqs: maxSeqs, MaxBatchedTokens: maxBatched})
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
