package llama

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/model"
)

// Benchmarks on Qwen2.5-0.5B's shape with dummy weights (or the checkpoint
// LLMSERVE_BENCH_MODEL names):
//
//	go test ./model/llama -run '^$' -bench . -benchtime 20x -count 5
//
// decode: one token per step at batch 1 after a 128-token prompt (and,
// bf16-ctx2000, after a 2,000-token one);
// prefill: a 128- or 512-token prompt in one step (logits of its last
// token), and a 2,000-token one (one step at the default
// --max-num-batched-tokens 2048).
// GB/tok is the weight memory read per token (all of it per step, shared by
// the step's tokens).

// cpuTime is the process's user+system CPU time: on a machine shared with
// other work, CPU time per token shows efficiency that wall time hides.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var benchModels struct {
	sync.Mutex
	m map[string]*Model
}

// benchModel loads (once per process) the dummy model in the given quantization.
func benchModel(b *testing.B, quant string) *Model {
	benchModels.Lock()
	defer benchModels.Unlock()
	if m, ok := benchModels.m[quant]; ok {
		return m
	}
	threads, _ := strconv.Atoi(os.Getenv("LLMSERVE_THREADS")) // 0: all cores
	be := cpu.New(cpu.Options{Threads: threads})
	// LLMSERVE_BENCH_MODEL names a checkpoint directory to load instead
	// (e.g. one cmd/dummyckpt wrote: the same weights, from a mapped file).
	path, format := "Qwen/Qwen2.5-0.5B", "dummy"
	if p := os.Getenv("LLMSERVE_BENCH_MODEL"); p != "" {
		path, format = p, "safetensors"
	}
	lm, err := model.Load(path, model.LoadOptions{Backend: be, LoadFormat: format, Quantization: quant})
	if err != nil {
		b.Fatal(err)
	}
	m := lm.(*Model)
	if err := m.AllocateKV(benchBlocks, 16); err != nil {
		b.Fatal(err)
	}
	if benchModels.m == nil {
		benchModels.m = map[string]*Model{}
	}
	benchModels.m[quant] = m
	return m
}

func prompt(n int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32((i*7919 + 13) % 150000)
	}
	return out
}

// benchBlocks of 16 slots hold the longest prompt plus 512 decode steps.
const benchBlocks = 192

var blocks = func() []int32 {
	var out []int32
	for i := range benchBlocks {
		out = append(out, int32(benchBlocks-1-i))
	}
	return out
}()

// prefilled remembers which models hold a prompt of which length (decode
// benchmarks write only after it).
var prefilled = map[*Model]int{}

func prefill(b *testing.B, m *Model, n int, logits []float32) {
	pre := &model.Batch{Tokens: prompt(n), Positions: make([]int32, n),
		Seqs: []model.SeqChunk{{Len: n, BlockTable: blocks}}, LogitIndices: []int32{int32(n - 1)}}
	for i := range pre.Positions {
		pre.Positions[i] = int32(i)
	}
	if err := m.Forward(b.Context(), pre, logits); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, c := range []struct {
		name, quant string
		ctx0        int
	}{{"bf16", "", 128}, {"int8", "int8", 128}, {"fp8", "fp8", 128}, {"bf16-ctx2000", "", 2000}} {
		b.Run(c.name, func(b *testing.B) {
			m := benchModel(b, c.quant)
			V := m.cfg.VocabSize
			ctx0 := c.ctx0
			logits := make([]float32, V)
			if ctx0 <= 128 || prefilled[m] < ctx0 {
				// A long prompt's KV is written once per process: later
				// decode steps only write after it.
				prefill(b, m, ctx0, logits)
				if ctx0 > 128 {
					prefilled[m] = ctx0
				}
			}
			step := &model.Batch{Tokens: []int32{0}, Positions: []int32{0},
				Seqs: []model.SeqChunk{{Len: 1, BlockTable: blocks}}, LogitIndices: []int32{0}}
			b.ReportAllocs()
			c0 := cpuTime()
			b.ResetTimer()
			for i := range b.N {
				step.Tokens[0] = argmax(logits)
				step.Positions[0] = int32(ctx0 + i%512) // stays within the cache
				if err := m.Forward(b.Context(), step, logits); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			sec := b.Elapsed().Seconds()
			b.ReportMetric(float64(b.N)/sec, "tok/s")
			b.ReportMetric((cpuTime()-c0).Seconds()*1e3/float64(b.N), "cpu-ms/tok")
			b.ReportMetric(float64(m.WeightBytes())/1e9, "GB/tok")
		})
	}
}

func BenchmarkPrefill(b *testing.B) {
	for _, c := range []struct {
		q string
		n int
	}{{"bf16", 128}, {"int8", 128}, {"bf16", 512}, {"int8", 512}, {"bf16", 2000}} {
		q, n := c.q, c.n
		b.Run(fmt.Sprintf("%s/%d", q, n), func(b *testing.B) {
			m := benchModel(b, map[string]string{"bf16": "", "int8": "int8"}[q])
			batch := &model.Batch{Tokens: prompt(n), Positions: make([]int32, n),
				Seqs: []model.SeqChunk{{Len: n, BlockTable: blocks}}, LogitIndices: []int32{int32(n - 1)}}
			for i := range batch.Positions {
				batch.Positions[i] = int32(i)
			}
			logits := make([]float32, m.cfg.VocabSize)
			if err := m.Forward(b.Context(), batch, logits); err != nil { // warm the scratch
				b.Fatal(err)
			}
			if n > 128 {
				prefilled[m] = max(prefilled[m], n)
			}
			b.ReportAllocs()
			c0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				if err := m.Forward(b.Context(), batch, logits); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			sec := b.Elapsed().Seconds()
			b.ReportMetric(float64(n*b.N)/sec, "tok/s")
			b.ReportMetric((cpuTime()-c0).Seconds()*1e3/float64(n*b.N), "cpu-ms/tok")
			b.ReportMetric(float64(m.WeightBytes())/float64(n)/1e9, "GB/tok")
		})
	}
}
