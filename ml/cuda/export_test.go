package cuda

import (
	"math"

	"github.com/llmserve/llmserve/ml"
)

// FusedForwards is the number of steps b's fused layers have run.
func FusedForwards(b *Backend) int { return int(b.fusedForwards.Load()) }

// StepLaunches is the number of decode-step kernel launches b has recorded.
func StepLaunches(b *Backend) int { return b.step.launches }

// GateUpBF16Steps is the number of MLPs b has recorded with the gate/up
// product and SiLU in bf16 (gateUpSiLU16).
func GateUpBF16Steps(b *Backend) int { return b.gateUp16 }

// SetStepPrefetch sets the decode step's L2 prefetch of each layer's o
// and gate/up weights by its benchmark name: "pf" at the layer's start,
// "pfa" at its attention's, "pfo" the o weights alone there, "" none.
func SetStepPrefetch(b *Backend, mode string) {
	b.step.prefetch = map[string]int{"pf": prefetchAtStart, "pfa": prefetchAtAttention, "pfo": prefetchOnlyO}[mode]
}

// SetStepGroupHeads makes the decode step's attention warps share K/V
// loads across a GQA group's heads (on) or take one query head each (off,
// the default).
func SetStepGroupHeads(b *Backend, on bool) { b.step.groupHeads = on }

// Forms of the decode step's one-head attention passes (SetStepAttnForm).
const (
	StepAttnPasses = stepAttnPasses // one after another (the default)
	StepAttnPipe   = stepAttnPipe   // the next pass's loads before this one's arithmetic
	StepAttnWide   = stepAttnWide   // twice the keys a pass
	StepAttnTC     = stepAttnTC     // a warp per KV head's query heads on tensor cores (the default where it applies)
)

// HoldStepKernel makes one-token steps take the fused GEMVs, as while the
// decode-step kernel compiles, until it is called with false.
func HoldStepKernel(b *Backend, hold bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.step.hold = hold
}

// SetStepAttnForm sets the decode step's attention form: how one-head
// warps run a piece's passes, or StepAttnTC.
func SetStepAttnForm(b *Backend, form int) { b.step.attnForm, b.step.attnFormSet = form, true }

// StampSteps makes later decode-step launches record block 0's clock at the
// start of each phase.
func StampSteps(b *Backend) { b.step.stamping = true }

// StepPhaseCycles returns the decode-step kernel's mean SM cycles a layer
// in each of its first n stamped phases (6: a dense layer's; 8: a sparse
// MLP's), the last one ending at the next layer's first stamp, over the
// last stamped launch (layers after the first).
func StepPhaseCycles(b *Backend, n int) ([]float64, error) {
	out := make([]float64, n)
	count := int(b.step.stamps.size / 8)
	if count < 2*stepStamps {
		return out, nil
	}
	raw := make([]float32, 2*count)
	t := &tensor{owner: b, ptr: b.step.stamps.ptr, dt: ml.F32, rows: 1, cols: 2 * count}
	if err := b.Download(raw, t); err != nil {
		return out, err
	}
	st := make([]uint64, count)
	for i := range st {
		st[i] = uint64(math.Float32bits(raw[2*i])) | uint64(math.Float32bits(raw[2*i+1]))<<32
	}
	L := count / stepStamps
	for l := 0; l < L-1; l++ {
		for k := 0; k < n; k++ {
			next := st[stepStamps*l+k+1]
			if k == n-1 {
				next = st[stepStamps*(l+1)]
			}
			// Signed: a stamp out of order (or missing) shows as negative.
			out[k] += float64(int64(next-st[stepStamps*l+k])) / float64(L-1)
		}
	}
	return out, nil
}

// SetStepGridPerSM makes decode-step launches use at most n blocks per SM.
func SetStepGridPerSM(b *Backend, n int) { b.step.forceBPS = n }

// SetStepKS forces the decode-step kernel's split-K factors of the q/k/v,
// o, gate/up and down phases (0: the default choice).
func SetStepKS(b *Backend, qkv, o, gateUp, down int) { b.step.forceKS = [4]int{qkv, o, gateUp, down} }

// SetStepSplits forces the decode-step kernel's attention pieces per head.
func SetStepSplits(b *Backend, n int) { b.step.forceNS = n }

// SetStepGridOversize makes decode-step launches use extra blocks beyond
// those that can be resident at once, which a cooperative launch refuses.
func SetStepGridOversize(b *Backend, extra int) { b.step.overGrid = extra }

// StepRefused reports whether the device refused a decode-step launch.
func StepRefused(b *Backend) bool { return b.step.refused }

// SetStepSyncMode picks the decode-step kernel's grid barrier variant
// (gridMode in kernels/grid.cu).
func SetStepSyncMode(b *Backend, mode int) { b.step.syncMode, b.step.syncSet = mode, true }

// SetStepTailPDL turns programmatic dependent launch of the kernels after a
// decode step (lm_head, argmax) on or off.
func SetStepTailPDL(b *Backend, on bool) { b.step.noTailPDL = !on }

// WaitStepKernels waits until every decode-step kernel unit whose compile
// has begun has compiled.
func WaitStepKernels(b *Backend) {
	for _, u := range StepUnits() {
		if ku := b.units[u]; !ku.pending() {
			<-ku.done
		}
	}
}

// PendingUnits are the kernel units whose compile LazyKernels deferred
// and nothing has asked for.
func PendingUnits(b *Backend) []int {
	var us []int
	for u, ku := range b.units {
		if ku.pending() {
			us = append(us, u)
		}
	}
	return us
}

// StepUnit is the kernel unit of the decode-step kernel for a head dim,
// FP8 weights or not, sparse MLPs or not.
func StepUnit(headDim int, f8, moe bool) int {
	v, _ := stepVariantFor(f8, moe)
	return stepUnit(stepEPL(headDim), v)
}

// StepUnits are the units of every decode-step kernel.
func StepUnits() []int {
	var us []int
	for epl := 1; epl <= 8; epl *= 2 {
		for _, v := range stepVariants {
			us = append(us, stepUnit(epl, v))
		}
	}
	return us
}

// FP8Units are the units of the FP8 kernels outside the decode step.
func FP8Units() []int { return fp8Units[:] }

// UnusedUnits are the units of fused GEMVs for more rows than b's
// FusedDecodeMaxT, which b never compiles.
func UnusedUnits(b *Backend) []int {
	var us []int
	for u := range kernelUnits {
		if unusedUnit(u, b.opts.FusedDecodeMaxT) {
			us = append(us, u)
		}
	}
	return us
}

// SetFlashMin makes attention steps with at least n tokens beyond one per
// sequence take the flash kernel (0: every step of a bf16 cache).
func SetFlashMin(b *Backend, n int) { b.flashMin = n }

// SetLaneAttention keeps a batched step's per-token attention pieces on the
// lane-per-dims kernel (on) or lets the tensor-core one take them (off).
func SetLaneAttention(b *Backend, on bool) { b.laneAttn = on }

// SetFlashWideWaves sets how many waves flash's wide form needs (+Inf:
// the narrow form always) and returns the value before.
func SetFlashWideWaves(w float64) float64 {
	old := flashWideWaves
	flashWideWaves = w
	return old
}

// GraphCache reports b's cached graph entries, how many of them hold a
// captured graph, and how many entries were evicted for new ones.
func GraphCache(b *Backend) (entries, captured, evictions int) {
	for _, e := range b.graphs {
		if e.exec != 0 {
			captured++
		}
	}
	return len(b.graphs), captured, b.graphEvictions
}
