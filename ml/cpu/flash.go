package cpu

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu/kernels"
)

// Flash-style attention. A step's tokens are grouped by sequence (in
// position order) into tiles of up to tq tokens; one work item is a (tile,
// KV head) pair. The tile's tokens × the group's query heads (the heads
// sharing that KV head) are the item's M query rows, and each K/V block is
// read once per tile and KV head for all of them. The cache keeps each
// block's keys transposed ([headDim][slot]) and its values as rows
// ([slot][headDim]), so that both products are broadcast GEMMs
// (kernels.GemmNN) with no horizontal sums and no padding of the query
// rows: a decode step's few rows (Qwen3's GQA group of 2) cost their own
// work, not a vector's worth:
//
//   - S = Q·Kᵀ against the transposed keys (keys in the vector lanes), a
//     whole block at a time (16-bit blocks widened to f32 first);
//   - the softmax is online over chunks of blocks, row by row (a running
//     max and sum per query row, kernels.ExpSum), and a row of O is
//     rescaled only when its max moved;
//   - O += P·V against the value rows (head dims in the lanes), valid keys
//     only: stale slots never enter a product;
//   - causal masking is by position: a row's keys above its token's
//     position get -Inf (exactly 0 after the exp), which also hides a
//     partial block's stale slots. Tokens may attend to a cached prefix: a
//     tile reads keys 0..its largest position. A sliding window
//     (meta.Window) starts the keys at the window of the tile's first
//     token (earlier blocks are never read) and masks the keys before each
//     row's own window the same way.
//
// Every output row is computed by the same sequence of operations
// whatever tile it lands in (chunks are aligned to positions and always
// span their whole width, masked keys add exact zeros), so batching does
// not change results.

// flashRows is the number of query rows a tile aims for.
const flashRows = 128

// flashChunk is the number of keys a softmax chunk aims for (whole blocks).
const flashChunk = 64

// flashTile is tq or fewer tokens of one sequence: order[start:start+n].
type flashTile struct {
	seq            int32
	start, n       int32
	minPos, maxPos int32
	cost           int64
}

// flashScratch is one worker's buffers, grown (rarely) before a dispatch.
type flashScratch struct {
	q, o   []float32 // M × headDim: Q (scaled), O
	s      []float32 // M × chunk keys: S, then P
	mx, l  []float32 // M: running max and sum
	kf, vf []float32 // a 16-bit K or V block widened to f32
}

// flashTask is the Attention op's state, reused by every call.
type flashTask struct {
	dst, q         *Tensor
	kc             *KVCache
	layer          int
	pos, bt        []int32
	maxBlocks      int
	heads, kvHeads int
	hd             int
	scale          float32
	window         int     // sliding window (0: none)
	order          []int32 // token indices by sequence, in position order
	seqStart       []int32 // [S+1]: each sequence's range in order
	tiles          []flashTile
	scratch        []flashScratch
}

func (b *Backend) Attention(dst, q ml.Tensor, c ml.KVCache, layer int, meta *ml.AttentionMeta) error {
	kc, err := asCache(c, layer)
	if err != nil {
		return err
	}
	if meta == nil {
		return fmt.Errorf("%w: Attention without meta", ErrShape)
	}
	d, err := asTensor(dst, "Attention dst", f32Only)
	if err != nil {
		return err
	}
	qt, err := asTensor(q, "Attention q", f32Only)
	if err != nil {
		return err
	}
	H, G, hd, T := meta.NumHeads, meta.NumKVHeads, meta.HeadDim, meta.NumTokens
	if G != kc.kvHeads || hd != kc.headDim || H <= 0 || H%G != 0 {
		return fmt.Errorf("%w: Attention with %d heads, %d KV heads of %d over a cache of %d KV heads of %d",
			ErrShape, H, G, hd, kc.kvHeads, kc.headDim)
	}
	if qt.rows != T || d.rows != T || qt.cols != H*hd || d.cols != H*hd {
		return fmt.Errorf("%w: Attention dst %v, q %v for %d tokens × %d heads of %d", ErrShape, d, qt, T, H, hd)
	}
	tokSeq, err := indices(meta.TokenSeq, "Attention TokenSeq", T)
	if err != nil {
		return err
	}
	pos, err := indices(meta.Positions, "Attention Positions", T)
	if err != nil {
		return err
	}
	S, MB := meta.NumSeqs, meta.MaxBlocks
	bt, err := indices(meta.BlockTables, "Attention BlockTables", S*MB)
	if err != nil {
		return err
	}
	// Validate every block a token will read, once per sequence (its
	// largest position covers the others).
	if cap(b.seqMax) < S {
		b.seqMax = make([]int32, S)
	}
	seqMax := b.seqMax[:S]
	for i := range seqMax {
		seqMax[i] = -1
	}
	for i := range T {
		s, p := tokSeq[i], pos[i]
		if s < 0 || int(s) >= S || p < 0 {
			return fmt.Errorf("%w: Attention token %d: sequence %d of %d, position %d", ErrShape, i, s, S, p)
		}
		seqMax[s] = max(seqMax[s], p)
	}
	for s, p := range seqMax {
		if p < 0 {
			continue
		}
		nb := int(p)/kc.blockSize + 1
		if nb > MB {
			return fmt.Errorf("%w: Attention sequence %d at position %d needs %d blocks, table has %d", ErrShape, s, p, nb, MB)
		}
		for _, blk := range bt[s*MB : s*MB+nb] {
			if blk < 0 || int(blk) >= kc.numBlocks {
				return fmt.Errorf("%w: Attention sequence %d: block %d outside %d blocks", ErrShape, s, blk, kc.numBlocks)
			}
		}
	}
	if T == 0 {
		return nil
	}

	a := &b.attn
	a.window = max(0, meta.Window)
	a.plan(tokSeq, pos, S, H/G)
	a.grow(H/G, hd, kc.blockSize)
	a.dst, a.q, a.kc, a.layer = d, qt, kc, layer
	a.pos, a.bt, a.maxBlocks = pos, bt, MB
	a.heads, a.kvHeads, a.hd, a.scale = H, G, hd, meta.Scale
	items := len(a.tiles) * G
	b.pool.runSerialOr(a, items, items > 1)
	a.dst, a.q, a.kc, a.pos, a.bt = nil, nil, nil, nil, nil
	return nil
}

// plan groups the tokens by sequence in position order and cuts each
// sequence's tokens into tiles, costliest first (so that the pool's
// workers finish together).
func (a *flashTask) plan(tokSeq, pos []int32, S, group int) {
	T := len(tokSeq)
	if cap(a.seqStart) < S+1 {
		a.seqStart = make([]int32, S+1)
	}
	if cap(a.order) < T {
		a.order = make([]int32, T)
	}
	start, order := a.seqStart[:S+1], a.order[:T]
	clear(start)
	for _, s := range tokSeq {
		start[s+1]++
	}
	for s := range S {
		start[s+1] += start[s]
	}
	// Counting sort (stable), using start as the cursor then restoring it.
	for i, s := range tokSeq {
		order[start[s]] = int32(i)
		start[s]++
	}
	for s := S; s > 0; s-- {
		start[s] = start[s-1]
	}
	start[0] = 0
	tqMax := max(1, flashRows/group)
	a.tiles = a.tiles[:0]
	for s := range S {
		toks := order[start[s]:start[s+1]]
		n := len(toks)
		if n == 0 {
			continue
		}
		// Steps list a sequence's tokens in order; sort them if not.
		if !slices.IsSortedFunc(toks, func(x, y int32) int { return cmp.Compare(pos[x], pos[y]) }) {
			slices.SortStableFunc(toks, func(x, y int32) int { return cmp.Compare(pos[x], pos[y]) })
		}
		nt := (n + tqMax - 1) / tqMax
		for i := range nt {
			lo, hi := i*n/nt, (i+1)*n/nt
			t := flashTile{seq: int32(s), start: start[s] + int32(lo), n: int32(hi - lo),
				minPos: pos[toks[lo]], maxPos: pos[toks[hi-1]]}
			t.cost = int64(hi-lo) * int64(int(t.maxPos)+1-a.firstKey(t.minPos))
			a.tiles = append(a.tiles, t)
		}
	}
	slices.SortFunc(a.tiles, func(x, y flashTile) int { return int(min(1, max(-1, y.cost-x.cost))) })
}

// grow sizes every worker's scratch for the planned tiles.
func (a *flashTask) grow(group, hd, bs int) {
	rows := 0
	for _, t := range a.tiles {
		rows = max(rows, int(t.n)*group)
	}
	ck := chunkBlocks(bs) * bs
	for i := range a.scratch {
		sc := &a.scratch[i]
		if len(sc.q) < hd*rows {
			sc.q, sc.o = make([]float32, hd*rows), make([]float32, hd*rows)
		}
		if len(sc.s) < ck*rows {
			sc.s = make([]float32, ck*rows)
		}
		if len(sc.mx) < rows {
			sc.mx, sc.l = make([]float32, rows), make([]float32, rows)
		}
		if len(sc.kf) < bs*hd {
			sc.kf, sc.vf = make([]float32, bs*hd), make([]float32, bs*hd)
		}
	}
}

// firstKey is the first key position a token at position p attends to.
func (a *flashTask) firstKey(p int32) int {
	if a.window > 0 {
		return max(0, int(p)-a.window+1)
	}
	return 0
}

// chunkBlocks is the number of blocks of a softmax chunk.
func chunkBlocks(bs int) int { return max(1, flashChunk/bs) }

func (a *flashTask) item(w, item int) {
	a.tile(&a.tiles[item/a.kvHeads], item%a.kvHeads, &a.scratch[w])
}

func (a *flashTask) tile(t *flashTile, g int, sc *flashScratch) {
	kc, hd, group, bs := a.kc, a.hd, a.heads/a.kvHeads, a.kc.blockSize
	toks := a.order[t.start : t.start+t.n]
	M := len(toks) * group // row ti·group+h: token ti, head g·group+h

	// Q, scaled.
	q := sc.q[:M*hd]
	for ti, tok := range toks {
		qrow := a.q.f32[int(tok)*a.q.cols+g*group*hd:]
		for i, v := range qrow[:group*hd] {
			q[ti*group*hd+i] = v * a.scale
		}
	}
	mx, l := sc.mx[:M], sc.l[:M]
	for i := range mx {
		mx[i] = float32(math.Inf(-1))
	}
	clear(l)
	o := sc.o[:M*hd]
	clear(o)

	n := int(t.maxPos) + 1 // keys firstKey(minPos)..maxPos
	nb := (n + bs - 1) / bs
	bFirst := a.firstKey(t.minPos) / bs
	cb := chunkBlocks(bs)
	ck := cb * bs // a chunk's keys: the width of every row of S
	table := a.bt[int(t.seq)*a.maxBlocks:]
	kvBase := func(b int) int { return (int(table[b])*kc.kvHeads + g) * bs * hd }
	kf, vf := layerOf(kc.kf, a.layer), layerOf(kc.vf, a.layer)
	ku, vu := layerOf(kc.ku, a.layer), layerOf(kc.vu, a.layer)
	k8, v8 := layerOf(kc.k8, a.layer), layerOf(kc.v8, a.layer)
	negInf := float32(math.Inf(-1))
	// Chunks are aligned to positions (cb blocks from key 0), whatever the
	// tile, so that a row's sums do not depend on its tile; blocks before
	// the window are skipped (they hold only keys masked for every row).
	for c0 := bFirst / cb * cb; c0 < nb; c0 += cb {
		b0, b1 := max(c0, bFirst), min(nb, c0+cb)
		k0 := c0 * bs // the chunk's first key position
		s := sc.s[:M*ck]
		// S = Q·Kᵀ, whole blocks (a partial block's stale slots are masked
		// below); the chunk's blocks outside b0..b1 are masked throughout.
		for b := b0; b < b1; b++ {
			base := kvBase(b)
			// The blocks are scattered: ask for the next keys and these
			// values ahead of use.
			if b+1 < nb {
				prefetchBlock(kc, kf, ku, k8, kvBase(b+1), hd*bs)
			}
			prefetchBlock(kc, vf, vu, v8, base, min(bs, n-b*bs)*hd)
			keys := blockF32(kc, kf, ku, k8, base, hd*bs, sc.kf)
			kernels.GemmNN(s[(b-c0)*bs:], ck, q, hd, keys, bs, M, bs, hd, false)
		}
		for ti, tok := range toks {
			// Row ti's keys: from its window's first to its position.
			p := int(a.pos[tok])
			lo, hi := max(b0*bs, a.firstKey(int32(p)))-k0, min(b1*bs, p+1)-k0
			for h := range group {
				m := ti*group + h
				row := s[m*ck : (m+1)*ck]
				if hi <= lo {
					clear(row) // no key of this chunk: P = 0, max and sum stay
					continue
				}
				for j := range lo {
					row[j] = negInf
				}
				for j := hi; j < ck; j++ {
					row[j] = negInf
				}
				// Online softmax (a NaN score poisons the row through
				// ExpSum whatever the max).
				mOld := mx[m]
				mNew := kernels.RowMax(row[lo:hi], mOld)
				alpha := float32(1)
				if mNew != mOld {
					alpha = kernels.Exp(mOld - mNew)
					mx[m] = mNew
					if alpha != 1 {
						orow := o[m*hd : (m+1)*hd]
						for d := range orow {
							orow[d] *= alpha
						}
					}
				}
				l[m] = l[m]*alpha + kernels.ExpSum(row, mNew)
			}
		}
		// O += P·V against the value rows, valid keys only.
		for b := b0; b < b1; b++ {
			valid := min(bs, n-b*bs)
			base := kvBase(b)
			vals := blockF32(kc, vf, vu, v8, base, valid*hd, sc.vf)
			kernels.GemmNN(o, hd, s[(b-c0)*bs:], ck, vals, hd, M, hd, valid, true)
		}
	}
	// out = O / l, back to [token][head][dim].
	for ti, tok := range toks {
		out := a.dst.f32[int(tok)*a.dst.cols+g*group*hd:]
		for h := range group {
			m := ti*group + h
			inv := 1 / l[m]
			oh := out[h*hd : (h+1)*hd]
			for d, v := range o[m*hd : (m+1)*hd] {
				oh[d] = v * inv
			}
		}
	}
}

// blockF32 returns n elements at base of one layer's K or V cache (f32,
// 16-bit or fp8 as the cache's dtype) as f32: the cache itself, or the
// elements widened into scratch.
func blockF32(kc *KVCache, f []float32, u []uint16, b8 []uint8, base, n int, scratch []float32) []float32 {
	switch kc.dt {
	case ml.BF16:
		kernels.BF16ToF32(scratch[:n], u[base:base+n])
	case ml.F16:
		kernels.F16ToF32(scratch[:n], u[base:base+n])
	case ml.F8:
		f8ToF32(scratch[:n], b8[base:base+n])
	default:
		return f[base : base+n]
	}
	return scratch[:n]
}

// prefetchBlock prefetches n elements at base of one layer's K or V
// cache (f32, 16-bit or fp8 as the cache's dtype).
func prefetchBlock(kc *KVCache, f []float32, u []uint16, b8 []uint8, base, n int) {
	switch kc.dt {
	case ml.F32:
		kernels.Prefetch(f[base : base+n])
	case ml.BF16, ml.F16:
		kernels.Prefetch(u[base : base+n])
	case ml.F8:
		kernels.Prefetch(b8[base : base+n])
	}
}

func layerOf[T any](x [][]T, l int) []T {
	if x == nil {
		return nil
	}
	return x[l]
}
