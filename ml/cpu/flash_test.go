package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/mltest"
)

// flashSeq is one sequence of a flash attention test: ctx positions, the
// last nNew of which are this step's tokens (the rest a cached prefix).
type flashSeq struct{ ctx, nNew int }

type flashCase struct {
	H, G, hd, bs int
	window       int // sliding window (0: none)
	seqs         []flashSeq
}

func (c flashCase) String() string {
	return fmt.Sprintf("heads=%d/%d hd=%d bs=%d window=%d seqs=%v", c.H, c.G, c.hd, c.bs, c.window, c.seqs)
}

// runFlashCase fills a KV cache with NaN (stale data that must never reach
// a result), gives every sequence scattered blocks with unused blocks
// (holes) between them and -1 padding after, writes the prefix and this
// step's K/V, runs all new tokens in one shuffled step and compares them
// with the float64 reference. Then it runs every token alone (a decode
// step) and requires bit-identical rows: a row's result must not depend
// on the tile it shares.
func runFlashCase(t *testing.T, be *Backend, r *rand.Rand, c flashCase, kvdt ml.DType) {
	t.Helper()
	kvDim, qDim := c.G*c.hd, c.H*c.hd
	need, maxBlocks := 0, 0
	for _, s := range c.seqs {
		n := (s.ctx + c.bs - 1) / c.bs
		need += n
		maxBlocks = max(maxBlocks, n+1)
	}
	numBlocks := 2*need + 3
	cache, err := be.NewKVCache(2, numBlocks, c.bs, c.G, c.hd, kvdt)
	if err != nil {
		t.Fatal(err)
	}
	defer be.FreeKVCache(cache)
	const layer = 1
	write := func(k, v []float32, slots []int32) {
		n := len(slots)
		kt := upF32(t, be, n, kvDim, k)
		vt := upF32(t, be, n, kvDim, v)
		st := upI32(t, be, 1, n, slots)
		if err := be.WriteKV(cache, layer, kt, vt, st); err != nil {
			t.Fatal(err)
		}
	}
	// Stale data everywhere.
	{
		all := numBlocks * c.bs
		nan := make([]float32, all*kvDim)
		for i := range nan {
			nan[i] = float32(math.NaN())
		}
		slots := make([]int32, all)
		for i := range slots {
			slots[i] = int32(i)
		}
		write(nan, nan, slots)
	}
	// Blocks: a shuffled half of the cache, the other half holes.
	perm := r.Perm(numBlocks)
	tables := make([][]int32, len(c.seqs))
	next := 0
	for i, s := range c.seqs {
		for range (s.ctx + c.bs - 1) / c.bs {
			tables[i] = append(tables[i], int32(perm[next]))
			next += 2
		}
	}
	keys := make([][]float32, len(c.seqs)) // [seq][pos*kvDim]
	vals := make([][]float32, len(c.seqs))
	var toks [][2]int // (seq, pos) of this step's tokens
	{
		var k, v []float32
		var slots []int32
		for i, s := range c.seqs {
			keys[i] = mltest.RandF32(r, s.ctx*kvDim, 1.5)
			vals[i] = mltest.RandF32(r, s.ctx*kvDim, 1)
			for p := range s.ctx {
				k = append(k, keys[i][p*kvDim:(p+1)*kvDim]...)
				v = append(v, vals[i][p*kvDim:(p+1)*kvDim]...)
				slots = append(slots, tables[i][p/c.bs]*int32(c.bs)+int32(p%c.bs))
				if p >= s.ctx-s.nNew {
					toks = append(toks, [2]int{i, p})
				}
			}
		}
		write(k, v, slots)
	}
	r.Shuffle(len(toks), func(i, j int) { toks[i], toks[j] = toks[j], toks[i] })

	bt := make([]int32, len(c.seqs)*maxBlocks)
	for i := range bt {
		bt[i] = -1
	}
	for i := range c.seqs {
		copy(bt[i*maxBlocks:], tables[i])
	}
	scale := float32(1 / math.Sqrt(float64(c.hd)))
	run := func(toks [][2]int, q []float32) []float32 {
		T := len(toks)
		tokSeq, pos := make([]int32, T), make([]int32, T)
		maxCtx := 0
		for i, tp := range toks {
			tokSeq[i], pos[i] = int32(tp[0]), int32(tp[1])
			maxCtx = max(maxCtx, tp[1]+1)
		}
		meta := &ml.AttentionMeta{NumTokens: T, NumSeqs: len(c.seqs), TokenSeq: upI32(t, be, 1, T, tokSeq),
			Positions: upI32(t, be, 1, T, pos), BlockTables: upI32(t, be, len(c.seqs), maxBlocks, bt),
			MaxBlocks: maxBlocks, MaxContext: maxCtx, NumHeads: c.H, NumKVHeads: c.G, HeadDim: c.hd, Scale: scale,
			Window: c.window}
		dst, _ := be.NewTensor(ml.F32, T, qDim)
		if err := be.Attention(dst, upF32(t, be, T, qDim, q), cache, layer, meta); err != nil {
			t.Fatal(err)
		}
		out := make([]float32, T*qDim)
		if err := be.Download(out, dst); err != nil {
			t.Fatal(err)
		}
		return out
	}
	T := len(toks)
	q := mltest.RandF32(r, T*qDim, 1.5)
	got := run(toks, q)
	// The cache's values: K and V rounded to its dtype.
	for i := range c.seqs {
		for j := range keys[i] {
			keys[i][j] = mltest.Round(kvdt, keys[i][j])
			vals[i][j] = mltest.Round(kvdt, vals[i][j])
		}
	}
	worst := 0.0
	for i, tp := range toks {
		s, p := tp[0], tp[1]
		first := 0 // the window's first position
		if c.window > 0 {
			first = max(0, p+1-c.window)
		}
		want := mltest.RefAttention(q[i*qDim:(i+1)*qDim], p+1-first,
			func(j int) []float32 { return keys[s][(first+j)*kvDim : (first+j+1)*kvDim] },
			func(j int) []float32 { return vals[s][(first+j)*kvDim : (first+j+1)*kvDim] },
			c.H, c.G, c.hd, float64(scale))
		sc := 1.0
		for _, w := range want {
			sc = max(sc, math.Abs(w))
		}
		for j, w := range want {
			d := math.Abs(float64(got[i*qDim+j]) - w)
			if !(d <= 2e-5*sc) {
				t.Fatalf("%v kv=%s: token %d (seq %d, pos %d) out[%d] = %v, want %v", c, kvdt, i, s, p, j, got[i*qDim+j], w)
			}
			worst = max(worst, d/sc)
		}
	}
	// Each token alone gives the same bits (a sample of them).
	for i, tp := range toks {
		if i%max(1, T/16) != 0 {
			continue
		}
		alone := run([][2]int{tp}, q[i*qDim:(i+1)*qDim])
		for j, v := range alone {
			if math.Float32bits(v) != math.Float32bits(got[i*qDim+j]) {
				t.Fatalf("%v kv=%s: token %d (seq %d, pos %d) alone: out[%d] = %v, in the batch %v",
					c, kvdt, i, tp[0], tp[1], j, v, got[i*qDim+j])
			}
		}
	}
	t.Logf("%v kv=%s: %d tokens, worst relative error %.3g", c, kvdt, T, worst)
}

func upF32(t *testing.T, be *Backend, rows, cols int, v []float32) ml.Tensor {
	x, err := be.NewTensor(ml.F32, rows, cols)
	if err == nil {
		err = be.UploadF32(x, v)
	}
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func upI32(t *testing.T, be *Backend, rows, cols int, v []int32) ml.Tensor {
	x, err := be.NewTensor(ml.I32, rows, cols)
	if err == nil {
		err = be.UploadI32(x, v)
	}
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// TestFlashAttention: GQA ratios 1:1 to 8:1, head dims 64 and 128 (and odd
// ones), odd lengths, block sizes from 1 to larger than a softmax chunk,
// fresh and chunked prefills over a cached prefix (chunks starting mid
// block), decodes, sliding windows, on 1 to 3 workers, for every KV dtype.
func TestFlashAttention(t *testing.T) {
	mixed := []flashSeq{{ctx: 1, nNew: 1}, {ctx: 37, nNew: 37}, {ctx: 300, nNew: 77}, {ctx: 129, nNew: 1}, {ctx: 66, nNew: 2}}
	cases := []flashCase{
		{H: 4, G: 4, hd: 64, bs: 16, seqs: mixed},                                            // 1:1
		{H: 8, G: 4, hd: 128, bs: 16, seqs: mixed},                                           // 2:1
		{H: 8, G: 2, hd: 64, bs: 7, seqs: mixed},                                             // 4:1, odd block size
		{H: 14, G: 2, hd: 64, bs: 16, seqs: mixed},                                           // 7:1 (Qwen2.5-0.5B)
		{H: 16, G: 2, hd: 128, bs: 32, seqs: mixed},                                          // 8:1
		{H: 8, G: 1, hd: 64, bs: 128, seqs: mixed},                                           // MQA, blocks larger than a chunk
		{H: 6, G: 3, hd: 24, bs: 1, seqs: []flashSeq{{ctx: 40, nNew: 9}, {ctx: 3, nNew: 1}}}, // block size 1, odd head dim
		{H: 5, G: 1, hd: 80, bs: 16, seqs: []flashSeq{{ctx: 520, nNew: 300}}},                // long chunk, many tiles
		// Sliding windows: shorter than a block, than a tile, than a chunk, longer than the context.
		{H: 14, G: 2, hd: 64, bs: 16, window: 1, seqs: mixed},
		{H: 8, G: 2, hd: 64, bs: 7, window: 13, seqs: mixed},
		{H: 4, G: 4, hd: 64, bs: 16, window: 100, seqs: mixed},
		{H: 16, G: 2, hd: 128, bs: 32, window: 1000, seqs: mixed},
		{H: 5, G: 1, hd: 80, bs: 16, window: 70, seqs: []flashSeq{{ctx: 520, nNew: 300}}},
	}
	for _, threads := range []int{1, 2, 3} {
		be := New(Options{Threads: threads})
		r := rand.New(rand.NewPCG(uint64(threads), 99))
		for ci, c := range cases {
			for _, kvdt := range []ml.DType{ml.F32, ml.BF16, ml.F16} {
				if threads > 1 && (ci+int(kvdt)+threads)%3 != 0 {
					continue // every case and dtype once on one worker; a sample on more
				}
				t.Run(fmt.Sprintf("threads=%d/%d/%s", threads, ci, kvdt), func(t *testing.T) {
					runFlashCase(t, be, r, c, kvdt)
				})
			}
		}
		be.Close()
	}
}

// TestFlashAttentionDoesNotAllocate: a step of the same shape as the last
// (a chunk of a prefill, tokens out of order, and decodes) allocates nothing.
func TestFlashAttentionDoesNotAllocate(t *testing.T) {
	be := New(Options{Threads: 2})
	defer be.Close()
	const H, G, hd, bs, nb = 8, 2, 64, 16, 16
	kv, err := be.NewKVCache(1, nb, bs, G, hd, ml.BF16)
	if err != nil {
		t.Fatal(err)
	}
	// Sequence 0: a chunk of 40 tokens at positions 60..99 listed in
	// reverse; sequences 1 and 2: decodes.
	var tokSeq, pos []int32
	for p := 99; p >= 60; p-- {
		tokSeq, pos = append(tokSeq, 0), append(pos, int32(p))
	}
	tokSeq, pos = append(tokSeq, 1, 2), append(pos, 30, 5)
	T := len(tokSeq)
	bt := []int32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 14, 15, 0, 0, 0, 0, 0, 0}
	meta := &ml.AttentionMeta{NumTokens: T, NumSeqs: 3, TokenSeq: upI32(t, be, 1, T, tokSeq), Positions: upI32(t, be, 1, T, pos),
		BlockTables: upI32(t, be, 3, 8, bt[:24]), MaxBlocks: 8, MaxContext: 100, NumHeads: H, NumKVHeads: G, HeadDim: hd, Scale: 0.125}
	q := upF32(t, be, T, H*hd, make([]float32, T*H*hd))
	dst, _ := be.NewTensor(ml.F32, T, H*hd)
	step := func() {
		if err := be.Attention(dst, q, kv, 0, meta); err != nil {
			t.Fatal(err)
		}
	}
	step()
	if n := testing.AllocsPerRun(10, step); n != 0 {
		t.Errorf("Attention: %v allocations per step", n)
	}
}
