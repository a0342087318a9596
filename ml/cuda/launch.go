package cuda

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"unsafe"

	"github.com/llmserve/llmserve/ml"
)

// Recording and replay: ops append their launches (kernel and arguments)
// to the step being recorded; flush launches them, replaying a CUDA graph
// when the recorded step repeats an earlier one.

func (b *Backend) argStart() int {
	for len(b.args)%8 != 0 {
		b.args = append(b.args, 0)
	}
	return len(b.args)
}

func (b *Backend) align(n int) {
	for len(b.args)%n != 0 {
		b.args = append(b.args, 0)
	}
}

func (b *Backend) aP(p uint64) { b.align(8); b.args = binary.LittleEndian.AppendUint64(b.args, p) }
func (b *Backend) aL(v int64) {
	b.align(8)
	b.args = binary.LittleEndian.AppendUint64(b.args, uint64(v))
}
func (b *Backend) aI(v int) {
	b.align(4)
	b.args = binary.LittleEndian.AppendUint32(b.args, uint32(int32(v)))
}
func (b *Backend) aF(v float32) {
	b.align(4)
	b.args = binary.LittleEndian.AppendUint32(b.args, math.Float32bits(v))
}

// push records a kernel launch whose arguments were appended since start.
func (b *Backend) push(name string, grid, block [3]uint32, start int) error {
	return b.pushShared(name, grid, block, 0, start)
}

// defaultDynShared is the dynamic shared memory any kernel may take; more
// needs the kernel's opt-in (cuFuncSetAttribute).
const defaultDynShared = 48 << 10

// pushShared is push for a kernel with shmem bytes of dynamic shared memory
// (extern __shared__).
func (b *Backend) pushShared(name string, grid, block [3]uint32, shmem uint32, start int) error {
	if err := b.loadKernels(); err != nil {
		b.args = b.args[:start]
		return err
	}
	fn := b.fns[name]
	if fn == 0 && b.opts.LazyKernels && isFP8Kernel(name) {
		if err := b.fp8Kernels(); err != nil {
			b.args = b.args[:start]
			return err
		}
		fn = b.fns[name]
	}
	if fn == 0 {
		b.args = b.args[:start]
		return fmt.Errorf("%w: kernel %s", ml.ErrUnsupported, name)
	}
	if shmem > defaultDynShared && b.dynShared[fn] < shmem {
		if err := b.optInShared(fn, name, shmem); err != nil {
			b.args = b.args[:start]
			return err
		}
	}
	o := op{kind: opKernel, fn: fn, grid: grid, block: block, shmem: shmem, argOff: start, argSz: len(b.args) - start, traceOff: len(b.trace)}
	o.coop, b.nextCoop = b.nextCoop, false
	o.pdl = !o.coop && b.step.recorded && !b.step.noTailPDL && b.l.cuLaunchKernelEx != 0 && b.dev.major >= 9
	b.ops = append(b.ops, o)
	b.trace = binary.LittleEndian.AppendUint64(b.trace, uint64(fn))
	for _, v := range grid {
		b.trace = binary.LittleEndian.AppendUint32(b.trace, v)
	}
	for _, v := range block {
		b.trace = binary.LittleEndian.AppendUint32(b.trace, v)
	}
	b.trace = binary.LittleEndian.AppendUint32(b.trace, shmem)
	b.trace = binary.LittleEndian.AppendUint32(b.trace, uint32(o.argSz))
	b.trace = append(b.trace, b.args[start:]...)
	return nil
}

// optInShared lets kernel fn (name) launch with shmem bytes of dynamic
// shared memory, past the 48 KiB every kernel may take.
func (b *Backend) optInShared(fn uintptr, name string, shmem uint32) error {
	if b.l.cuFuncSetAttribute == 0 || int64(shmem) > int64(b.dev.sharedOptin) {
		return fmt.Errorf("%w: kernel %s with %d bytes of shared memory (this device allows %d)", ml.ErrUnsupported,
			name, shmem, b.dev.sharedOptin)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.exit()
	if err := b.l.call(b.l.cuFuncSetAttribute, "cuFuncSetAttribute", fn, funcAttrMaxDynamicShared, uintptr(shmem)); err != nil {
		return err
	}
	// The whole unified L1 as shared memory: such a kernel's blocks an SM
	// are bounded by it, and the default carveout may hold some back.
	if err := b.l.call(b.l.cuFuncSetAttribute, "cuFuncSetAttribute", fn, funcAttrPreferredCarveout, 100); err != nil {
		return err
	}
	if b.dynShared == nil {
		b.dynShared = map[uintptr]uint32{}
	}
	b.dynShared[fn] = shmem
	return nil
}

func (b *Backend) pushGemm(g gemmArgs) {
	b.ops = append(b.ops, op{kind: opGemm, g: g, traceOff: len(b.trace), argOff: len(b.args)})
	b.trace = append(b.trace, 0xFF)
	b.trace = binary.LittleEndian.AppendUint64(b.trace, g.a)
	b.trace = binary.LittleEndian.AppendUint64(b.trace, g.b)
	b.trace = binary.LittleEndian.AppendUint64(b.trace, g.c)
	acc := int32(0)
	if g.accumulate {
		acc = 1
	}
	for _, v := range []int32{acc, g.transa, g.transb, g.m, g.n, g.k, g.atype, g.lda, g.btype, g.ldb, g.ctype, g.ldc} {
		b.trace = binary.LittleEndian.AppendUint32(b.trace, uint32(v))
	}
}

// popOp removes the last recorded op (to re-record it fused with the next).
func (b *Backend) popOp() {
	o := b.ops[len(b.ops)-1]
	b.ops = b.ops[:len(b.ops)-1]
	b.args = b.args[:o.argOff]
	b.trace = b.trace[:o.traceOff]
}

func (b *Backend) resetRec() {
	b.skinnyRec.valid, b.ropeRec.valid = false, false
	b.step.recorded = false
	b.ops = b.ops[:0]
	b.args = b.args[:0]
	b.trace = b.trace[:0]
}

// flush sends the recorded ops to the stream: from a cached graph when this
// exact sequence was captured, capturing it the second time it is seen.
func (b *Backend) flush() error {
	if len(b.ops) == 0 {
		return nil
	}
	defer b.resetRec()
	if err := b.enter(); err != nil {
		return err
	}
	defer b.exit()
	if !b.opts.DisableGraphs && len(b.ops) >= b.opts.GraphMinOps {
		h := maphash.Bytes(b.seed, b.trace)
		e := b.graphs[h]
		b.graphClock++
		if e != nil {
			e.used = b.graphClock
		}
		switch {
		case e == nil:
			if b.numGraph >= b.opts.MaxGraphs {
				b.evictGraph()
			}
			b.graphs[h] = &graphEntry{trace: bytes.Clone(b.trace), seen: 1, used: b.graphClock}
			b.numGraph++
		case !bytes.Equal(e.trace, b.trace) || e.failed:
		case e.exec != 0:
			return b.l.call(b.l.cuGraphLaunch, "cuGraphLaunch", e.exec, b.stream)
		default:
			e.seen++
			if e.seen >= 2 {
				exec, err := b.capture()
				if err == nil {
					e.exec = exec
					return b.l.call(b.l.cuGraphLaunch, "cuGraphLaunch", e.exec, b.stream)
				}
				e.failed = true
				b.log.Warn("cuda: graph capture failed; launching directly", "ops", len(b.ops), "err", err)
			}
		}
	}
	return b.launchAll()
}

// evictGraph drops the least recently used graph entry (the context
// current): a long-running server meets new step shapes (batch sizes,
// attention piece counts) long after its first MaxGraphs, and they should
// replay too. A graph still running is freed when it completes.
func (b *Backend) evictGraph() {
	var oldest uint64
	var e *graphEntry
	for k, g := range b.graphs {
		if e == nil || g.used < e.used {
			oldest, e = k, g
		}
	}
	if e == nil {
		return
	}
	if e.exec != 0 {
		_ = b.l.call(b.l.cuGraphExecDestroy, "cuGraphExecDestroy", e.exec)
	}
	delete(b.graphs, oldest)
	b.numGraph--
	b.graphEvictions++
}

func (b *Backend) capture() (uintptr, error) {
	if err := b.l.call(b.l.cuStreamBeginCapture, "cuStreamBeginCapture", b.stream, captureModeThreadLocal); err != nil {
		return 0, err
	}
	lerr := b.launchAll()
	var graph uintptr
	eerr := b.l.call(b.l.cuStreamEndCapture, "cuStreamEndCapture", b.stream, uintptr(unsafe.Pointer(&graph)))
	if lerr != nil || eerr != nil {
		if graph != 0 {
			_ = b.l.call(b.l.cuGraphDestroy, "cuGraphDestroy", graph)
		}
		return 0, errors.Join(lerr, eerr)
	}
	var exec uintptr
	err := b.l.call(b.l.cuGraphInstantiate, "cuGraphInstantiateWithFlags", uintptr(unsafe.Pointer(&exec)), graph, 0)
	_ = b.l.call(b.l.cuGraphDestroy, "cuGraphDestroy", graph)
	if err != nil {
		return 0, err
	}
	return exec, nil
}

func (b *Backend) launchAll() error {
	for i := range b.ops {
		o := &b.ops[i]
		switch o.kind {
		case opKernel:
			b.argLen = uint64(o.argSz)
			b.extra = [5]uintptr{launchParamBufPtr, uintptr(unsafe.Pointer(&b.args[o.argOff])),
				launchParamBufSize, uintptr(unsafe.Pointer(&b.argLen)), launchParamEnd}
			if b.pdl || o.coop || o.pdl {
				attr := &b.launchPDL
				if o.coop {
					attr = &b.launchCoop
				}
				b.launchCfg = launchConfig{gridX: o.grid[0], gridY: o.grid[1], gridZ: o.grid[2],
					blockX: o.block[0], blockY: o.block[1], blockZ: o.block[2], shmem: o.shmem,
					stream: b.stream, attrs: attr, numAttrs: 1}
				if err := b.l.call(b.l.cuLaunchKernelEx, "cuLaunchKernelEx", uintptr(unsafe.Pointer(&b.launchCfg)),
					o.fn, 0, uintptr(unsafe.Pointer(&b.extra[0]))); err != nil {
					if o.coop && coopRefused(err) {
						// The decode step is the only cooperative launch: from
						// now on DecodeLayers declines and steps run layer by layer.
						b.step.refused = true
						b.log.Warn("cuda: cooperative decode-step launch refused; decode steps run layer by layer", "err", err)
						return fmt.Errorf("%w: %w", ml.ErrRetryStep, err)
					}
					return err
				}
				continue
			}
			if err := b.l.call(b.l.cuLaunchKernel, "cuLaunchKernel", o.fn,
				uintptr(o.grid[0]), uintptr(o.grid[1]), uintptr(o.grid[2]),
				uintptr(o.block[0]), uintptr(o.block[1]), uintptr(o.block[2]),
				uintptr(o.shmem), b.stream, 0, uintptr(unsafe.Pointer(&b.extra[0]))); err != nil {
				return err
			}
		case opGemm:
			g := &o.g
			beta := &b.zero
			if g.accumulate {
				beta = &b.one
			}
			if err := b.l.blascall(b.l.cublasGemmEx, "cublasGemmEx", b.blas,
				uintptr(g.transa), uintptr(g.transb), uintptr(g.m), uintptr(g.n), uintptr(g.k),
				uintptr(unsafe.Pointer(&b.one)), uintptr(g.a), uintptr(g.atype), uintptr(g.lda),
				uintptr(g.b), uintptr(g.btype), uintptr(g.ldb),
				uintptr(unsafe.Pointer(beta)), uintptr(g.c), uintptr(g.ctype), uintptr(g.ldc),
				uintptr(cublasCompute32), uintptr(gemmAlgoDefault)); err != nil {
				return err
			}
		case opAllReduce:
			if err := b.launchAllReduce(&o.coll); err != nil {
				return err
			}
		}
	}
	return nil
}

// invalidate drops the bf16 shadow when [p, p+n) overlaps its source.
func (b *Backend) invalidate(p uint64, n int64) {
	s := &b.shadow
	if !s.valid {
		return
	}
	sn := uint64(s.rows * s.cols * 4)
	if p < s.ptr+sn && s.ptr < p+uint64(n) {
		s.valid = false
	}
}
