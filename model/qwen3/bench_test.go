package qwen3_test

import (
	"os"
	"strconv"
	"testing"

	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/model"
	_ "github.com/llmserve/llmserve/model/llama" // Qwen2.5, the per-byte baseline
)

// BenchmarkDecode compares Qwen3's decode with Qwen2.5's per weight byte
// (dummy bf16 weights, batch 1, 128 tokens of context): GB/s is the
// weight memory read per second, which the per-head q/k norms must not
// lower.
//
//	go test ./model/qwen3 -run '^$' -bench Decode -benchtime 30x -count 3
func BenchmarkDecode(b *testing.B) {
	for _, name := range []string{"Qwen/Qwen3-0.6B", "Qwen/Qwen2.5-0.5B"} {
		b.Run(name[len("Qwen/"):], func(b *testing.B) {
			threads, _ := strconv.Atoi(os.Getenv("LLMSERVE_THREADS")) // 0: all cores
			be := cpu.New(cpu.Options{Threads: threads})
			defer be.Close()
			m, err := model.Load(name, model.LoadOptions{Backend: be, LoadFormat: "dummy"})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			const ctx, bs = 128, 16
			table := make([]int32, ctx/bs+2)
			for i := range table {
				table[i] = int32(i)
			}
			if err := m.AllocateKV(len(table), bs); err != nil {
				b.Fatal(err)
			}
			V := m.Config().VocabSize
			pre := &model.Batch{Seqs: []model.SeqChunk{{Len: ctx, BlockTable: table}}, LogitIndices: []int32{ctx - 1}}
			for i := range ctx {
				pre.Tokens = append(pre.Tokens, int32((i*7919+13)%150000))
				pre.Positions = append(pre.Positions, int32(i))
			}
			logits := make([]float32, V)
			if err := m.Forward(b.Context(), pre, logits); err != nil {
				b.Fatal(err)
			}
			step := &model.Batch{Tokens: []int32{42}, Positions: []int32{ctx},
				Seqs: []model.SeqChunk{{Len: 1, BlockTable: table}}, LogitIndices: []int32{0}}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				// The same position each time: the KV slot is rewritten, the
				// work per step is that of one decode token.
				if err := m.Forward(b.Context(), step, logits); err != nil {
					b.Fatal(err)
				}
			}
			sec := b.Elapsed().Seconds()
			b.ReportMetric(float64(b.N)/sec, "tok/s")
			b.ReportMetric(float64(m.WeightBytes())/1e9, "GB/tok")
			b.ReportMetric(float64(m.WeightBytes())*float64(b.N)/sec/1e9, "GB/s")
		})
	}
}
