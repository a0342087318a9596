package decoder

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"unsafe"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/model"
)

// scratch holds a step's activations and metadata tensors, sized for the
// largest step seen so far: a step only allocates when it is bigger than
// every earlier one.
type scratch struct {
	capT, capS, capB, capL int

	h, xn, q, k, v, attn, down, gu, act ml.Tensor // [capT, ...]
	// Sparse layers' buffers (nil for dense models): router logits
	// [capT, E], the top-k weights and experts [capT*k, 1], each expert
	// row's token [capT*k, 1] (constant: r/k), and the expert rows'
	// activations [capT*k, ...].
	rlog, topW, topID, tokOf, egu, eact, eout ml.Tensor
	// ids holds a step's integer inputs (token ids, positions, each
	// token's sequence and KV slot, logit rows, block tables) packed as
	// idsLayout places them, so that a step uploads them in one copy: a
	// copy per array cost a driver call and a queued copy each, on the
	// critical path of every decode step.
	ids              ml.Tensor // I32 [idsLen(capT, capS*capB, capL), 1]
	hIDs             []int32   // its host image
	argmax           ml.Tensor // I32 [capL, 1]
	masks            ml.Tensor // I32 [≥ capL, maskWords(V)]: greedy rows' allowed tokens, made on first use
	hMasks           []int32   // its host image
	hMask            []uint32  // one row's mask, on the host path
	selH, selD, selX ml.Tensor // [capL, H]
	logits           ml.Tensor // [capL, V]

	meta ml.AttentionMeta
	vw   stepViews
}

// idsLayout gives the offsets in scratch.ids of a step's positions, token
// sequences, slots, logit rows and block tables (the T token ids come
// first). Each array starts 16-byte aligned.
func idsLayout(T, L int) (pos, tokSeq, slots, logitIdx, bt int) {
	a := func(n int) int { return (n + 3) &^ 3 }
	pos = a(T)
	tokSeq = pos + a(T)
	slots = tokSeq + a(T)
	logitIdx = slots + a(T)
	bt = logitIdx + a(L)
	return
}

// idsLen is the packed length of a step's integer inputs.
func idsLen(T, btLen, L int) int {
	_, _, _, _, bt := idsLayout(T, L)
	return bt + btLen
}

func (s *scratch) free(be ml.Backend) {
	for _, t := range []ml.Tensor{s.h, s.xn, s.q, s.k, s.v, s.attn, s.down, s.gu, s.act,
		s.rlog, s.topW, s.topID, s.tokOf, s.egu, s.eact, s.eout,
		s.ids, s.argmax, s.masks, s.selH, s.selD, s.selX, s.logits} {
		if t != nil {
			be.Free(t)
		}
	}
	*s = scratch{}
}

// grow rounds a new capacity up so that slowly growing steps do not
// reallocate every time.
func grow(need, old int) int {
	c := max(need, old+old/4)
	return (c + 15) &^ 15
}

func (m *Model) ensure(T, S, B, L int) error {
	s := &m.s
	be := m.be
	var err error
	alloc := func(dt ml.DType, rows, cols int) ml.Tensor {
		if err != nil {
			return nil
		}
		var t ml.Tensor
		t, err = be.NewTensor(dt, rows, cols)
		return t
	}
	replace := func(p *ml.Tensor, t ml.Tensor) {
		s.vw = stepViews{} // views of replaced tensors are stale
		if *p != nil {
			be.Free(*p)
		}
		*p = t
	}
	resized := T > s.capT || S > s.capS || B > s.capB || L > s.capL
	if T > s.capT {
		c := grow(T, s.capT)
		qd, kvd := m.nh*m.hd, m.nkv*m.hd
		qcols := qd
		if m.fused != nil {
			qcols = qd + 2*kvd // q holds the stacked q, k, v projection
		}
		for _, x := range []struct {
			p    *ml.Tensor
			dt   ml.DType
			cols int
		}{
			{&s.h, ml.F32, m.H}, {&s.xn, ml.F32, m.H}, {&s.q, ml.F32, qcols}, {&s.k, ml.F32, kvd},
			{&s.v, ml.F32, kvd}, {&s.attn, ml.F32, qd}, {&s.down, ml.F32, m.H},
			{&s.gu, ml.F32, 2 * m.I}, {&s.act, ml.F32, m.I},
		} {
			replace(x.p, alloc(x.dt, c, x.cols))
		}
		if moe := m.spec.MoE; moe != nil {
			k := moe.TopK
			replace(&s.rlog, alloc(ml.F32, c, moe.Experts))
			replace(&s.topW, alloc(ml.F32, c*k, 1))
			replace(&s.topID, alloc(ml.I32, c*k, 1))
			replace(&s.tokOf, alloc(ml.I32, c*k, 1))
			replace(&s.egu, alloc(ml.F32, c*k, 2*m.moeI))
			replace(&s.eact, alloc(ml.F32, c*k, m.moeI))
			replace(&s.eout, alloc(ml.F32, c*k, m.H))
			if err == nil {
				tok := make([]int32, c*k)
				for r := range tok {
					tok[r] = int32(r / k)
				}
				err = be.UploadI32(s.tokOf, tok)
			}
		}
		s.capT = c
	}
	if S > s.capS || B > s.capB {
		cs, cb := max(s.capS, grow(S, s.capS)), max(s.capB, grow(B, s.capB))
		if S <= s.capS {
			cs = s.capS
		}
		if B <= s.capB {
			cb = s.capB
		}
		s.capS, s.capB = cs, cb
	}
	if L > s.capL {
		c := grow(L, s.capL)
		replace(&s.argmax, alloc(ml.I32, c, 1))
		replace(&s.selH, alloc(ml.F32, c, m.H))
		replace(&s.selD, alloc(ml.F32, c, m.H))
		replace(&s.selX, alloc(ml.F32, c, m.H))
		replace(&s.logits, alloc(ml.F32, c, m.vl))
		s.capL = c
	}
	if resized {
		n := idsLen(s.capT, s.capS*s.capB, s.capL)
		replace(&s.ids, alloc(ml.I32, n, 1))
		s.hIDs = make([]int32, n)
	}
	if err != nil {
		s.free(be) // a half-grown scratch would be inconsistent
		return fmt.Errorf("decoder: allocating step buffers: %w", err)
	}
	return nil
}

// validate checks b against the model and the KV cache and returns the
// number of block-table columns the step needs.
func (m *Model) validate(b *model.Batch, logits []float32) (int, error) {
	T := len(b.Tokens)
	if len(b.Positions) != T {
		return 0, fmt.Errorf("%w: %d tokens but %d positions", model.ErrBadBatch, T, len(b.Positions))
	}
	next, maxB := 0, 0
	for i, sq := range b.Seqs {
		if sq.Start != next || sq.Len < 0 || sq.Start+sq.Len > T {
			return 0, fmt.Errorf("%w: sequence %d covers tokens [%d,%d), want it to start at %d within %d tokens",
				model.ErrBadBatch, i, sq.Start, sq.Start+sq.Len, next, T)
		}
		next += sq.Len
		for j := sq.Start; j < sq.Start+sq.Len; j++ {
			p := b.Positions[j]
			if p < 0 || int(p)/m.blockSize >= len(sq.BlockTable) {
				return 0, fmt.Errorf("%w: sequence %d: position %d outside its %d blocks of %d",
					model.ErrBadBatch, i, p, len(sq.BlockTable), m.blockSize)
			}
		}
		for _, blk := range sq.BlockTable {
			if blk < 0 || int(blk) >= m.numBlocks {
				return 0, fmt.Errorf("%w: sequence %d: block %d outside the cache's %d", model.ErrBadBatch, i, blk, m.numBlocks)
			}
		}
		maxB = max(maxB, len(sq.BlockTable))
	}
	if next != T {
		return 0, fmt.Errorf("%w: sequences cover %d of %d tokens", model.ErrBadBatch, next, T)
	}
	for i, tok := range b.Tokens {
		if tok < 0 || int(tok) >= m.V {
			return 0, fmt.Errorf("%w: token %d at %d outside the vocabulary of %d", model.ErrBadBatch, tok, i, m.V)
		}
	}
	for _, li := range b.LogitIndices {
		if li < 0 || int(li) >= T {
			return 0, fmt.Errorf("%w: logit index %d outside %d tokens", model.ErrBadBatch, li, T)
		}
	}
	if want := len(b.LogitIndices) * m.V; len(logits) != want {
		return 0, fmt.Errorf("%w: logits buffer holds %d values, want %d (%d rows of %d)",
			model.ErrBadBatch, len(logits), want, len(b.LogitIndices), m.V)
	}
	return maxB, nil
}

// Forward runs one step; see model.Model.
func (m *Model) Forward(ctx context.Context, b *model.Batch, logits []float32) error {
	return m.forward(ctx, b, nil, nil, logits)
}

// deviceArgmax is the optional backend capability ForwardArgmax uses (ml/cuda).
type deviceArgmax interface {
	ArgMax(dst, logits ml.Tensor) error
	// ArgMaxAllowed is ArgMax among the tokens set in the rows of the I32
	// bitset tensor allowed (see model.Batch.AllowedTokens).
	ArgMaxAllowed(dst, logits, allowed ml.Tensor) error
	// Launch starts the ops recorded so far without waiting for them.
	Launch() error
	DownloadI32(dst []int32, t ml.Tensor) error
}

// ArgmaxOnDevice reports whether the backend reduces greedy rows itself;
// see model.DeviceArgmaxer.
func (m *Model) ArgmaxOnDevice() bool {
	_, ok := m.be.(deviceArgmax)
	return ok
}

// ForwardArgmax runs one step and returns greedy rows as token ids; see
// model.DeviceArgmaxer. On a backend without ArgMax it is Forward plus a
// host argmax.
func (m *Model) ForwardArgmax(ctx context.Context, b *model.Batch, greedy []bool, tokens []int32, logits []float32) error {
	if len(greedy) != len(b.LogitIndices) || len(tokens) != len(b.LogitIndices) {
		return fmt.Errorf("%w: %d greedy flags and %d token slots for %d logit rows",
			model.ErrBadBatch, len(greedy), len(tokens), len(b.LogitIndices))
	}
	return m.forward(ctx, b, greedy, tokens, logits)
}

// forward is Forward and ForwardArgmax (greedy nil: every row's logits).
// A step that the device refused part of at launch (ml.ErrRetryStep: the
// GPU's cooperative decode step when the GPU is shared) runs once more; the
// backend declines that part from then on.
func (m *Model) forward(ctx context.Context, b *model.Batch, greedy []bool, tokens []int32, logits []float32) error {
	err := m.runStep(ctx, b, greedy, tokens, logits)
	if errors.Is(err, ml.ErrRetryStep) {
		err = m.runStep(ctx, b, greedy, tokens, logits)
	}
	return err
}

func (m *Model) runStep(ctx context.Context, b *model.Batch, greedy []bool, tokens []int32, logits []float32) error {
	if m.be == nil {
		return errClosed
	}
	if m.kv == nil {
		return fmt.Errorf("%w: Forward before AllocateKV", model.ErrBadBatch)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	maxB, err := m.validate(b, logits)
	if err != nil {
		return err
	}
	T, S, L := len(b.Tokens), len(b.Seqs), len(b.LogitIndices)
	if T == 0 {
		return nil
	}
	// Steps with prompt tokens come in endless shapes; on a graph-replaying
	// backend they are padded to a few (PadTokens, padL) so that they replay too.
	// Decode steps (one token per row) keep their exact size.
	Tp, Lp := T, L
	padded := m.pad && T > L
	if padded {
		Tp, Lp = PadTokens(T), padL(L)
	}
	if err := m.ensure(Tp, S, maxB, Lp); err != nil {
		return err
	}
	s, be := &m.s, m.be

	// Host-side metadata, packed as the device copy holds it: token ids,
	// positions, each token's sequence and KV slot, logit rows, block tables.
	oPos, oTokSeq, oSlots, oLogit, oBT := idsLayout(Tp, Lp)
	nIDs := idsLen(Tp, S*s.capB, Lp)
	ids := s.hIDs[:nIDs]
	toks, poss, tokSeq, slots := ids[:Tp], ids[oPos:oPos+Tp], ids[oTokSeq:oTokSeq+Tp], ids[oSlots:oSlots+Tp]
	lidx, bts := ids[oLogit:oLogit+Lp], ids[oBT:nIDs]
	copy(toks, b.Tokens)
	if m.tp != nil && m.tp.vocab {
		m.tp.localTokens(toks[:T])
	}
	copy(poss, b.Positions)
	copy(lidx, b.LogitIndices)
	maxCtx := 0
	for i, sq := range b.Seqs {
		copy(bts[i*s.capB:], sq.BlockTable) // the rest of the row is never read
		for j := sq.Start; j < sq.Start+sq.Len; j++ {
			p := int(b.Positions[j])
			tokSeq[j] = int32(i)
			slots[j] = sq.BlockTable[p/m.blockSize]*int32(m.blockSize) + int32(p%m.blockSize)
			maxCtx = max(maxCtx, p+1)
		}
	}
	if padded {
		// Padding tokens: token 0 at position 0 of the last sequence (whose
		// block 0 exists), with no KV slot; padding logit rows read token
		// 0. The last sequence's, not the first's: a flash tile of a
		// prompt's last rows and padding then holds one sequence, whose
		// rows flash serves (the first is a decode where decodes come first).
		clear(toks[T:])
		clear(poss[T:])
		clear(lidx[L:])
		for j := T; j < Tp; j++ {
			tokSeq[j] = int32(S - 1)
		}
		for j := T; j < Tp; j++ {
			slots[j] = -1
		}
		// The split count of attention follows MaxContext while it is
		// small; a fixed one keeps padded steps of one shape identical.
		maxCtx = max(maxCtx, paddedMaxContext)
	}
	vw := m.views(Tp, S, Lp)
	// Uploaded with the rest, not before the lm_head, so that the whole
	// step is recorded (and graph-replayed) as one piece.
	if err := be.UploadI32(vw.ids, ids); err != nil {
		return err
	}
	meta := &s.meta
	*meta = ml.AttentionMeta{
		NumTokens: Tp, NumSeqs: S, TokenSeq: vw.tokSeq, HostTokenSeq: tokSeq, Positions: vw.pos, BlockTables: vw.bt,
		MaxBlocks: s.capB, MaxContext: maxCtx, NumHeads: m.nh, NumKVHeads: m.nkv, HeadDim: m.hd, Scale: m.scale,
	}

	h, xn, down := vw.h, vw.xn, vw.down
	if err := be.Embedding(h, m.embed, vw.tokens); err != nil {
		return err
	}
	if m.tp != nil && m.tp.vocab {
		// Each rank looked up the tokens of its vocabulary slice (zeros
		// for the others).
		if err := m.tp.comm.AllReduceSum(h); err != nil {
			return err
		}
	}
	if m.fused != nil {
		rowsInOrder := Lp == Tp
		for i, r := range lidx {
			rowsInOrder = rowsInOrder && int(r) == i
		}
		return m.forwardFused(ctx, vw, L, rowsInOrder, greedy, b.AllowedTokens, tokens, logits)
	}
	// pending: a dense MLP's output waits in down, to be added to the
	// residual by the next norm; a sparse MLP adds its experts to h itself.
	pending := false
	for i := range m.layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		l := &m.layers[i]
		var err error
		if pending {
			err = be.AddRMSNorm(h, xn, down, l.inNorm, m.eps)
		} else {
			err = be.RMSNorm(xn, h, l.inNorm, m.eps)
		}
		if err != nil {
			return err
		}
		if pending, err = m.layer(l, i, vw); err != nil {
			return fmt.Errorf("decoder: layer %d: %w", i, err)
		}
	}
	if L == 0 {
		return be.Sync()
	}
	// Final norm and lm_head on the requested rows only.
	if err := be.GatherRows(vw.selH, h, vw.logitIdx); err != nil {
		return err
	}
	if pending {
		if err := be.GatherRows(vw.selD, down, vw.logitIdx); err != nil {
			return err
		}
		if err := be.AddRMSNorm(vw.selH, vw.selX, vw.selD, m.finalNorm, m.eps); err != nil {
			return err
		}
	} else if err := be.RMSNorm(vw.selX, vw.selH, m.finalNorm, m.eps); err != nil {
		return err
	}
	if err := be.MatMul(vw.logits, vw.selX, m.lmHead, nil); err != nil {
		return err
	}
	if m.tp != nil {
		return m.tp.fetch(m, vw, L, logits)
	}
	return m.fetchLogits(vw, L, greedy, b.AllowedTokens, tokens, logits)
}

// paddedMaxContext is the MaxContext padded steps report (at least): large
// enough that the attention split count depends on the token count only.
const paddedMaxContext = 1024

// PadTokens rounds the token count of a step that carries prompt tokens up
// to one of a few sizes, as Forward pads it on a graph-replaying backend:
// multiples of 16 up to 64, of 32 up to 256, of 128 up to 1024, then of 256.
// (Warm-ups use it to visit every padded shape.)
func PadTokens(t int) int {
	step := 256
	switch {
	case t <= 64:
		step = 16
	case t <= 256:
		step = 32
	case t <= 1024:
		step = 128
	}
	return (t + step - 1) / step * step
}

// padL rounds a step's logit row count up to a power of two (0 stays 0).
func padL(l int) int {
	if l == 0 {
		return 0
	}
	p := 1
	for p < l {
		p *= 2
	}
	return p
}

// fetchLogits copies the step's logits to the host: all of them, or with
// greedy flags, the argmax of greedy rows among the tokens allowed allows
// (4 bytes each, reduced on the device when it can) and the logits of the
// other rows only. The step is launched before allowed is asked.
func (m *Model) fetchLogits(vw *stepViews, L int, greedy []bool, allowed func(int, []uint32) bool, tokens []int32, logits []float32) error {
	be, V := m.be, m.V
	lg := vw.logits
	if vw.L != L {
		lg = be.View(vw.logits, 0, L) // padded rows stay on the device
	}
	am, onDevice := be.(deviceArgmax)
	anyGreedy := false
	for _, g := range greedy {
		anyGreedy = anyGreedy || g
	}
	if !anyGreedy || !onDevice {
		if err := be.Download(logits, lg); err != nil {
			return err
		}
		W := maskWords(V)
		for i, g := range greedy {
			if !g {
				continue
			}
			var mask []uint32
			if allowed != nil {
				m.s.hMask = slices.Grow(m.s.hMask[:0], W)[:W]
				if allowed(i, m.s.hMask) {
					mask = m.s.hMask
				}
			}
			tokens[i] = int32(hostArgmax(logits[i*V:(i+1)*V], mask))
		}
		return nil
	}
	if allowed != nil {
		// The step runs while the masks are made.
		if err := am.Launch(); err != nil {
			return err
		}
		mask, err := m.uploadMasks(vw.L, L, greedy, allowed)
		if err != nil {
			return err
		}
		if mask == nil {
			err = am.ArgMax(vw.argmax, vw.logits)
		} else {
			err = am.ArgMaxAllowed(vw.argmax, vw.logits, mask)
		}
		if err != nil {
			return err
		}
	} else if err := am.ArgMax(vw.argmax, vw.logits); err != nil {
		return err
	}
	am8 := vw.argmax
	if vw.L != L {
		am8 = be.View(vw.argmax, 0, L)
	}
	if err := am.DownloadI32(tokens, am8); err != nil {
		return err
	}
	// Runs of consecutive non-greedy rows, one copy each.
	for i := 0; i < L; {
		if greedy[i] {
			i++
			continue
		}
		j := i + 1
		for j < L && !greedy[j] {
			j++
		}
		if err := be.Download(logits[i*V:j*V], be.View(vw.logits, i, j-i)); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// maskWords is the length of an allowed-token bitset over a vocabulary.
func maskWords(V int) int { return (V + 31) / 32 }

// uploadMasks asks allowed for the greedy rows' allowed tokens and copies
// them to the device as the rows of an I32 [rows, maskWords(V)] tensor;
// rows without a constraint (and the padded rows past L) allow every
// token. It returns nil, uploading nothing, when no row is constrained.
func (m *Model) uploadMasks(rows, L int, greedy []bool, allowed func(int, []uint32) bool) (ml.Tensor, error) {
	s, W := &m.s, maskWords(m.V)
	host := slices.Grow(s.hMasks[:0], rows*W)[:rows*W]
	s.hMasks = host
	// The same memory as words, which UploadI32 copies as it is.
	words := unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(host))), len(host))
	constrained := false
	for i := range rows {
		row := words[i*W : (i+1)*W]
		if i < L && greedy[i] && allowed(i, row) {
			constrained = true
			continue
		}
		for j := range row {
			row[j] = ^uint32(0)
		}
	}
	if !constrained {
		return nil, nil
	}
	if s.masks == nil || s.masks.Rows() < rows {
		if s.masks != nil {
			m.be.Free(s.masks)
			s.masks = nil
		}
		t, err := m.be.NewTensor(ml.I32, max(rows, s.capL), W)
		if err != nil {
			return nil, err
		}
		s.masks = t
	}
	t := m.be.View(s.masks, 0, rows)
	return t, m.be.UploadI32(t, host)
}

// hostArgmax is the index of x's largest value among the tokens allowed
// allows (every token when nil), the lowest on ties (NaNs never win; 0 when
// none is allowed), as the backends' ArgMax and the sampler pick it.
func hostArgmax(x []float32, allowed []uint32) int {
	best, bi := float32(math.Inf(-1)), 0
	for i, v := range x {
		if v > best && (allowed == nil || allowed[i>>5]>>(i&31)&1 != 0) {
			best, bi = v, i
		}
	}
	return bi
}

// stepViews are the scratch tensors cut to one step's sizes; they are
// kept while consecutive steps have the same sizes (decode steps do), so
// a step does not allocate views either.
type stepViews struct {
	T, S, L                             int
	h, xn, q, k, v, attn, down, gu, act ml.Tensor
	ids, tokens, pos, tokSeq, slots, bt ml.Tensor // views of scratch.ids
	logitIdx, argmax, selH, selD, selX  ml.Tensor
	logits                              ml.Tensor
	// Sparse layers': router logits [T, E] and the T*k expert rows.
	rlog, topW, topID, tokOf, egu, eact, eout ml.Tensor
}

func (m *Model) views(T, S, L int) *stepViews {
	s, vw, be := &m.s, &m.s.vw, m.be
	if vw.h != nil && vw.T == T && vw.S == S && vw.L == L {
		return vw
	}
	r := func(t ml.Tensor, n int) ml.Tensor { return be.View(t, 0, n) }
	pos, tokSeq, slots, logitIdx, bt := idsLayout(T, L)
	id := func(off, n int) ml.Tensor { return be.View(s.ids, off, n) }
	*vw = stepViews{T: T, S: S, L: L,
		h: r(s.h, T), xn: r(s.xn, T), q: r(s.q, T), k: r(s.k, T), v: r(s.v, T), attn: r(s.attn, T),
		down: r(s.down, T), gu: r(s.gu, T), act: r(s.act, T),
		ids: id(0, idsLen(T, S*s.capB, L)), tokens: id(0, T), pos: id(pos, T), tokSeq: id(tokSeq, T), slots: id(slots, T),
		bt: id(bt, S*s.capB), logitIdx: id(logitIdx, L), argmax: r(s.argmax, L), selH: r(s.selH, L), selD: r(s.selD, L),
		selX: r(s.selX, L), logits: r(s.logits, L)}
	if m.spec.MoE != nil {
		k := m.topK
		vw.rlog, vw.topW, vw.topID, vw.tokOf = r(s.rlog, T), r(s.topW, T*k), r(s.topID, T*k), r(s.tokOf, T*k)
		vw.egu, vw.eact, vw.eout = r(s.egu, T*k), r(s.eact, T*k), r(s.eout, T*k)
	}
	return vw
}

// layer runs one decoder layer on xn (the normed residual); the attention
// output is added to h on the way. It reports whether the MLP output waits
// in down (dense) rather than having been added to h (sparse).
func (m *Model) layer(l *layer, i int, vw *stepViews) (pending bool, err error) {
	be := m.be
	xn, q, k, v := vw.xn, vw.q, vw.k, vw.v
	pos, slots := vw.pos, vw.slots
	m.s.meta.Window = l.window
	if err := be.MatMul(q, xn, l.q, l.qb); err != nil {
		return false, err
	}
	if err := be.MatMul(k, xn, l.k, l.kb); err != nil {
		return false, err
	}
	if err := be.MatMul(v, xn, l.v, l.vb); err != nil {
		return false, err
	}
	if l.qNorm != nil {
		if err := be.RMSNormHeads(q, l.qNorm, m.hd, m.eps); err != nil {
			return false, err
		}
		if err := be.RMSNormHeads(k, l.kNorm, m.hd, m.eps); err != nil {
			return false, err
		}
	}
	if err := be.RoPE(q, pos, m.invFreq, m.nh, m.hd); err != nil {
		return false, err
	}
	if err := be.RoPE(k, pos, m.invFreq, m.nkv, m.hd); err != nil {
		return false, err
	}
	if err := be.WriteKV(m.kv, i, k, v, slots); err != nil {
		return false, err
	}
	return m.attnMLP(l, i, vw)
}

// attnMLP is the rest of layer l once the keys and values are cached:
// attention over q (vw.q), the o projection, the post-attention norm and
// the MLP (see layer for what it returns).
func (m *Model) attnMLP(l *layer, i int, vw *stepViews) (bool, error) {
	be := m.be
	xn, q, attn, down, gu, act, h := vw.xn, vw.q, vw.attn, vw.down, vw.gu, vw.act, vw.h
	if err := be.Attention(attn, q, m.kv, i, &m.s.meta); err != nil {
		return false, err
	}
	// The o projection lands in down, free until the MLP.
	if err := be.MatMul(down, attn, l.o, l.ob); err != nil {
		return false, err
	}
	if m.tp != nil {
		if err := m.tp.comm.AllReduceSum(down); err != nil {
			return false, err
		}
	}
	if err := be.AddRMSNorm(h, xn, down, l.postNorm, m.eps); err != nil {
		return false, err
	}
	if l.router != nil {
		return false, m.moe(l, vw)
	}
	if err := be.MatMul(gu, xn, l.gateUp, l.gub); err != nil {
		return false, err
	}
	if err := be.SiLUMul(act, gu); err != nil {
		return false, err
	}
	if err := be.MatMul(down, act, l.down, l.db); err != nil {
		return true, err
	}
	if m.tp != nil {
		return true, m.tp.comm.AllReduceSum(down)
	}
	return true, nil
}

// moe is a sparse MLP on xn, its output added to the residual h: route
// each token to its top-k experts, run the k expert rows per token through
// the grouped expert matmuls (which read only the experts chosen), and add
// each row, weighted, to its token's residual.
func (m *Model) moe(l *layer, vw *stepViews) error {
	be := m.be
	if err := be.MatMul(vw.rlog, vw.xn, l.router, nil); err != nil {
		return err
	}
	if err := be.TopKSoftmax(vw.topW, vw.topID, vw.rlog, m.topK, m.spec.MoE.NormTopKProb); err != nil {
		return err
	}
	if err := be.MatMulExperts(vw.egu, vw.xn, l.expGateUp, vw.topID); err != nil {
		return err
	}
	if err := be.SiLUMul(vw.eact, vw.egu); err != nil {
		return err
	}
	if err := be.MatMulExperts(vw.eout, vw.eact, l.expDown, vw.topID); err != nil {
		return err
	}
	if m.tp != nil {
		// Each rank's expert rows are partial sums over its slice of
		// every expert's intermediate size; summed before they are weighted
		// into the residual (k rows per token: simple, if k times the bytes
		// of reducing the token's sum).
		if err := m.tp.comm.AllReduceSum(vw.eout); err != nil {
			return err
		}
	}
	return be.ScatterAdd(vw.h, vw.eout, vw.tokOf, vw.topW)
}
