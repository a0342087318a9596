package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/model"
	_ "github.com/llmserve/llmserve/model/models" // registers every architecture
)

// fakeDevice is the CPU backend reporting device memory: total bytes, of
// which the tensors and KV caches it holds are in use.
type fakeDevice struct {
	ml.Backend
	total, used int64
	live        map[any]int64
	kvLive      int
}

func (f *fakeDevice) hold(k any, n int64) {
	f.live[k] = n
	f.used += n
}

func (f *fakeDevice) release(k any) {
	f.used -= f.live[k]
	delete(f.live, k)
}

func (f *fakeDevice) NewTensor(dt ml.DType, rows, cols int) (ml.Tensor, error) {
	t, err := f.Backend.NewTensor(dt, rows, cols)
	if err == nil {
		f.hold(t, int64(rows)*int64(cols)*int64(dt.Size()))
	}
	return t, err
}

func (f *fakeDevice) LoadWeight(rows, cols int, data []byte, src, store ml.DType) (ml.Tensor, error) {
	t, err := f.Backend.LoadWeight(rows, cols, data, src, store)
	if err == nil {
		f.hold(t, int64(rows)*int64(cols)*int64(store.Size()))
	}
	return t, err
}

func (f *fakeDevice) Free(t ml.Tensor) {
	f.release(t)
	f.Backend.Free(t)
}

func (f *fakeDevice) NewKVCache(layers, numBlocks, blockSize, numKVHeads, headDim int, dt ml.DType) (ml.KVCache, error) {
	c, err := f.Backend.NewKVCache(layers, numBlocks, blockSize, numKVHeads, headDim, dt)
	if err == nil {
		f.hold(c, 2*int64(layers*numBlocks*blockSize*numKVHeads*headDim)*int64(dt.Size()))
		f.kvLive++
	}
	return c, err
}

func (f *fakeDevice) FreeKVCache(c ml.KVCache) {
	f.release(c)
	f.kvLive--
	f.Backend.FreeKVCache(c)
}

func (f *fakeDevice) MemInfo() (free, total int64, err error) { return f.total - f.used, f.total, nil }

// namedDevice is a fakeDevice with a GPU's name.
type namedDevice struct {
	*fakeDevice
	name string
}

func (d namedDevice) DeviceName() string { return d.name }

// TestDefaultBatchedTokens: vLLM's default step budget, 8192 tokens on a
// GPU of at least 70 GiB that is not an A100, else 2048 (the CPU too).
func TestDefaultBatchedTokens(t *testing.T) {
	cpuBe, err := newBackend("cpu", gpuOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cpuBe.Close()
	for _, c := range []struct {
		name  string
		total int64
		want  int
	}{
		{"NVIDIA H100 80GB HBM3", 80 << 30, 8192},
		{"NVIDIA H200", 141 << 30, 8192},
		{"NVIDIA A100-SXM4-80GB", 80 << 30, 2048},
		{"NVIDIA L4", 24 << 30, 2048},
	} {
		be := namedDevice{&fakeDevice{Backend: cpuBe, total: c.total}, c.name}
		if got := defaultBatchedTokens(be); got != c.want {
			t.Errorf("%s with %d GiB: %d, want %d", c.name, c.total>>30, got, c.want)
		}
	}
	if got := defaultBatchedTokens(cpuBe); got != 2048 {
		t.Errorf("CPU: %d, want 2048", got)
	}
}

// TestKVBlocksProfilesTheLargestStep: on a device, the KV cache gets what
// --gpu-memory-utilization leaves after the weights, the step buffers of a
// --max-num-batched-tokens profile step (measured, not guessed) and the
// reserve; the profile's own KV cache is gone, and a budget the weights and
// activations already fill is a clear error.
func TestKVBlocksProfilesTheLargestStep(t *testing.T) {
	dir := filepath.Join(shareddata.Dir(t), "models", "qwen2-tiny")
	for _, batched := range []int{64, 512} {
		dev := &fakeDevice{Backend: cpu.New(cpu.Options{}), total: 4 << 30, live: map[any]int64{}}
		m, err := model.Load(dir, model.LoadOptions{Backend: dev})
		if err != nil {
			t.Fatal(err)
		}
		loaded := dev.used
		cfg := &config{GPUMemoryUtilization: 0.25, MaxNumBatchedTokens: batched, MaxNumSeqs: 8, BlockSize: 16}
		n, err := kvBlocks(t.Context(), cfg, dev, m)
		if err != nil {
			t.Fatal(err)
		}
		if dev.kvLive != 0 {
			t.Fatalf("%d KV caches left after sizing", dev.kvLive)
		}
		act := dev.used - loaded
		if act <= 0 {
			t.Fatalf("max-num-batched-tokens %d: the profile step allocated no step buffers", batched)
		}
		budget := int64(float64(dev.total)*cfg.GPUMemoryUtilization) - dev.used - deviceReserve
		per := m.KVBytesPerToken() * int64(cfg.BlockSize)
		if int64(n)*per > budget || int64(n+1)*per <= budget {
			t.Fatalf("%d blocks of %d bytes for a budget of %d (weights %d, activations %d)", n, per, budget, loaded, act)
		}
		t.Logf("max-num-batched-tokens %d: activations %d bytes, %d KV blocks", batched, act, n)

		small := &config{GPUMemoryUtilization: float64(dev.used+deviceReserve-4096) / float64(dev.total), MaxNumBatchedTokens: batched,
			MaxNumSeqs: 8, BlockSize: 16}
		m.Close()
		m2, err := model.Load(dir, model.LoadOptions{Backend: dev})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kvBlocks(t.Context(), small, dev, m2); err == nil || !strings.Contains(err.Error(), "no device memory left") {
			t.Errorf("a budget the weights and activations fill: %v", err)
		}
		m2.Close()
		dev.Backend.Close()
	}
}
