package cpu

import (
	"fmt"
	"math"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu/kernels"
)

// KVCache holds every layer's keys and values by block and KV head, so that
// attention runs as small matrix products over whole blocks:
//   - keys:   [block][kvHead][slot in block][headDim] — a block's keys of one
//     head are a blockSize×headDim matrix (q·Kᵀ is a GEMM against it);
//   - values: [block][kvHead][headDim][slot in block] — transposed, so P·V is
//     a GEMM against a headDim×blockSize matrix.
//
// Its memory is one arena mapped outside the Go heap (see arena).
type KVCache struct {
	layers, numBlocks, blockSize, kvHeads, headDim int
	dt                                             ml.DType
	kf, vf                                         [][]float32 // F32, per layer
	ku, vu                                         [][]uint16  // BF16/F16, per layer
	mem                                            *arena
}

func (c *KVCache) NumBlocks() int  { return c.numBlocks }
func (c *KVCache) BlockSize() int  { return c.blockSize }
func (c *KVCache) DType() ml.DType { return c.dt }

// Bytes is the memory the cache holds.
func (c *KVCache) Bytes() int64 {
	return 2 * int64(c.layers) * int64(c.numBlocks*c.blockSize*c.kvHeads*c.headDim) * int64(c.dt.Size())
}

func (b *Backend) NewKVCache(layers, numBlocks, blockSize, numKVHeads, headDim int, dt ml.DType) (ml.KVCache, error) {
	if layers <= 0 || numBlocks <= 0 || blockSize <= 0 || numKVHeads <= 0 || headDim <= 0 {
		return nil, fmt.Errorf("%w: KV cache of %d layers, %d blocks of %d, %d heads of %d",
			ErrShape, layers, numBlocks, blockSize, numKVHeads, headDim)
	}
	c := &KVCache{layers: layers, numBlocks: numBlocks, blockSize: blockSize, kvHeads: numKVHeads, headDim: headDim, dt: dt}
	n := numBlocks * blockSize * numKVHeads * headDim
	if dt != ml.F32 && dt != ml.BF16 && dt != ml.F16 {
		return nil, fmt.Errorf("%w: KV cache dtype %s (want float32, bfloat16 or float16)", ml.ErrUnsupported, dt)
	}
	if n/numBlocks != blockSize*numKVHeads*headDim || n > math.MaxInt/(2*layers*dt.Size()) {
		return nil, fmt.Errorf("%w: KV cache of %d layers, %d blocks of %d, %d heads of %d overflows",
			ErrShape, layers, numBlocks, blockSize, numKVHeads, headDim)
	}
	sizes := make([]int, 2*layers)
	for i := range sizes {
		sizes[i] = n * dt.Size()
	}
	mem, err := newArena(c, carvedSize(sizes...))
	if err != nil {
		return nil, err
	}
	c.mem = mem
	cv := &carver{mem: mem.mem}
	switch dt {
	case ml.F32:
		c.kf, c.vf = make([][]float32, layers), make([][]float32, layers)
		for l := range layers {
			c.kf[l], c.vf[l] = carve[float32](cv, n), carve[float32](cv, n)
		}
	default:
		c.ku, c.vu = make([][]uint16, layers), make([][]uint16, layers)
		for l := range layers {
			c.ku[l], c.vu[l] = carve[uint16](cv, n), carve[uint16](cv, n)
		}
	}
	return c, nil
}

// FreeKVCache unmaps the cache's memory at once (the cache must not be in
// use: no step may run on it any more).
func (b *Backend) FreeKVCache(c ml.KVCache) {
	if kc, ok := c.(*KVCache); ok && kc != nil {
		kc.kf, kc.vf, kc.ku, kc.vu = nil, nil, nil, nil
		kc.mem.free()
		kc.mem = nil
	}
}

func asCache(c ml.KVCache, layer int) (*KVCache, error) {
	kc, ok := c.(*KVCache)
	if !ok || kc == nil || (kc.kf == nil && kc.ku == nil) {
		return nil, fmt.Errorf("%w: not a live cpu KV cache (%T)", ErrShape, c)
	}
	if layer < 0 || layer >= kc.layers {
		return nil, fmt.Errorf("%w: layer %d of a %d-layer KV cache", ErrShape, layer, kc.layers)
	}
	return kc, nil
}

func (b *Backend) WriteKV(c ml.KVCache, layer int, k, v, slots ml.Tensor) error {
	kc, err := asCache(c, layer)
	if err != nil {
		return err
	}
	kt, err := asTensor(k, "WriteKV k", f32Only)
	if err != nil {
		return err
	}
	vt, err := asTensor(v, "WriteKV v", f32Only)
	if err != nil {
		return err
	}
	dim := kc.kvHeads * kc.headDim
	if kt.cols != dim || vt.cols != dim || kt.rows != vt.rows {
		return fmt.Errorf("%w: WriteKV k %v, v %v into %d KV heads of %d", ErrShape, kt, vt, kc.kvHeads, kc.headDim)
	}
	sl, err := indices(slots, "WriteKV slots", kt.rows)
	if err != nil {
		return err
	}
	nSlots := kc.numBlocks * kc.blockSize
	for i, s := range sl {
		if s < 0 || int(s) >= nSlots {
			return fmt.Errorf("%w: WriteKV slot %d at %d outside %d slots", ErrShape, s, i, nSlots)
		}
	}
	// Small: a copy per token row, on the caller.
	bs, hd := kc.blockSize, kc.headDim
	wkvTmp := b.wkvTmp[:]
	for i, slot := range sl {
		blk, off := int(slot)/bs, int(slot)%bs
		for g := range kc.kvHeads {
			src := kt.f32[i*dim+g*hd : i*dim+(g+1)*hd]
			vsrc := vt.f32[i*dim+g*hd : i*dim+(g+1)*hd]
			base := (blk*kc.kvHeads + g) * bs * hd
			ko := base + off*hd // key row
			switch kc.dt {
			case ml.F32:
				copy(kc.kf[layer][ko:ko+hd], src)
				vdst := kc.vf[layer][base:]
				for d, x := range vsrc {
					vdst[d*bs+off] = x
				}
			case ml.BF16, ml.F16:
				vdst := kc.vu[layer][base:]
				for d0 := 0; d0 < hd; d0 += len(wkvTmp) {
					d1 := min(hd, d0+len(wkvTmp))
					// Direct calls (not a func value) keep tmp on the stack.
					tmp := wkvTmp[:d1-d0]
					if kc.dt == ml.BF16 {
						kernels.F32ToBF16(kc.ku[layer][ko+d0:ko+d1], src[d0:d1])
						kernels.F32ToBF16(tmp, vsrc[d0:d1])
					} else {
						kernels.F32ToF16(kc.ku[layer][ko+d0:ko+d1], src[d0:d1])
						kernels.F32ToF16(tmp, vsrc[d0:d1])
					}
					for d := d0; d < d1; d++ {
						vdst[d*bs+off] = tmp[d-d0]
					}
				}
			}
		}
	}
	return nil
}

// attnScratch is one worker's buffers, grown (rarely) before a dispatch.
type attnScratch struct {
	q      []float32 // the group's query heads, pre-scaled: group × headDim
	scores []float32 // block-major: [block][group][slot], group × context
	tmp    []float32 // one block's P·V: group × headDim
	pc     []float32 // a partial block's probabilities, compacted
	vc     []float32 // a partial block's values (f32, compacted)
	u16    []uint16  // a partial block's values, compacted before widening
}

// attentionTask runs one item per (token, KV head): the group of query
// heads sharing that KV head is one GEMM per block against the block's
// keys, then against its values.
type attentionTask struct {
	dst, q         *Tensor
	kc             *KVCache
	layer          int
	tokSeq, pos    []int32
	bt             []int32
	maxBlocks      int
	heads, kvHeads int
	hd             int
	scale          float32
	window         int
	scratch        []attnScratch
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
	maxCtx := 0
	for i := range T {
		s, p := tokSeq[i], pos[i]
		if s < 0 || int(s) >= S || p < 0 {
			return fmt.Errorf("%w: Attention token %d: sequence %d of %d, position %d", ErrShape, i, s, S, p)
		}
		seqMax[s] = max(seqMax[s], p)
		maxCtx = max(maxCtx, int(p)+1)
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

	a := &b.attn
	group := H / G
	bs := kc.blockSize
	ctxSlots := (maxCtx + bs - 1) / bs * bs
	for i := range a.scratch {
		sc := &a.scratch[i]
		if len(sc.scores) < group*ctxSlots {
			sc.scores = make([]float32, group*ctxSlots*5/4)
		}
		if len(sc.q) < group*hd {
			sc.q, sc.tmp = make([]float32, group*hd), make([]float32, group*hd)
		}
		if len(sc.pc) < group*bs {
			sc.pc = make([]float32, group*bs)
		}
		if len(sc.vc) < hd*bs {
			sc.vc, sc.u16 = make([]float32, hd*bs), make([]uint16, hd*bs)
		}
	}
	a.dst, a.q, a.kc, a.layer = d, qt, kc, layer
	a.tokSeq, a.pos, a.bt, a.maxBlocks = tokSeq, pos, bt, MB
	a.heads, a.kvHeads, a.hd, a.scale, a.window = H, G, hd, meta.Scale, meta.Window
	b.pool.runSerialOr(a, T*G, T*G > 1)
	a.dst, a.q, a.kc, a.tokSeq, a.pos, a.bt = nil, nil, nil, nil, nil, nil
	return nil
}

func (a *attentionTask) item(w, item int) {
	a.head(item/a.kvHeads, item%a.kvHeads, &a.scratch[w])
}

// gemm is dst[T,N] = x[T,K]·w[N,K]ᵀ over a block of the cache's dtype.
func (a *attentionTask) gemm(dst []float32, ldd int, x []float32, f []float32, u []uint16, o, T, N, K int) {
	switch a.kc.dt {
	case ml.F32:
		kernels.GemmF32(dst, ldd, x, f[o:o+N*K], T, N, K)
	case ml.BF16:
		kernels.GemmBF16(dst, ldd, x, u[o:o+N*K], T, N, K)
	case ml.F16:
		kernels.GemmF16(dst, ldd, x, u[o:o+N*K], T, N, K)
	}
}

func (a *attentionTask) head(t, g int, sc *attnScratch) {
	kc, hd, group, bs := a.kc, a.hd, a.heads/a.kvHeads, a.kc.blockSize
	n := int(a.pos[t]) + 1
	nb := (n + bs - 1) / bs
	// A sliding window skips the blocks before it and masks the slots
	// before it in its first block.
	start := 0
	if a.window > 0 {
		start = max(0, n-a.window)
	}
	b0 := start / bs
	table := a.bt[int(a.tokSeq[t])*a.maxBlocks:]
	out := a.dst.f32[t*a.dst.cols+g*group*hd : t*a.dst.cols+(g+1)*group*hd]
	kf, vf := layerOf(kc.kf, a.layer), layerOf(kc.vf, a.layer)
	ku, vu := layerOf(kc.ku, a.layer), layerOf(kc.vu, a.layer)

	// The group's heads are contiguous in q; scale them once.
	q := sc.q[:group*hd]
	for i, v := range a.q.f32[t*a.q.cols+g*group*hd : t*a.q.cols+(g+1)*group*hd] {
		q[i] = v * a.scale
	}
	// Scores, block by block: [block][head][slot].
	blockBase := func(b int) int { return (int(table[b])*kc.kvHeads + g) * bs * hd }
	scores := sc.scores[:nb*group*bs]
	for b := b0; b < nb; b++ {
		valid := min(bs, n-b*bs)
		a.gemm(scores[b*group*bs:], bs, q, kf, ku, blockBase(b), group, valid, hd)
	}
	if skip := start - b0*bs; skip > 0 {
		for h := range group {
			row := scores[b0*group*bs+h*bs:]
			for j := range skip {
				row[j] = float32(math.Inf(-1))
			}
		}
	}
	// Softmax per head over its n scores.
	var inv [maxGroup]float32
	for h := range group {
		mx := float32(math.Inf(-1))
		for b := b0; b < nb; b++ {
			row := scores[b*group*bs+h*bs : b*group*bs+h*bs+min(bs, n-b*bs)]
			for _, v := range row {
				mx = max(mx, v)
			}
		}
		var sum float32
		for b := b0; b < nb; b++ {
			row := scores[b*group*bs+h*bs : b*group*bs+h*bs+min(bs, n-b*bs)]
			for j, v := range row {
				e := expf(v - mx)
				row[j] = e
				sum += e
			}
		}
		if h < maxGroup {
			inv[h] = 1 / sum
		} else {
			// Larger groups than any model has: normalise the scores now.
			for b := b0; b < nb; b++ {
				row := scores[b*group*bs+h*bs : b*group*bs+h*bs+min(bs, n-b*bs)]
				for j := range row {
					row[j] /= sum
				}
			}
		}
	}
	// P·V, block by block, against the transposed values.
	clear(out)
	tmp := sc.tmp[:group*hd]
	for b := b0; b < nb; b++ {
		valid := min(bs, n-b*bs)
		base := blockBase(b)
		if valid == bs {
			a.gemm(tmp, hd, scores[b*group*bs:], vf, vu, base, group, hd, bs)
		} else {
			// A partial block: compact P and V to valid columns (the rest of
			// the block holds stale data, possibly of other sequences).
			p := sc.pc[:group*valid]
			for h := range group {
				copy(p[h*valid:(h+1)*valid], scores[b*group*bs+h*bs:])
			}
			v := sc.vc[:hd*valid]
			for d := range hd {
				src := base + d*bs
				switch kc.dt {
				case ml.F32:
					copy(v[d*valid:(d+1)*valid], vf[src:src+valid])
				default:
					copy(sc.u16[d*valid:(d+1)*valid], vu[src:src+valid])
				}
			}
			switch kc.dt {
			case ml.BF16:
				kernels.BF16ToF32(v, sc.u16[:hd*valid])
			case ml.F16:
				kernels.F16ToF32(v, sc.u16[:hd*valid])
			}
			kernels.GemmF32(tmp, hd, p, v, group, hd, valid)
		}
		for i, x := range tmp {
			out[i] += x
		}
	}
	for h := 0; h < group && h < maxGroup; h++ {
		oh := out[h*hd : (h+1)*hd]
		for i := range oh {
			oh[i] *= inv[h]
		}
	}
}

func layerOf[T any](x [][]T, l int) []T {
	if x == nil {
		return nil
	}
	return x[l]
}

// maxGroup bounds the query heads per KV head kept in a stack array; larger
// groups normalise their scores in place instead.
const maxGroup = 64
