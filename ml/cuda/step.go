package cuda

import (
	"bytes"
	"fmt"
	"slices"
	"unsafe"

	"github.com/llmserve/llmserve/ml"
)

// The decode-step kernel: every layer of a one-token step in one
// cooperative launch, its phases separated by grid barriers instead of
// kernel boundaries (decode_step in kernels/step.cu). At one token a step is
// bound by streaming the weights, and the ~140 kernel boundaries of the
// per-layer fused ops cost about a quarter of it on an H100.

// stepLayer mirrors StepLayer in kernels/step.cu.
type stepLayer struct {
	qkv, o, gu, down, qkvb, ob, gub, downb, inNorm, postNorm, qn, kn uint64
	qkvs, os, gus, downs                                             uint64 // FP8 weights' row scales
	router, expGU, expDown                                           uint64 // a sparse MLP (gu, down 0)
	window                                                           int64  // sliding attention window (0: full)
}

// stepState is the decode-step kernel's device state.
type stepState struct {
	table      devBuf      // []stepLayer of the layers last run
	host       []byte      // the table's bytes, to upload only when they change
	tab        []stepLayer // the table being built (reused: it is built every step)
	acts       devBuf      // every layer's activations (see StepArgs.acts)
	bar        devBuf      // grid barrier and split counters (zeroed at allocation)
	grid       int         // resident 256-thread blocks of gridFn (0: not yet known)
	gridFn     uintptr     // the kernel grid was computed for (each head dim has its own)
	gridShared uint32      // and its dynamic shared memory a block
	forceBPS   int         // benchmarks: blocks per SM instead of the occupancy's
	launches   int         // decode-step launches recorded (tests check the path runs)
	stamps     devBuf      // with stamping on (benchmarks), block 0's clock at each phase's start
	stamping   bool
	forceKS    [4]int // benchmarks: the q/k/v, o, gate/up and down split-K factors (0: stepKS's)
	forceNS    int    // benchmarks: attention's pieces per head (0: stepSplits's)
	overGrid   int    // tests: blocks launched beyond those resident at once
	syncMode   int    // benchmarks: the grid barrier's variant (StepArgs.syncMode)
	syncSet    bool   // syncMode was set (else stepSyncMode)
	// benchmarks and tests: attention warps share a GQA group's K/V loads
	// (stepGroupHeads). Off by default: on an H100 it was slower at every
	// context measured, 100 to 8,000 tokens (results/h100/2026-12-06-9d4cd22).
	groupHeads bool
	// benchmarks and tests: the attention's form (StepArgs.attnForm) when
	// attnFormSet, else stepAttnTC where stepTCAttention allows it:
	// stepAttnPasses, stepAttnPipe or stepAttnWide (how one-head warps run
	// a piece's passes), or stepAttnTC.
	attnForm    int
	attnFormSet bool
	// benchmarks: the L2 prefetch of the o and gate/up weights
	// (StepArgs.pfGU, pfAt), at a layer's start (prefetchAtStart) or its
	// attention's (prefetchAtAttention; prefetchOnlyO: no gate/up). Off by
	// default: at the layer's start, on an H100, it slowed the q/k/v phase
	// more than it sped up o and gate/up (results/h100/2026-12-06-a142972).
	prefetch int
	refused  bool // a cooperative launch was refused (see launchAll): decline from now on
	// tests: decline one-token steps as while the kernel compiles
	// (errStepCompiling: the fused GEMVs take them, and later ones try again)
	hold bool
	// The kernels recorded after a decode step in the same flush (the
	// lm_head GEMV, argmax) launch with programmatic dependent launch, so
	// that each starts as its predecessor's blocks exit (the lm_head
	// streaming its weights) instead of after a drain and launch.
	// noTailPDL turns that off (benchmarks); recorded marks a step
	// recorded since the last flush.
	noTailPDL, recorded bool
}

func (s *stepState) ks(phase, auto int) int {
	if k := s.forceKS[phase]; k > 0 {
		return k
	}
	return auto
}

// stepSyncMode is the grid barrier's default variant (gridMode in
// kernels/grid.cu): waiters poll the arrival count and acquire once (side by
// side on an H100: 1.657 ms per step against 1.746 for the generation word).
const stepSyncMode = 3

const stepCounters = 64 // STEP_SPLITS in kernels/grid.cu: the split counters' offset

// stepKernelName is the decode-step kernel for epl elements per lane (a
// head dim of up to 32·epl) and variant v.
func stepKernelName(epl int, v stepVariant) string { return stepKernelNames[v][epl] }

// stepKernelNames are stepKernelName's answers, built once: a step asks
// for its kernel by name.
var stepKernelNames = func() (n [len(stepVariants)][9]string) {
	prefix := [...]string{stepDense: "decode_step_", stepDenseF8: "decode_step_f8_", stepMoE: "decode_step_moe_"}
	for _, v := range stepVariants {
		for epl := 1; epl <= 8; epl *= 2 {
			n[v][epl] = fmt.Sprintf("%s%d", prefix[v], epl)
		}
	}
	return n
}()

// stepEPL is a head's elements per lane: the power of two that spreads hd
// over a warp.
func stepEPL(hd int) int {
	epl := 1
	for epl*32 < hd {
		epl *= 2
	}
	return epl
}

// stepArgs mirrors StepArgs in kernels/step.cu.
type stepArgs struct {
	layers, h, acts, partO, partML, bar, pos, slots, tokSeq, bt, invFreq, kv, stamps uint64
	layerBytes, numSlots, pfGU                                                       int64
	numLayers, hidden, inter, nh, nkv, hd, nwdt, maxBlocks, blockSize, numBlocks, ns int
	ksQKV, ksO, ksGU, ksDown                                                         int
	syncMode, qkNorm, gh, attnForm, kvdt, pfAt                                       int
	experts, topK, normTopK, moeI, ksRouter, ksEGU                                   int
	eps, scale                                                                       float32
}

// stepGrid is the number of 256-thread decode-step blocks with shmem bytes
// of dynamic shared memory each that are resident at once, all of which a
// cooperative launch requires.
func (b *Backend) stepGrid(fn uintptr, name string, shmem uint32) (int, error) {
	if b.step.grid > 0 && b.step.gridFn == fn && b.step.gridShared == shmem {
		return b.step.grid, nil
	}
	if shmem > defaultDynShared && b.dynShared[fn] < shmem {
		if err := b.optInShared(fn, name, shmem); err != nil {
			return 0, err
		}
	}
	per := int32(1)
	if b.l.cuOccupancyMaxActiveBlocksPerMultiprocessor != 0 {
		if err := b.enter(); err != nil {
			return 0, err
		}
		err := b.l.call(b.l.cuOccupancyMaxActiveBlocksPerMultiprocessor, "cuOccupancyMaxActiveBlocksPerMultiprocessor",
			uintptr(unsafe.Pointer(&per)), fn, 256, uintptr(shmem))
		b.exit()
		if err != nil {
			return 0, err
		}
	}
	if b.step.forceBPS > 0 {
		per = min(per, int32(b.step.forceBPS))
	}
	if per < 1 {
		return 0, fmt.Errorf("%w: decode-step kernel does not fit on an SM", ml.ErrUnsupported)
	}
	b.step.grid, b.step.gridFn, b.step.gridShared = int(per)*int(b.dev.sms)+b.step.overGrid, fn, shmem
	attrs := []any{"blocks_per_sm", per, "grid", b.step.grid, "dynamic_shared_bytes", shmem}
	if b.l.cuFuncGetAttribute != 0 && b.enter() == nil {
		// Spills (local memory) in the step kernel's GEMV loops cost it its
		// bandwidth; the line shows them per build and device.
		defer b.exit()
		for _, a := range []struct {
			name string
			id   int
		}{{"registers", funcAttrNumRegs}, {"local_bytes", funcAttrLocalSizeBytes}, {"static_shared_bytes", funcAttrSharedSizeBytes}} {
			var v int32
			if b.l.call(b.l.cuFuncGetAttribute, "cuFuncGetAttribute", uintptr(unsafe.Pointer(&v)), uintptr(a.id), fn) == nil {
				attrs = append(attrs, a.name, v)
			}
		}
	}
	b.log.Info("cuda: decode-step kernel", attrs...)
	return b.step.grid, nil
}

// CUfunction_attribute values read for the decode-step kernel's log line.
const (
	funcAttrSharedSizeBytes = 1
	funcAttrLocalSizeBytes  = 3
	funcAttrNumRegs         = 4
)

// stepStamps is STEP_STAMPS in kernels/step.cu: clock stamps a layer.
const stepStamps = 8

// stepKS picks a GEMV phase's split-K factor (warps per pair of rows) for
// P pairs of K columns on a grid of blocks: the one whose busiest block
// streams the fewest rows (a block's task is 8/ks pairs), among those that
// leave each lane at least two 16-byte loads per row. phases GEMVs of that
// shape share one barrier interval (a sparse MLP's experts), their tasks
// spread over the grid one after the other (stepPhase's first block).
func stepKS(P, K, grid, phases int) int {
	best, bestCost := 1, 0
	for ks := 1; ks <= 8; ks *= 2 {
		if ks > 1 && K/8 < 2*32*ks {
			break
		}
		tasks := phases * ((P + 8/ks - 1) / (8 / ks))
		cost := (tasks + grid - 1) / grid * (8 / ks)
		if ks == 1 || cost < bestCost {
			best, bestCost = ks, cost
		}
	}
	return best
}

// stepSplits cuts attention's context into pieces (stepAttention rounds
// their length up to whole passes of 8 keys, a warp's pass at head dims
// over 64): in a one-token step attention is a chain of dependent loads,
// so it pays to spread it wide. A head takes up to as many pieces as the
// grid has warps per head (at least 32, at most stepMaxSplits); the pieces
// merge in groups of stepMergeGroup and then the groups, so many pieces
// cost a long context little merging. The count only changes every 8
// tokens of context, and not at all past 8 keys a piece: each count is a
// step graph of its own.
func stepSplits(maxContext, warpsPerHead int) int {
	return max(1, min((maxContext+7)/8, min(max(warpsPerHead, 32), stepMaxSplits)))
}

// stepGroupHeads is the heads of a GQA group of g that one warp of
// stepAttention (kernels/step.cu) takes at once, sharing their K and V
// loads (StepArgs.gh; it must divide g): 3 or 2 where they divide it, more
// would spill; 1 at head dims over 128 (epl 8), whose K and V rows already
// fill the registers.
func stepGroupHeads(g, epl int) int {
	switch {
	case epl > 4:
		return 1
	case g%3 == 0:
		return 3
	case g%2 == 0:
		return 2
	}
	return 1
}

// The forms of the step's attention (STEP_ATTN_* in kernels/step.cu): a
// lane per head dims, its passes one after another, the next pass's loads
// issued before this one's arithmetic, or twice the keys a pass (head dims
// over 128 run the first); or a warp per KV head's query heads on tensor
// cores (stepAttentionTC).
const (
	stepAttnPasses = iota
	stepAttnPipe
	stepAttnWide
	stepAttnTC
)

// stepTCAttention reports whether stepAttentionTC (kernels/step.cu) takes
// a step's attention: a bf16 cache, head dims of 16, 32, 64 or 128, and
// mma.sync (sm_80 and later).
func (b *Backend) stepTCAttention(hd int, kv ml.DType) bool {
	return kv == ml.BF16 && (hd == 16 || hd == 32 || hd == 64 || hd == 128) && b.dev.major >= 8
}

// stepTCMaxSplits is the most pieces a KV head's keys take in
// stepAttentionTC: 32·STEP_MERGE_LANE, what stepMergePieces's lanes hold.
const stepTCMaxSplits = 256

// stepTCSplits cuts the context into pieces for stepAttentionTC, a warp
// each taking up to 8 keys a pass for all of a KV head's (up to 8) query
// heads, sets of which there are sets: a pass each (keys come a pass a
// round trip), up to the grid's warps per set and stepTCMaxSplits. The
// count is one of 1, 2, 3, 4, 6, 8, 12, ... 256 (2^k or 3·2^(k-1)), so
// that a growing context changes it, and the step graph, a few times
// rather than every 8 tokens: the next one up (some pieces empty), or
// where that is over the bound the next one down.
func stepTCSplits(maxContext, warps, sets int) int {
	bound := max(1, min(warps/max(sets, 1), stepTCMaxSplits))
	n := min((maxContext+7)/8, bound)
	down := 1
	for _, v := range []int{1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256} {
		if v >= n && v <= bound {
			return v
		}
		if v <= n {
			down = v
		}
	}
	return down
}

// stepPrefetchGU is StepArgs.pfGU: the gate/up bytes a layer of the step
// asks into L2 at its start, a third of the L2 (the o weights and the
// layer's activations and K/V take some of the rest, and lines asked for
// too early would be evicted before the gate/up phase reads them); -1
// unless a benchmark turned prefetching on, or where the device reports no
// L2.
func (b *Backend) stepPrefetchGU() int64 {
	switch {
	case b.step.prefetch == prefetchOff || b.dev.l2 <= 0:
		return -1
	case b.step.prefetch == prefetchOnlyO:
		return 0
	}
	return int64(b.dev.l2) / 3
}

// stepPrefetchAt is StepArgs.pfAt: 1 where the prefetch waits for the
// attention phase.
func (b *Backend) stepPrefetchAt() int {
	if b.step.prefetch >= prefetchAtAttention {
		return 1
	}
	return 0
}

// The decode step's L2 prefetch (Backend.step.prefetch; benchmarks).
const (
	prefetchOff = iota
	prefetchAtStart
	prefetchAtAttention
	prefetchOnlyO // the o weights alone, at the attention's start
)

// stepMaxSplits bounds the pieces per head (two merge levels of
// stepMergeGroup cover 256).
const stepMaxSplits = 256

// stepMergeGroup is STEP_MERGE_GROUP in kernels/step.cu.
const stepMergeGroup = 16

// stepWeight returns w's device pointer (and its rows' scales when FP8) if
// it is a [rows, cols] matrix of dtype dt (bf16 or FP8).
func (b *Backend) stepWeight(w ml.Tensor, dt ml.DType, rows, cols int, what string) (ptr, scales uint64, err error) {
	t, err := b.tens(w, what)
	if err != nil {
		return 0, 0, err
	}
	if t.dt != dt || t.rows != rows || t.cols != cols {
		return 0, 0, fmt.Errorf("%w: decode step %s %v %dx%d, want %v %dx%d", ml.ErrUnsupported, what, t.dt, t.rows, t.cols, dt, rows, cols)
	}
	return t.ptr, t.scales, nil
}

// stepBias returns a bias's pointer (0 for nil): f32 with n elements.
func (b *Backend) stepBias(bias ml.Tensor, n int, what string) (uint64, error) {
	if bias == nil {
		return 0, nil
	}
	t, err := b.f32(bias, what)
	if err != nil {
		return 0, err
	}
	if t.n() != n {
		return 0, shapeErr("decode step %s %dx%d for %d outputs", what, t.rows, t.cols, n)
	}
	return t.ptr, nil
}

// DecodeLayers runs every layer of a one-token step in one launch, on the
// fused decode ops' terms: h [1, hidden] (f32) is the residual stream, taken
// as the embedding and left as the last layer's output. Weights are bf16,
// or all FP8 (q/k/v fused, gate/up fused as gate rows then up rows), biases f32 or
// nil, and every layer's norms of one dtype. windows holds each layer's
// sliding attention window (0 or missing: full attention). It returns
// ml.ErrUnsupported for anything else (more tokens, an f32 KV cache, no
// cooperative launch), and the caller runs the layers one by one instead.
func (b *Backend) DecodeLayers(h ml.Tensor, layers []ml.DecoderLayer, windows []int, eps float32,
	positions, invFreq, slots ml.Tensor, c ml.KVCache, meta *ml.AttentionMeta) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	if b.opts.DisableStepKernel || b.l.cuLaunchKernelEx == 0 || len(layers) == 0 {
		return fmt.Errorf("%w: decode-step kernel off", ml.ErrUnsupported)
	}
	if b.step.refused {
		return fmt.Errorf("%w: the device refused the cooperative decode-step launch", ml.ErrUnsupported)
	}
	if b.step.hold {
		return errStepCompiling
	}
	if meta == nil || meta.NumTokens != 1 || meta.NumSeqs != 1 {
		return fmt.Errorf("%w: decode-step kernel runs one token", ml.ErrUnsupported)
	}
	kc, err := b.cache(c, 0)
	if err != nil {
		return err
	}
	nh, nkv, hd := meta.NumHeads, meta.NumKVHeads, meta.HeadDim
	if (kc.dt != ml.BF16 && kc.dt != ml.F8) || kc.layers < len(layers) || nkv != kc.kvh || hd != kc.hd || hd%2 != 0 || hd > 256 ||
		nh <= 0 || nkv <= 0 || nh%nkv != 0 || meta.MaxBlocks <= 0 {
		return fmt.Errorf("%w: decode step with a %v cache of %d layers, %d heads, %d kv heads of %d",
			ml.ErrUnsupported, kc.dt, kc.layers, nh, nkv, hd)
	}
	wdt := ml.BF16
	if t, ok := layers[0].QKV.(*tensor); ok && t != nil && t.dt == ml.F8 {
		wdt = ml.F8
	}
	f8 := wdt == ml.F8
	variant, ok := stepVariantFor(f8, slices.ContainsFunc(layers, func(l ml.DecoderLayer) bool { return l.GateUp == nil }))
	if !ok {
		return fmt.Errorf("%w: decode step of a sparse MLP without bf16 expert weights", ml.ErrUnsupported)
	}
	if _, err := b.stepKernel(stepEPL(hd), variant); err != nil {
		return err // before any upload: errStepCompiling leaves the step to the GEMVs
	}
	hh, err := b.f32(h, "decode-step h")
	if err != nil {
		return err
	}
	H, qkvN, qd := hh.cols, (nh+2*nkv)*hd, nh*hd
	// The dense MLPs' intermediate size, and the sparse ones' shape.
	I, E, topK, moeI, normTopK := 0, 0, 0, 0, false
	for _, l := range layers {
		if t, ok := l.Down.(*tensor); ok && t != nil {
			I = t.cols
		}
		if l.GateUp == nil {
			r, ok1 := l.Router.(*tensor)
			d, ok2 := l.ExpDown.(*tensor)
			if !ok1 || !ok2 || r == nil || d == nil || f8 {
				return fmt.Errorf("%w: decode step of a sparse MLP without bf16 expert weights", ml.ErrUnsupported)
			}
			if E != 0 && (E != r.rows || topK != l.TopK || moeI != d.cols || normTopK != l.NormTopK) {
				return fmt.Errorf("%w: decode step of sparse MLPs of different shapes", ml.ErrUnsupported)
			}
			E, topK, moeI, normTopK = r.rows, l.TopK, d.cols, l.NormTopK
		}
	}
	if E > 0 && (E > 256 || topK < 1 || topK > 32 || topK > E || moeI%8 != 0 || moeI == 0) {
		return fmt.Errorf("%w: decode step of %d experts, top %d, intermediate %d", ml.ErrUnsupported, E, topK, moeI)
	}
	if hh.rows != 1 || H%8 != 0 || qd%8 != 0 || I%8 != 0 || (I == 0 && E == 0) {
		return fmt.Errorf("%w: decode step of %dx%d h, %d q columns, intermediate %d", ml.ErrUnsupported, hh.rows, hh.cols, qd, I)
	}
	pos, inv, sl, err := b.ropeOperands(positions, invFreq, slots, 1, hd)
	if err != nil {
		return err
	}
	tokSeq, err := b.i32(meta.TokenSeq, "TokenSeq", 1)
	if err != nil {
		return err
	}
	bt, err := b.i32(meta.BlockTables, "BlockTables", meta.MaxBlocks)
	if err != nil {
		return err
	}

	// The layer table, uploaded when it changes (the first step of a model).
	if cap(b.step.tab) < len(layers) {
		b.step.tab = make([]stepLayer, len(layers))
	}
	tab := b.step.tab[:len(layers)]
	nwdt := -1
	qkNorm := layers[0].QNorm != nil
	for i, l := range layers {
		s := &tab[i]
		s.window = 0
		if i < len(windows) {
			s.window = int64(max(windows[i], 0))
		}
		type weight struct {
			dst, scales *uint64
			t           ml.Tensor
			rows, cols  int
			what        string
		}
		ws := []weight{{&s.qkv, &s.qkvs, l.QKV, qkvN, H, "qkv"}, {&s.o, &s.os, l.O, H, qd, "o"}}
		s.gu, s.gus, s.down, s.downs, s.router, s.expGU, s.expDown = 0, 0, 0, 0, 0, 0, 0
		var unscaled uint64 // bf16 weights have no scales
		if l.GateUp != nil {
			ws = append(ws, weight{&s.gu, &s.gus, l.GateUp, 2 * I, H, "gate_up"}, weight{&s.down, &s.downs, l.Down, H, I, "down"})
		} else {
			ws = append(ws, weight{&s.router, &unscaled, l.Router, E, H, "router"},
				weight{&s.expGU, &unscaled, l.ExpGateUp, E * 2 * moeI, H, "experts' gate_up"},
				weight{&s.expDown, &unscaled, l.ExpDown, E * H, moeI, "experts' down"})
		}
		for _, w := range ws {
			if *w.dst, *w.scales, err = b.stepWeight(w.t, wdt, w.rows, w.cols, w.what); err != nil {
				return err
			}
		}
		for _, x := range []struct {
			dst  *uint64
			t    ml.Tensor
			n    int
			what string
		}{{&s.qkvb, l.QKVBias, qkvN, "qkv bias"}, {&s.ob, l.OBias, H, "o bias"}, {&s.gub, l.GateUpBias, 2 * I, "gate_up bias"}, {&s.downb, l.DownBias, H, "down bias"}} {
			if *x.dst, err = b.stepBias(x.t, x.n, x.what); err != nil {
				return err
			}
		}
		if (l.QNorm != nil) != qkNorm || (l.KNorm != nil) != qkNorm {
			return fmt.Errorf("%w: decode step with per-head q/k norms in some layers only", ml.ErrUnsupported)
		}
		s.qn, s.kn = 0, 0
		if qkNorm {
			qn, kn, err := b.qkNormOperands(l.QNorm, l.KNorm, hd)
			if err != nil {
				return err
			}
			s.qn, s.kn = qn.ptr, kn.ptr
		}
		for _, n := range []struct {
			dst *uint64
			t   ml.Tensor
		}{{&s.inNorm, l.InNorm}, {&s.postNorm, l.PostNorm}} {
			nw, dt, err := b.normArg(n.t, H)
			if err != nil {
				return err
			}
			if nwdt >= 0 && dt != nwdt {
				return fmt.Errorf("%w: decode step with norm weights of mixed dtypes", ml.ErrUnsupported)
			}
			*n.dst, nwdt = nw.ptr, dt
		}
	}
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&tab[0])), len(tab)*int(unsafe.Sizeof(tab[0])))
	if !bytes.Equal(raw, b.step.host) {
		if err := b.ensure(&b.step.table, int64(len(raw))); err != nil {
			return err
		}
		if err := b.flush(); err != nil {
			return err
		}
		if err := b.enter(); err != nil {
			return err
		}
		err := b.l.call(b.l.cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync", uintptr(b.step.table.ptr), uintptr(unsafe.Pointer(&raw[0])),
			uintptr(len(raw)), b.stream)
		b.exit()
		if err != nil {
			return err
		}
		b.step.host = bytes.Clone(raw)
	}

	epl := stepEPL(hd)
	name := stepKernelName(epl, variant)
	fn, err := b.stepKernel(epl, variant)
	if err != nil {
		return err
	}
	// The normalized GEMVs' copy of x·nw (dgemvNormX in kernels/dgemv.cu).
	shmem := uint32(H * 4)
	grid, err := b.stepGrid(fn, name, shmem)
	if err != nil {
		return err
	}
	if hd%epl != 0 {
		return fmt.Errorf("%w: decode step with head dim %d", ml.ErrUnsupported, hd)
	}
	// A warp takes one head, or stepGroupHeads heads of a GQA group: as
	// many pieces per head as warps per such set of heads.
	// An FP8 cache's rows are read by one head a warp only.
	gh, kvdt := 1, 1
	if kc.dt == ml.F8 {
		kvdt = 2
	} else if b.step.groupHeads {
		gh = stepGroupHeads(nh/nkv, epl)
	}
	form := b.step.attnForm
	if !b.step.attnFormSet {
		form = stepAttnTC
	}
	if form == stepAttnTC && !b.stepTCAttention(hd, kc.dt) {
		form = stepAttnPasses
	}
	ns := stepSplits(meta.MaxContext, grid*8*gh/nh)
	maxNS := stepMaxSplits // the merge's bound
	if form == stepAttnTC {
		gh = 1
		ns = stepTCSplits(meta.MaxContext, grid*8, nkv*((nh/nkv+7)/8))
		maxNS = stepTCMaxSplits
	}
	if b.step.forceNS > 0 {
		ns = min(b.step.forceNS, maxNS)
	}
	per := 2*H + qkvN + qd + I // a layer's activations (StepArgs.acts)
	if qkNorm {
		per += qd
	}
	if E > 0 {
		per += E + topK*moeI
	}
	if err := b.ensure(&b.step.acts, int64(len(layers))*int64(per)*4); err != nil {
		return err
	}
	a := stepArgs{layers: b.step.table.ptr, h: hh.ptr, acts: b.step.acts.ptr,
		pos: pos.ptr, slots: sl.ptr, tokSeq: tokSeq.ptr, bt: bt.ptr, invFreq: inv.ptr, kv: kc.k(0),
		layerBytes: kc.layerBytes, numSlots: int64(kc.numBlocks) * int64(kc.blockSize),
		numLayers: len(layers), hidden: H, inter: I, nh: nh, nkv: nkv, hd: hd, nwdt: nwdt,
		maxBlocks: meta.MaxBlocks, blockSize: kc.blockSize, numBlocks: kc.numBlocks, ns: ns,
		ksQKV: b.step.ks(0, stepKS(qkvN/2, H, grid, 1)), ksO: b.step.ks(1, stepKS((H+1)/2, qd, grid, 1)),
		ksGU: b.step.ks(2, stepKS(I, H, grid, 1)), ksDown: b.step.ks(3, stepKS((H+1)/2, I, grid, 1)),
		syncMode: stepSyncMode, gh: gh, attnForm: form, kvdt: kvdt, pfGU: b.stepPrefetchGU(), pfAt: b.stepPrefetchAt(), eps: eps, scale: meta.Scale}
	if E > 0 {
		a.experts, a.topK, a.moeI = E, topK, moeI
		if normTopK {
			a.normTopK = 1
		}
		a.ksRouter = stepKS((E+1)/2, H, grid, 1)
		a.ksEGU = stepKS(moeI, H, grid, topK)
	}
	if b.step.syncSet {
		a.syncMode = b.step.syncMode
	}
	if qkNorm {
		a.qkNorm = 1
	}
	if ns > 1 {
		nO := int64(nh) * int64(ns) * int64(hd)
		if err := b.ensure(&b.part, (nO+int64(nh*ns*2))*4); err != nil {
			return err
		}
		a.partO, a.partML = b.part.ptr, b.part.ptr+uint64(nO*4)
	}
	// The barrier words, then a counter per (head, merge group) and per head.
	groups := (ns + stepMergeGroup - 1) / stepMergeGroup
	if err := b.ensure(&b.step.bar, int64(stepCounters+nh*(groups+1))*4); err != nil {
		return err
	}
	a.bar = b.step.bar.ptr
	if b.step.stamping {
		if err := b.ensure(&b.step.stamps, int64(len(layers))*stepStamps*8); err != nil {
			return err
		}
		a.stamps = b.step.stamps.ptr
	}
	b.invalidate(hh.ptr, hh.bytes())
	b.skinnyRec.valid, b.ropeRec.valid = false, false

	st := b.argStart()
	for _, p := range []uint64{a.layers, a.h, a.acts, a.partO, a.partML, a.bar, a.pos, a.slots, a.tokSeq, a.bt, a.invFreq, a.kv, a.stamps} {
		b.aP(p)
	}
	b.aL(a.layerBytes)
	b.aL(a.numSlots)
	b.aL(a.pfGU)
	for _, v := range []int{a.numLayers, a.hidden, a.inter, a.nh, a.nkv, a.hd, a.nwdt, a.maxBlocks, a.blockSize, a.numBlocks, a.ns,
		a.ksQKV, a.ksO, a.ksGU, a.ksDown, a.syncMode, a.qkNorm, a.gh, a.attnForm, a.kvdt, a.pfAt, a.experts, a.topK, a.normTopK, a.moeI, a.ksRouter,
		a.ksEGU} {
		b.aI(v)
	}
	b.aF(a.eps)
	b.aF(a.scale)
	b.align(8)
	b.nextCoop = true
	if err := b.pushShared(name, g1(grid), g1(256), shmem, st); err != nil {
		b.nextCoop = false
		return err
	}
	b.step.recorded = true
	b.step.launches++
	return nil
}
