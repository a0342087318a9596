package cpu

import (
	"fmt"
	"math"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu/kernels"
)

// KVCache holds every layer's keys and values, slot-major: slot s, KV head
// g starts at (s*kvHeads+g)*headDim, so one token's head is contiguous.
type KVCache struct {
	layers, numBlocks, blockSize, kvHeads, headDim int
	dt                                             ml.DType
	kf, vf                                         [][]float32 // F32, per layer
	ku, vu                                         [][]uint16  // BF16/F16, per layer
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
	switch dt {
	case ml.F32:
		c.kf, c.vf = make([][]float32, layers), make([][]float32, layers)
		for l := range layers {
			c.kf[l], c.vf[l] = make([]float32, n), make([]float32, n)
		}
	case ml.BF16, ml.F16:
		c.ku, c.vu = make([][]uint16, layers), make([][]uint16, layers)
		for l := range layers {
			c.ku[l], c.vu[l] = make([]uint16, n), make([]uint16, n)
		}
	default:
		return nil, fmt.Errorf("%w: KV cache dtype %s (want float32, bfloat16 or float16)", ml.ErrUnsupported, dt)
	}
	return c, nil
}

func (b *Backend) FreeKVCache(c ml.KVCache) {
	if kc, ok := c.(*KVCache); ok && kc != nil {
		kc.kf, kc.vf, kc.ku, kc.vu = nil, nil, nil, nil
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
	for i, s := range sl {
		src := kt.f32[i*dim : (i+1)*dim]
		vsrc := vt.f32[i*dim : (i+1)*dim]
		o := int(s) * dim
		switch kc.dt {
		case ml.F32:
			copy(kc.kf[layer][o:o+dim], src)
			copy(kc.vf[layer][o:o+dim], vsrc)
		case ml.BF16:
			kernels.F32ToBF16(kc.ku[layer][o:o+dim], src)
			kernels.F32ToBF16(kc.vu[layer][o:o+dim], vsrc)
		case ml.F16:
			kernels.F32ToF16(kc.ku[layer][o:o+dim], src)
			kernels.F32ToF16(kc.vu[layer][o:o+dim], vsrc)
		}
	}
	return nil
}

// attnScratch is one worker's buffers, grown (rarely) before a dispatch.
type attnScratch struct {
	scores []float32 // group × context
	krow   []float32 // one converted K or V head row
}

// attentionTask runs one item per (token, KV head): the group of query
// heads sharing that KV head reads each key and value once.
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
	for i := range a.scratch {
		if len(a.scratch[i].scores) < group*maxCtx {
			a.scratch[i].scores = make([]float32, group*maxCtx*5/4)
		}
		if len(a.scratch[i].krow) < hd {
			a.scratch[i].krow = make([]float32, hd)
		}
	}
	a.dst, a.q, a.kc, a.layer = d, qt, kc, layer
	a.tokSeq, a.pos, a.bt, a.maxBlocks = tokSeq, pos, bt, MB
	a.heads, a.kvHeads, a.hd, a.scale = H, G, hd, meta.Scale
	b.pool.runSerialOr(a, T*G, T*G > 1)
	a.dst, a.q, a.kc, a.tokSeq, a.pos, a.bt = nil, nil, nil, nil, nil, nil
	return nil
}

func (a *attentionTask) item(w, item int) {
	a.head(item/a.kvHeads, item%a.kvHeads, &a.scratch[w])
}

// row returns KV head g of slot s as f32, converting into buf when the
// cache holds 16-bit values.
func (a *attentionTask) row(f [][]float32, u [][]uint16, s, g int, buf []float32) []float32 {
	kc, hd := a.kc, a.hd
	o := (s*kc.kvHeads + g) * hd
	switch kc.dt {
	case ml.BF16:
		kernels.BF16ToF32(buf, u[a.layer][o:o+hd])
		return buf
	case ml.F16:
		kernels.F16ToF32(buf, u[a.layer][o:o+hd])
		return buf
	}
	return f[a.layer][o : o+hd]
}

func (a *attentionTask) head(t, g int, sc *attnScratch) {
	hd, group := a.hd, a.heads/a.kvHeads
	n := int(a.pos[t]) + 1
	bs := a.kc.blockSize
	table := a.bt[int(a.tokSeq[t])*a.maxBlocks:]
	qrow := a.q.f32[t*a.q.cols:]
	out := a.dst.f32[t*a.dst.cols:]
	scores := sc.scores[:group*n]
	buf := sc.krow[:hd]

	// Scores q·k for every key of the sequence, all heads of the group.
	for j := 0; j < n; j++ {
		s := int(table[j/bs])*bs + j%bs
		k := a.row(a.kc.kf, a.kc.ku, s, g, buf)
		for h := range group {
			qh := qrow[(g*group+h)*hd : (g*group+h+1)*hd]
			scores[h*n+j] = kernels.Dot(qh, k) * a.scale
		}
	}
	// Softmax per head, normalised once at the end.
	var inv [maxGroup]float32
	for h := range group {
		row := scores[h*n : (h+1)*n]
		mx := float32(math.Inf(-1))
		for _, v := range row {
			mx = max(mx, v)
		}
		var sum float32
		for j, v := range row {
			e := expf(v - mx)
			row[j] = e
			sum += e
		}
		if h < maxGroup {
			inv[h] = 1 / sum
		}
		oh := out[(g*group+h)*hd : (g*group+h+1)*hd]
		clear(oh)
	}
	for j := 0; j < n; j++ {
		s := int(table[j/bs])*bs + j%bs
		v := a.row(a.kc.vf, a.kc.vu, s, g, buf)
		for h := range group {
			oh := out[(g*group+h)*hd : (g*group+h+1)*hd]
			kernels.Axpy(scores[h*n+j], v, oh)
		}
	}
	for h := range group {
		oh := out[(g*group+h)*hd : (g*group+h+1)*hd]
		var f float32
		if h < maxGroup {
			f = inv[h]
		} else {
			var sum float32
			for _, v := range scores[h*n : (h+1)*n] {
				sum += v
			}
			f = 1 / sum
		}
		for i := range oh {
			oh[i] *= f
		}
	}
}

// maxGroup bounds the query heads per KV head kept in a stack array; larger
// groups recompute their sums.
const maxGroup = 64
