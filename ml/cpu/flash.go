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
// sharing that KV head) are the item's M query rows, held in the vector
// lanes: Qᵀ is headDim×Mp (Mp = M rounded up to the kernels' vector
// length), scores are Sᵀ (one row per key, one lane per query row) and the
// output accumulates as Oᵀ (headDim×Mp). So each K/V block is read once per
// tile and KV head, for every query row of the tile at once, and:
//
//   - Sᵀ = K·Qᵀ and Oᵀ += V·Pᵀ are broadcast GEMMs (kernels.GemmNN) straight
//     from the cache's layouts (keys [slot][headDim], values transposed
//     [headDim][slot]; 16-bit blocks are widened to f32 first), reading only
//     a partial block's valid slots: stale slots never enter a product;
//   - the softmax is online over chunks of blocks (kernels.SoftmaxCols: a
//     running max and sum per row, vertical vector ops, a vector exp), and
//     Oᵀ is rescaled only when some row's max moved;
//   - causal masking is by position: lanes whose token's position is below a
//     key's position get -Inf (exactly 0 after the exp). Tokens may attend
//     to a cached prefix: a tile reads keys 0..its largest position. A
//     sliding window (meta.Window) starts the keys at the window of the
//     tile's first token (earlier blocks are never read) and masks the keys
//     before each lane's own window the same way.
//
// Every output row is computed by the same sequence of operations
// whatever tile it lands in (chunks are aligned to positions, masked keys
// add exact zeros), so batching does not change results.

// flashLanes is the number of query rows a tile aims for.
const flashLanes = 128

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
	qt, o        []float32 // headDim × Mp: Qᵀ (scaled), Oᵀ
	s            []float32 // chunk keys × Mp: Sᵀ, then Pᵀ
	mx, l, alpha []float32 // Mp: running max and sum, rescale factors
	kf, vf       []float32 // a 16-bit K or V block widened to f32
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
	tqMax := max(1, flashLanes/group)
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
	mp := 0
	for _, t := range a.tiles {
		mp = max(mp, lanesFor(int(t.n)*group))
	}
	ck := chunkBlocks(bs) * bs
	for i := range a.scratch {
		sc := &a.scratch[i]
		if len(sc.qt) < hd*mp {
			sc.qt, sc.o = make([]float32, hd*mp), make([]float32, hd*mp)
		}
		if len(sc.s) < ck*mp {
			sc.s = make([]float32, ck*mp)
		}
		if len(sc.mx) < mp {
			sc.mx, sc.l, sc.alpha = make([]float32, mp), make([]float32, mp), make([]float32, mp)
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

// lanesFor rounds m query rows up to whole vectors.
func lanesFor(m int) int {
	l := kernels.Lanes()
	return (m + l - 1) / l * l
}

// chunkBlocks is the number of blocks of a softmax chunk.
func chunkBlocks(bs int) int { return max(1, flashChunk/bs) }

func (a *flashTask) item(w, item int) {
	a.tile(&a.tiles[item/a.kvHeads], item%a.kvHeads, &a.scratch[w])
}

func (a *flashTask) tile(t *flashTile, g int, sc *flashScratch) {
	kc, hd, group, bs := a.kc, a.hd, a.heads/a.kvHeads, a.kc.blockSize
	toks := a.order[t.start : t.start+t.n]
	M := len(toks) * group
	mp := lanesFor(M)

	// Qᵀ, scaled; padding lanes are 0 (never masked: their scores stay
	// finite and their results are dropped).
	qt := sc.qt[:hd*mp]
	for ti, tok := range toks {
		qrow := a.q.f32[int(tok)*a.q.cols+g*group*hd:]
		for h := range group {
			m := ti*group + h
			qh := qrow[h*hd : (h+1)*hd]
			for d, v := range qh {
				qt[d*mp+m] = v * a.scale
			}
		}
	}
	for m := M; m < mp; m++ {
		for d := range hd {
			qt[d*mp+m] = 0
		}
	}
	mx, l, alpha := sc.mx[:mp], sc.l[:mp], sc.alpha[:mp]
	for i := range mx {
		mx[i] = float32(math.Inf(-1))
	}
	clear(l)
	o := sc.o[:hd*mp]
	clear(o)

	n := int(t.maxPos) + 1 // keys firstKey(minPos)..maxPos
	nb := (n + bs - 1) / bs
	bFirst := a.firstKey(t.minPos) / bs
	cb := chunkBlocks(bs)
	table := a.bt[int(t.seq)*a.maxBlocks:]
	kvBase := func(b int) int { return (int(table[b])*kc.kvHeads + g) * bs * hd }
	kf, vf := layerOf(kc.kf, a.layer), layerOf(kc.vf, a.layer)
	ku, vu := layerOf(kc.ku, a.layer), layerOf(kc.vu, a.layer)
	k8, v8 := layerOf(kc.k8, a.layer), layerOf(kc.v8, a.layer)
	negInf := float32(math.Inf(-1))
	// Chunks are aligned to positions (cb blocks from key 0), whatever the
	// tile, so that a row's sums do not depend on its tile; blocks before
	// the window are skipped (they hold only keys masked for every lane).
	first := true
	for c0 := bFirst / cb * cb; c0 < nb; c0 += cb {
		b0, b1 := max(c0, bFirst), min(nb, c0+cb)
		k0 := b0 * bs // the chunk's first key position
		rows := min(n, b1*bs) - k0
		s := sc.s[:rows*mp]
		// Sᵀ = K·Qᵀ, block by block, valid keys only.
		for b := b0; b < b1; b++ {
			valid := min(bs, n-b*bs)
			base := kvBase(b)
			var keys []float32
			switch kc.dt {
			case ml.F32:
				keys = kf[base : base+valid*hd]
			case ml.BF16:
				keys = sc.kf[:valid*hd]
				kernels.BF16ToF32(keys, ku[base:base+valid*hd])
			case ml.F16:
				keys = sc.kf[:valid*hd]
				kernels.F16ToF32(keys, ku[base:base+valid*hd])
			case ml.F8:
				keys = sc.kf[:valid*hd]
				f8ToF32(keys, k8[base:base+valid*hd])
			}
			kernels.GemmNN(s[(b-b0)*bs*mp:], mp, keys, hd, qt, mp, valid, mp, hd, false)
		}
		// Causal mask: key k0+j is hidden from the tokens at positions
		// below it, a prefix of the tile's (position-sorted) tokens: their
		// lanes come first.
		hidden := 0
		for j := max(0, int(t.minPos)+1-k0); j < rows; j++ {
			kp := int32(k0 + j)
			for hidden < len(toks) && a.pos[toks[hidden]] < kp {
				hidden++
			}
			row := s[j*mp : j*mp+hidden*group]
			for m := range row {
				row[m] = negInf
			}
		}
		// Window mask: key kp is hidden from the tokens at positions kp+window
		// and above, a suffix of the tile's tokens.
		if w := a.window; w > 0 {
			from := 0 // the first token that no longer sees the key
			for j := 0; j < rows && k0+j+w <= int(t.maxPos); j++ {
				kp := int32(k0 + j + w)
				for from < len(toks) && a.pos[toks[from]] < kp {
					from++
				}
				row := s[j*mp+from*group : j*mp+M]
				for m := range row {
					row[m] = negInf
				}
			}
		}
		if kernels.SoftmaxCols(s, rows, mp, mx, l, alpha) && !first {
			kernels.ScaleCols(o, hd, mp, alpha)
		}
		first = false
		// Oᵀ += V·Pᵀ against the transposed values, valid keys only.
		for b := b0; b < b1; b++ {
			valid := min(bs, n-b*bs)
			base := kvBase(b)
			var vals []float32
			switch kc.dt {
			case ml.F32:
				vals = vf[base : base+hd*bs]
			case ml.BF16:
				vals = sc.vf[:hd*bs]
				kernels.BF16ToF32(vals, vu[base:base+hd*bs])
			case ml.F16:
				vals = sc.vf[:hd*bs]
				kernels.F16ToF32(vals, vu[base:base+hd*bs])
			case ml.F8:
				vals = sc.vf[:hd*bs]
				f8ToF32(vals, v8[base:base+hd*bs])
			}
			kernels.GemmNN(o, mp, vals, bs, s[(b-b0)*bs*mp:], mp, hd, mp, valid, true)
		}
	}
	// out = Oᵀ / l, back to [token][head][dim].
	for ti, tok := range toks {
		out := a.dst.f32[int(tok)*a.dst.cols+g*group*hd:]
		for h := range group {
			m := ti*group + h
			inv := 1 / l[m]
			oh := out[h*hd : (h+1)*hd]
			for d := range oh {
				oh[d] = o[d*mp+m] * inv
			}
		}
	}
}

func layerOf[T any](x [][]T, l int) []T {
	if x == nil {
		return nil
	}
	return x[l]
}
