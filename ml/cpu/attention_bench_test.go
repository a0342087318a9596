package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/llmserve/llmserve/ml"
)

// Attention benchmarks with Qwen2.5-0.5B's heads (14 query, 2 KV, head_dim
// 64) and blocks of 16:
//
//	go test ./ml/cpu -run '^$' -bench Attention -benchtime 20x -count 5

// processCPU is the process's user+system CPU time: on a machine shared
// with other work, CPU time per op shows efficiency that wall time hides.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loop runs f as the benchmark's op and reports tok/s and CPU time.
func (a *attnBench) loop(b *testing.B, tokens int, f func()) {
	c0 := processCPU()
	for b.Loop() {
		f()
	}
	b.ReportMetric(float64(tokens)*float64(b.N)/b.Elapsed().Seconds(), "tok/s")
	b.ReportMetric(float64(processCPU()-c0)/1e6/float64(b.N), "cpu-ms/op")
}

type attnBench struct {
	be   *Backend
	kv   ml.KVCache
	up   func(rows, cols int, v []int32) ml.Tensor
	q    ml.Tensor
	dst  ml.Tensor
	free []ml.Tensor
}

func newAttnBench(b *testing.B, dt ml.DType, numBlocks, T, H, G, hd, bs int) *attnBench {
	be := New(Options{})
	kv, err := be.NewKVCache(1, numBlocks, bs, G, hd, dt)
	if err != nil {
		b.Fatal(err)
	}
	a := &attnBench{be: be, kv: kv}
	a.up = func(rows, cols int, v []int32) ml.Tensor {
		t, _ := be.NewTensor(ml.I32, rows, cols)
		be.UploadI32(t, v)
		a.free = append(a.free, t)
		return t
	}
	a.q, _ = be.NewTensor(ml.F32, T, H*hd)
	a.dst, _ = be.NewTensor(ml.F32, T, H*hd)
	// Random keys, values and queries: the softmax's running max moves as
	// it does on real data (all-zero data would never rescale).
	r := rand.New(rand.NewPCG(1, 2))
	q := make([]float32, T*H*hd)
	for i := range q {
		q[i] = float32(r.NormFloat64())
	}
	be.UploadF32(a.q, q)
	k := make([]float32, bs*G*hd)
	slots := make([]int32, bs)
	kt, _ := be.NewTensor(ml.F32, bs, G*hd)
	vt, _ := be.NewTensor(ml.F32, bs, G*hd)
	st, _ := be.NewTensor(ml.I32, 1, bs)
	for blk := range numBlocks {
		for i := range k {
			k[i] = float32(r.NormFloat64())
		}
		be.UploadF32(kt, k)
		for i := range k {
			k[i] = float32(r.NormFloat64())
		}
		be.UploadF32(vt, k)
		for i := range slots {
			slots[i] = int32(blk*bs + i)
		}
		be.UploadI32(st, slots)
		if err := be.WriteKV(kv, 0, kt, vt, st); err != nil {
			b.Fatal(err)
		}
	}
	return a
}

func (a *attnBench) close() {
	a.be.FreeKVCache(a.kv)
	a.be.Close()
}

// BenchmarkAttention: a decode step of 32 sequences at context 1024.
func BenchmarkAttention(b *testing.B) {
	for _, dt := range []ml.DType{ml.F32, ml.BF16} {
		b.Run(fmt.Sprint(dt), func(b *testing.B) {
			const S, ctx, H, G, hd, bs = 32, 1024, 14, 2, 64, 16
			nbPer := ctx / bs
			a := newAttnBench(b, dt, S*nbPer, S, H, G, hd, bs)
			defer a.close()
			bt := make([]int32, S*nbPer)
			for i := range bt {
				bt[i] = int32((i * 7919) % (S * nbPer)) // scattered
			}
			tokSeq, pos := make([]int32, S), make([]int32, S)
			for i := range S {
				tokSeq[i], pos[i] = int32(i), ctx-1
			}
			meta := &ml.AttentionMeta{NumTokens: S, NumSeqs: S, TokenSeq: a.up(1, S, tokSeq), Positions: a.up(1, S, pos),
				BlockTables: a.up(S, nbPer, bt), MaxBlocks: nbPer, MaxContext: ctx, NumHeads: H, NumKVHeads: G, HeadDim: hd,
				Scale: float32(1 / math.Sqrt(hd))}
			a.loop(b, S, func() {
				if err := a.be.Attention(a.dst, a.q, a.kv, 0, meta); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkAttentionDecodeLong: one sequence's decode step at context 2048
// (the case a split of the context across workers would help).
func BenchmarkAttentionDecodeLong(b *testing.B) {
	for _, dt := range []ml.DType{ml.F32, ml.BF16} {
		b.Run(fmt.Sprint(dt), func(b *testing.B) {
			const ctx, H, G, hd, bs = 2048, 14, 2, 64, 16
			nb := ctx / bs
			a := newAttnBench(b, dt, nb, 1, H, G, hd, bs)
			defer a.close()
			bt := make([]int32, nb)
			for i := range bt {
				bt[i] = int32(nb - 1 - i)
			}
			meta := &ml.AttentionMeta{NumTokens: 1, NumSeqs: 1, TokenSeq: a.up(1, 1, []int32{0}), Positions: a.up(1, 1, []int32{ctx - 1}),
				BlockTables: a.up(1, nb, bt), MaxBlocks: nb, MaxContext: ctx, NumHeads: H, NumKVHeads: G, HeadDim: hd,
				Scale: float32(1 / math.Sqrt(hd))}
			a.loop(b, 1, func() {
				if err := a.be.Attention(a.dst, a.q, a.kv, 0, meta); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkAttentionPrefill: a 2,048-token prompt prefilled in 4 chunks of
// 512 tokens (each chunk attends to the cached prefix and causally to
// itself); one op is the whole prompt.
func BenchmarkAttentionPrefill(b *testing.B) {
	for _, dt := range []ml.DType{ml.F32, ml.BF16} {
		b.Run(fmt.Sprintf("%s/2048", dt), func(b *testing.B) {
			const n, chunk, H, G, hd, bs = 2048, 512, 14, 2, 64, 16
			nb := n / bs
			a := newAttnBench(b, dt, nb, chunk, H, G, hd, bs)
			defer a.close()
			bt := make([]int32, nb)
			for i := range bt {
				bt[i] = int32((i * 37) % nb) // scattered
			}
			var metas []*ml.AttentionMeta
			for c := 0; c < n; c += chunk {
				tokSeq, pos := make([]int32, chunk), make([]int32, chunk)
				for i := range chunk {
					pos[i] = int32(c + i)
				}
				metas = append(metas, &ml.AttentionMeta{NumTokens: chunk, NumSeqs: 1, TokenSeq: a.up(1, chunk, tokSeq),
					Positions: a.up(1, chunk, pos), BlockTables: a.up(1, nb, bt), MaxBlocks: nb, MaxContext: c + chunk,
					NumHeads: H, NumKVHeads: G, HeadDim: hd, Scale: float32(1 / math.Sqrt(hd))})
			}
			a.loop(b, n, func() {
				for _, meta := range metas {
					if err := a.be.Attention(a.dst, a.q, a.kv, 0, meta); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
