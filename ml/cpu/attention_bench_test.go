package cpu

import (
	"fmt"
	"math"
	"testing"

	"github.com/llmserve/llmserve/ml"
)

// BenchmarkAttention: a decode step of 32 sequences at context 1024 with
// Qwen2.5-0.5B's heads (14 query, 2 KV, head_dim 64), blocks of 16.
func BenchmarkAttention(b *testing.B) {
	for _, dt := range []ml.DType{ml.F32, ml.BF16} {
		b.Run(fmt.Sprint(dt), func(b *testing.B) {
			const S, ctx, H, G, hd, bs = 32, 1024, 14, 2, 64, 16
			be := New(Options{})
			defer be.Close()
			nbPer := ctx / bs
			kv, err := be.NewKVCache(1, S*nbPer, bs, G, hd, dt)
			if err != nil {
				b.Fatal(err)
			}
			bt := make([]int32, S*nbPer)
			for i := range bt {
				bt[i] = int32((i * 7919) % (S * nbPer)) // scattered
			}
			tokSeq, pos := make([]int32, S), make([]int32, S)
			for i := range S {
				tokSeq[i], pos[i] = int32(i), ctx-1
			}
			up := func(rows, cols int, v []int32) ml.Tensor {
				t, _ := be.NewTensor(ml.I32, rows, cols)
				be.UploadI32(t, v)
				return t
			}
			meta := &ml.AttentionMeta{NumTokens: S, NumSeqs: S, TokenSeq: up(1, S, tokSeq), Positions: up(1, S, pos),
				BlockTables: up(S, nbPer, bt), MaxBlocks: nbPer, MaxContext: ctx, NumHeads: H, NumKVHeads: G, HeadDim: hd,
				Scale: float32(1 / math.Sqrt(hd))}
			q, _ := be.NewTensor(ml.F32, S, H*hd)
			dst, _ := be.NewTensor(ml.F32, S, H*hd)
			for b.Loop() {
				if err := be.Attention(dst, q, kv, 0, meta); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(S)*float64(b.N)/b.Elapsed().Seconds(), "tok/s")
		})
	}
}
