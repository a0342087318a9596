// Package cuda is the NVIDIA GPU implementation of ml.Backend. It needs no
// cgo: github.com/ebitengine/purego dlopens the CUDA driver (libcuda.so.1),
// NVRTC and cuBLAS at run time, so one CGO_ENABLED=0 binary runs on machines
// without a GPU and uses one when present.
//
// Kernels are CUDA C (kernels/*.cu, embedded) compiled by NVRTC for the
// device's architecture at start-up and cached under
// os.UserCacheDir()/llmserve/cuda, compiled as several units in parallel.
// GEMMs go through cublasGemmEx with f32 accumulation; bf16 weights meet
// f32 activations split into two bf16 halves (f32-grade products on the
// tensor cores), or rounded once with Options.RoundActivations; f16
// weights take f16 activations.
//
// Ops are recorded, not launched, until something needs the results
// (Download, Sync, an upload, a free). A recorded step whose launches are
// byte-for-byte those of an earlier step (same kernels, shapes and device
// pointers) is replayed from a CUDA graph captured the second time it is
// seen; a decode step of the same batch size therefore costs one graph
// launch instead of hundreds of kernel launches.
//
// Files by concern: backend.go (options, device set-up, Close), lib.go and
// driver.go (the libraries), nvrtc.go (compiling and caching the kernels),
// memory.go and convert.go (tensors, copies, dtype conversion on the host,
// the KV cache), launch.go (recording, graphs),
// ops.go and moe.go (ml.Backend's ops), fused.go and step.go (the fused
// decode GEMVs and the one-launch decode step), layers.go (ml.LayerFuser:
// which of them a step runs), nccl.go (collectives).
package cuda

import (
	_ "embed"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/llmserve/llmserve/ml"
)

// The kernels, one file per concern, compiled as one program in this
// order (each file uses the helpers of the files before it; common.cu's
// types and conversions come first).
var (
	//go:embed kernels/common.cu
	commonCU []byte
	//go:embed kernels/norm.cu
	normCU []byte
	//go:embed kernels/gemv.cu
	gemvCU []byte
	//go:embed kernels/rows.cu
	rowsCU []byte
	//go:embed kernels/grid.cu
	gridCU []byte
	//go:embed kernels/attention.cu
	attentionCU []byte
	//go:embed kernels/flash.cu
	flashCU []byte
	//go:embed kernels/fp8.cu
	fp8CU []byte
	//go:embed kernels/dgemv.cu
	dgemvCU []byte
	//go:embed kernels/step.cu
	stepCU []byte
	//go:embed kernels/moe.cu
	moeCU []byte

	kernelSource = joinSources(
		kernelFile{"common.cu", commonCU}, kernelFile{"norm.cu", normCU}, kernelFile{"gemv.cu", gemvCU},
		kernelFile{"rows.cu", rowsCU}, kernelFile{"grid.cu", gridCU}, kernelFile{"attention.cu", attentionCU},
		kernelFile{"flash.cu", flashCU}, kernelFile{"fp8.cu", fp8CU}, kernelFile{"dgemv.cu", dgemvCU},
		kernelFile{"step.cu", stepCU}, kernelFile{"moe.cu", moeCU})
)

type kernelFile struct {
	name string
	src  []byte
}

// joinSources concatenates kernel files in order, each after a #line
// directive so that NVRTC's messages name the file and line.
func joinSources(files ...kernelFile) []byte {
	var out []byte
	for _, f := range files {
		out = append(out, fmt.Sprintf("#line 1 %q\n", f.name)...)
		out = append(out, f.src...)
		out = append(out, '\n')
	}
	return out
}

// ErrShape is returned when an op's tensors do not have the shapes it needs.
var ErrShape = errors.New("cuda: shape mismatch")

// Options configure New.
type Options struct {
	Device   int          // CUDA device ordinal
	Logger   *slog.Logger // nil: slog.Default()
	CacheDir string       // kernel cache; "": os.UserCacheDir()/llmserve/cuda; "-": no cache
	// DisableGraphs turns off CUDA graph capture and replay of repeated steps.
	DisableGraphs bool
	// GraphMinOps is the fewest launches a step must have to be captured (default 24).
	GraphMinOps int
	// MaxGraphs bounds the number of cached graphs (default 1024); past
	// it, a new step shape takes the place of the least recently used.
	MaxGraphs int
	// CublasWorkspace is cuBLAS's workspace in bytes (default 32 MiB).
	CublasWorkspace int
	// SkinnyMaxT: MatMuls of at most this many rows use the f32-activation
	// GEMV kernel instead of cuBLAS (0: default, off; negative: never).
	SkinnyMaxT int
	// GemvMaxT: bf16 MatMuls of at most this many rows (1, 2, 4 or 8) use the
	// bandwidth-bound GEMV kernel (bf16 x, f32 accumulation) instead of
	// cuBLAS (0: default, off; negative: never).
	GemvMaxT int
	// GemvKS picks the GEMV form: 0 the persistent kernel (one warp per row,
	// grid sized to the SMs), 1, 2, 4 or 8 one launch block per 8/KS rows
	// with KS warps splitting each row's K. For benchmarks.
	GemvKS int
	// LazyKernels compiles (on a machine without the kernel cache) only the
	// kernels every model needs from the start: the one-launch decode-step
	// kernels, the largest compiles, and the FP8 kernels wait until
	// PrepareKernels or a step asks for them. The first steps run before
	// the model's decode-step kernel is there (one-token steps take the
	// fused GEMVs meanwhile); an FP8 kernel's first launch waits for its
	// units. The server sets it; without it every kernel compiles at once
	// and the first kernel launch waits for all of them.
	LazyKernels bool
	// ExactActivations runs every bf16/f16 MatMul on the f32-activation GEMV
	// kernels (f32 arithmetic throughout, slow for large batches) instead
	// of the tensor-core GEMMs, and makes the cache of KV dtype "auto" f32:
	// the closest to the CPU backend, for tests.
	ExactActivations bool
	// RoundActivations rounds f32 activations to bf16 for the bf16 GEMMs
	// and GEMVs (one tensor-core pass, as vLLM does) instead of keeping
	// them in f32 or splitting them into two bf16 halves: faster prefill
	// at ~2^-9 relative error per GEMM input. For benchmarks and for
	// comparing with servers that round.
	RoundActivations bool
	// DisableFusion turns off the record-time fusions (q/k/v GEMV merge,
	// GEMV bias, RoPE q+k and WriteKV); for A/B measurements.
	DisableFusion bool
	// FusedDecodeMaxT: steps of at most this many tokens (1, 2 or 4) take
	// the fused decode ops (the dgemv kernels: RMSNorm, RoPE/KV write,
	// SiLU and residual adds folded into bandwidth-bound GEMVs) where the
	// model uses them (0: defaultFusedDecodeMaxT; negative: never).
	FusedDecodeMaxT int
	// DgemvKS forces the fused GEMVs' split-K factor (1, 2, 4 or 8 warps
	// per pair of rows; 0: chosen per shape). For benchmarks.
	DgemvKS int
	// EnablePDL launches kernels with programmatic dependent launch
	// (compute capability 9.0 and later): each may start while the one
	// before it drains. Off by default: on an H100 the fused decode step
	// was 1-2% slower with it (results/h100).
	EnablePDL bool
	// DisableStepKernel runs one-token steps layer by layer instead of in
	// the one cooperative decode-step launch (DecodeLayers).
	DisableStepKernel bool
}

// Backend is the CUDA ml.Backend. Its methods are safe for concurrent use
// but serialise on one stream.
type Backend struct {
	fusedForwards atomic.Int64 // steps run on fused layers (tests)
	mu            sync.Mutex
	l             *libs
	dev           *deviceInfo
	opts          Options
	log           *slog.Logger

	ctx, stream, blas uintptr
	fns               map[string]uintptr // filled by loadKernels (and stepKernel, fp8Kernels)
	dynShared         map[uintptr]uint32 // kernels opted in to more than 48 KiB of dynamic shared memory (optInShared)
	fp8Loaded         bool               // fp8Kernels has run
	units             []*kernelUnit      // the kernel units' compiles and modules
	kernelErr         error              // loading them failed

	workspace devBuf // cuBLAS workspace
	act16     devBuf // activations cast for GEMM
	split32   devBuf // splitGemm's products of the hi and lo halves
	sh16      devBuf // bf16 copy of the last normed / SiLU output
	part      devBuf // attention split partials
	// flashMin: steps with at least this many tokens beyond one per
	// sequence take the tensor-core flash attention (bf16 caches).
	flashMin int
	// flashLeft: the rows a step's flash leaves to the per-token kernels
	// (Attention), kept across the step's layers.
	flashLeft flashLeftPlan
	// laneAttn: per-token attention pieces stay on the lane-per-dims
	// kernel where the tensor-core one applies (tests and benchmarks).
	laneAttn bool
	step     stepState
	amPart   devBuf // argmax partials (values, then indices)
	pinned   pinnedStage
	// wstage: the pinned weight buffers (uploadWeight), one allocation;
	// wstageFailed: it could not be made.
	wstage       [2][]byte
	wstageFailed bool
	amCount      devBuf // argmax per-row block counters
	moeGroup     devBuf // MatMulExperts' rows grouped by expert (moe_align)
	mmaPart      devBuf // split-K partial sums of dense FP8 products (f8Slices)
	w16          devBuf // FP8 weight rows widened to bf16 for cuBLAS (matMulF8Wide)
	shadow       struct {
		ptr        uint64
		rows, cols int
		valid      bool
	}
	gateUp16   int  // MLPs recorded by gateUpSiLU16 (tests)
	tcAttn     int  // Attention calls recorded on attn_tc (tests)
	prefixAttn int  // Attention calls beside flash whose per-token grid was a prefix of the step (tests)
	useShadow  bool // a bf16 weight was loaded under RoundActivations: norms also write bf16 copies
	pdl        bool // kernels launch with programmatic stream serialization
	launchCfg  launchConfig
	launchPDL  launchAttr
	launchCoop launchAttr
	nextCoop   bool // the next push is a cooperative launch
	skinnyRec  skinnyRec
	ropeRec    ropeRec

	// recording
	ops    []op
	args   []byte
	trace  []byte
	extra  [5]uintptr
	argLen uint64
	one    float32
	zero   float32

	seed       maphash.Seed
	graphs     map[uint64]*graphEntry
	numGraph   int
	graphClock uint64 // flushes so far (graphEntry.used)
	// graphEvictions counts entries evicted for new ones (tests).
	graphEvictions int

	closed bool
	nccl   *ncclLib // loaded by the first all-reduce launched
}

var _ ml.Backend = (*Backend)(nil)

type devBuf struct {
	ptr  uint64
	size int64
}

type opKind uint8

const (
	opKernel opKind = iota
	opGemm
	opAllReduce // an NCCL all-reduce (nccl.go)
)

type op struct {
	kind          opKind
	coop          bool // a cooperative launch (all blocks resident)
	pdl           bool // launched with programmatic dependent launch (after a decode step; see stepState)
	traceOff      int
	fn            uintptr
	grid, block   [3]uint32
	shmem         uint32 // dynamic shared memory, bytes
	argOff, argSz int
	g             gemmArgs
	coll          collArgs
}

type gemmArgs struct {
	accumulate              bool // C += A·B (beta 1), else C = A·B
	transa, transb, m, n, k int32
	a                       uint64
	atype, lda              int32
	b                       uint64
	btype, ldb              int32
	c                       uint64
	ctype, ldc              int32
}

// launchConfig and launchAttr are CUlaunchConfig and CUlaunchAttribute
// (cuda.h, 64-bit layout) for cuLaunchKernelEx.
type launchConfig struct {
	gridX, gridY, gridZ    uint32
	blockX, blockY, blockZ uint32
	shmem                  uint32
	_                      uint32
	stream                 uintptr
	attrs                  *launchAttr
	numAttrs               uint32
	_                      uint32
}

type launchAttr struct {
	id  uint32
	_   uint32
	val [64]byte
}

// launchAttrProgrammaticStreamSerialization is
// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION.
const launchAttrProgrammaticStreamSerialization = 6

// launchAttrCooperative is CU_LAUNCH_ATTRIBUTE_COOPERATIVE.
const launchAttrCooperative = 2

type graphEntry struct {
	trace  []byte
	seen   int
	exec   uintptr
	failed bool
	used   uint64 // Backend.graphClock at its last flush: the least recent goes first
}

type tensor struct {
	owner      *Backend
	ptr        uint64
	dt         ml.DType
	rows, cols int
	owned      bool
	scales     uint64 // F8: the rows' f32 scales (in ptr's allocation)
}

func (t *tensor) DType() ml.DType { return t.dt }
func (t *tensor) Rows() int       { return t.rows }
func (t *tensor) Cols() int       { return t.cols }
func (t *tensor) n() int          { return t.rows * t.cols }
func (t *tensor) bytes() int64    { return int64(t.rows) * int64(t.cols) * int64(t.dt.Size()) }

type kvCache struct {
	owner                                 *Backend
	ptr                                   uint64
	layers, numBlocks, blockSize, kvh, hd int
	dt                                    ml.DType
	layerBytes                            int64
}

func (c *kvCache) NumBlocks() int { return c.numBlocks }
func (c *kvCache) BlockSize() int { return c.blockSize }

// New opens device opts.Device, compiles (or loads cached) kernels and
// creates the stream and cuBLAS handle.
func New(opts Options) (ml.Backend, error) {
	return NewBackend(opts)
}

// NewBackend is New returning the concrete type (for the optional methods).
func NewBackend(opts Options) (*Backend, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.GraphMinOps <= 0 {
		opts.GraphMinOps = 24
	}
	if opts.MaxGraphs <= 0 {
		opts.MaxGraphs = 1024
	}
	if opts.SkinnyMaxT == 0 {
		// Off: in a whole decode step on an H100, cuBLAS beat it even at one
		// row (3.17 vs 3.45 ms per Qwen2.5-1.5B step), though it wins alone.
		opts.SkinnyMaxT = -1
	}
	switch {
	case opts.GemvMaxT == 0:
		opts.GemvMaxT = defaultGemvMaxT
	case opts.GemvMaxT > 8:
		opts.GemvMaxT = 8
	}
	switch {
	case opts.FusedDecodeMaxT == 0:
		opts.FusedDecodeMaxT = defaultFusedDecodeMaxT
	case opts.FusedDecodeMaxT > 4:
		opts.FusedDecodeMaxT = 4
	}
	if opts.CublasWorkspace <= 0 {
		opts.CublasWorkspace = 32 << 20
	}
	l, err := loadLibs()
	if err != nil {
		return nil, err
	}
	dev, err := l.probe(opts.Device)
	if err != nil {
		return nil, err
	}
	b := &Backend{l: l, dev: dev, opts: opts, log: log, one: 1,
		seed: maphash.MakeSeed(), graphs: map[uint64]*graphEntry{}}
	b.pdl = opts.EnablePDL && dev.major >= 9 && l.cuLaunchKernelEx != 0
	b.flashMin = defaultFlashMin
	b.launchPDL.id = launchAttrProgrammaticStreamSerialization
	b.launchPDL.val[0] = 1 // programmaticStreamSerializationAllowed
	b.launchCoop.id = launchAttrCooperative
	b.launchCoop.val[0] = 1

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := l.call(l.cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", uintptr(unsafe.Pointer(&b.ctx)), uintptr(dev.dev)); err != nil {
		return nil, err
	}
	fail := func(err error) (*Backend, error) {
		b.release()
		return nil, err
	}
	if err := l.call(l.cuCtxSetCurrent, "cuCtxSetCurrent", b.ctx); err != nil {
		return fail(err)
	}
	if err := l.call(l.cuStreamCreate, "cuStreamCreate", uintptr(unsafe.Pointer(&b.stream)), streamNonBlocking); err != nil {
		return fail(err)
	}
	// The kernels compile (or come from the cache) in the background while
	// the caller loads weights; the first kernel launch waits for them.
	// Units of fused GEMVs for more rows than FusedDecodeMaxT are never
	// begun (deferred, and no launch asks for them).
	deferred := func(u int) bool { return isDeferredUnit(u, opts.LazyKernels, opts.FusedDecodeMaxT) }
	if b.units, err = l.compileKernels(kernelSource, dev.major, dev.minor, dev.driver, opts.CacheDir, deferred, log); err != nil {
		return fail(err)
	}
	if err := l.blascall(l.cublasCreate, "cublasCreate", uintptr(unsafe.Pointer(&b.blas))); err != nil {
		return fail(err)
	}
	if err := l.blascall(l.cublasSetStream, "cublasSetStream", b.blas, b.stream); err != nil {
		return fail(err)
	}
	if err := b.ensure(&b.workspace, int64(opts.CublasWorkspace)); err != nil {
		return fail(err)
	}
	// A fixed workspace keeps cuBLAS from allocating during graph capture.
	if err := l.blascall(l.cublasSetWorkspace, "cublasSetWorkspace", b.blas, uintptr(b.workspace.ptr), uintptr(b.workspace.size)); err != nil {
		return fail(err)
	}
	if l.cuMemAllocHost != 0 && l.cuMemFreeHost != 0 {
		var p unsafe.Pointer
		if err := l.call(l.cuMemAllocHost, "cuMemAllocHost", uintptr(unsafe.Pointer(&p)), pinnedStageBytes); err == nil && p != nil {
			b.pinned.buf = unsafe.Slice((*byte)(p), pinnedStageBytes)
			b.pinned.maxUpload = pinnedMaxUpload
		} else {
			log.Warn("cuda: no pinned staging memory; small copies go through pageable memory", "err", err)
		}
	}
	var cbv int32
	_ = l.blascall(l.cublasGetVersion, "cublasGetVersion", b.blas, uintptr(unsafe.Pointer(&cbv)))
	log.Info("cuda: device ready", "device", dev.name, "ordinal", dev.ordinal,
		"sm", fmt.Sprintf("%d.%d", dev.major, dev.minor), "sms", dev.sms,
		"memory_gib", fmt.Sprintf("%.1f", float64(dev.totalMem)/(1<<30)), "driver", dev.driver,
		"cublas", cbv, "libcuda", l.cudaPath, "nvrtc", l.nvrtcPath, "libcublas", l.cublasPath,
		"graphs", !opts.DisableGraphs, "pdl", b.pdl, "fused_decode_max_t", max(opts.FusedDecodeMaxT, 0))
	return b, nil
}

// loadKernels waits for the kernel units to compile and loads them, once;
// every kernel launch goes through it. With LazyKernels it does not wait
// for the decode-step and FP8 units: stepKernel and fp8Kernels load them
// when asked.
func (b *Backend) loadKernels() error {
	if b.fns != nil {
		return nil
	}
	if b.kernelErr != nil {
		return b.kernelErr
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.exit()
	lazy := b.opts.LazyKernels
	for u, ku := range b.units {
		if isDeferredUnit(u, lazy, b.opts.FusedDecodeMaxT) {
			continue
		}
		if err := b.loadUnit(ku); err != nil {
			b.kernelErr = err
			return err
		}
	}
	fns := map[string]uintptr{}
	for _, name := range kernelNames() {
		if lazy && isStepKernel(name) || b.unusedKernel(name) {
			continue
		}
		fns[name] = b.findKernel(name)
		if fns[name] == 0 && !(lazy && isFP8Kernel(name)) {
			b.kernelErr = fmt.Errorf("%w: kernel %s is in no compiled unit", ErrDriver, name)
			return b.kernelErr
		}
	}
	b.fns = fns
	return nil
}

// fp8Kernels loads the FP8 units, waiting for their compile (started here
// unless PrepareKernels did), and resolves the FP8 kernels in them: with
// LazyKernels, the first launch of an FP8 kernel does this once.
func (b *Backend) fp8Kernels() error {
	if b.fp8Loaded {
		return nil
	}
	units := b.usedFP8Units()
	for _, u := range units {
		b.units[u].begin()
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.exit()
	for _, u := range units {
		if err := b.loadUnit(b.units[u]); err != nil {
			return err
		}
	}
	for _, name := range kernelNames() {
		if b.fns[name] != 0 || !isFP8Kernel(name) || isStepKernel(name) || b.unusedKernel(name) {
			continue
		}
		if b.fns[name] = b.findKernel(name); b.fns[name] == 0 {
			return fmt.Errorf("%w: kernel %s is in no compiled unit", ErrDriver, name)
		}
	}
	b.fp8Loaded = true
	return nil
}

// usedFP8Units are the fp8Units this backend's launches can need.
func (b *Backend) usedFP8Units() []int {
	var us []int
	for _, u := range fp8Units {
		if !unusedUnit(u, b.opts.FusedDecodeMaxT) {
			us = append(us, u)
		}
	}
	return us
}

// unusedKernel reports whether no launch of this backend asks for the
// kernel: a fused GEMV for more rows than FusedDecodeMaxT.
func (b *Backend) unusedKernel(name string) bool {
	return dgemvRows(name) > dgemvM(max(b.opts.FusedDecodeMaxT, 1))
}

// PrepareKernels implements ml.KernelPreparer: with LazyKernels, the
// compile of the decode-step kernel for the model's head dim and weights,
// and of the FP8 kernels when it has FP8 weights or an FP8 cache, starts
// now rather than at the first step that needs them.
func (b *Backend) PrepareKernels(n ml.KernelNeeds) {
	if !b.opts.LazyKernels {
		return
	}
	if n.Weights == ml.F8 || n.KV == ml.F8 {
		for _, u := range b.usedFP8Units() {
			b.units[u].begin()
		}
	}
	// The step kernel runs over bf16 and FP8 caches (see DecodeLayers).
	if n.HeadDim > 0 && n.HeadDim <= 256 && (n.KV == ml.BF16 || n.KV == ml.F8) && (n.Weights == ml.BF16 || n.Weights == ml.F8) {
		if v, ok := stepVariantFor(n.Weights == ml.F8, n.MoE); ok {
			b.units[stepUnit(stepEPL(n.HeadDim), v)].begin()
		}
	}
}

// loadUnit waits for unit ku and loads its module (the context current).
func (b *Backend) loadUnit(ku *kernelUnit) error {
	<-ku.done
	if ku.err != nil || ku.mod != 0 {
		return ku.err
	}
	if err := b.l.call(b.l.cuModuleLoadData, "cuModuleLoadData", uintptr(unsafe.Pointer(&ku.mod)), uintptr(unsafe.Pointer(&ku.img[0]))); err != nil {
		return err
	}
	ku.img = nil
	return nil
}

// findKernel is the kernel name in the first loaded unit that has it, or 0.
func (b *Backend) findKernel(name string) uintptr {
	for _, ku := range b.units {
		if f := b.unitFunction(ku, name); f != 0 {
			return f
		}
	}
	return 0
}

// unitFunction is the kernel name in ku's loaded module, or 0.
func (b *Backend) unitFunction(ku *kernelUnit, name string) uintptr {
	if ku.mod == 0 {
		return 0
	}
	cn := cstr(name)
	var f uintptr
	// A unit without the kernel answers CUDA_ERROR_NOT_FOUND.
	if b.l.call(b.l.cuModuleGetFunction, "cuModuleGetFunction "+name, uintptr(unsafe.Pointer(&f)), ku.mod, uintptr(unsafe.Pointer(&cn[0]))) != nil {
		return 0
	}
	return f
}

// isStepKernel reports whether name is a decode-step kernel's.
func isStepKernel(name string) bool {
	for epl := 1; epl <= 8; epl *= 2 {
		for _, v := range stepVariants {
			if name == stepKernelName(epl, v) {
				return true
			}
		}
	}
	return false
}

// errStepCompiling: the decode-step kernel a step asks for is still being
// compiled (LazyKernels); the step takes the fused GEMVs meanwhile.
var errStepCompiling = fmt.Errorf("%w: decode-step kernel still compiling", ml.ErrUnsupported)

// stepKernel is the decode-step kernel for epl elements per lane and
// variant v: loaded with the others, or with LazyKernels once its unit has
// compiled (whose compile the first ask starts; errStepCompiling until
// then, without waiting).
func (b *Backend) stepKernel(epl int, v stepVariant) (uintptr, error) {
	if err := b.loadKernels(); err != nil {
		return 0, err
	}
	name := stepKernelName(epl, v)
	if f := b.fns[name]; f != 0 {
		return f, nil
	}
	ku := b.units[stepUnit(epl, v)]
	ku.begin()
	select {
	case <-ku.done:
	default:
		return 0, errStepCompiling
	}
	if err := b.enter(); err != nil {
		return 0, err
	}
	defer b.exit()
	if err := b.loadUnit(ku); err != nil {
		return 0, err
	}
	f := b.unitFunction(ku, name)
	if f == 0 {
		return 0, fmt.Errorf("%w: kernel %s is not in its unit", ErrDriver, name)
	}
	b.fns[name] = f
	b.log.Info("cuda: decode-step kernel loaded", "kernel", name)
	return f, nil
}

func kernelNames() []string {
	n := []string{"embedding_f8", "cast_f32_bf16", "cast_f32_f16", "split_f32_bf16", "add_halves", "rope_kv_f32", "rope_kv_bf16", "silu_mul", "silu_mul16", "gather_rows", "argmax_rows", "attn_combine"}
	n = append(n, moeKernelNames()...)
	for _, s := range []string{"f32", "bf16", "f16"} {
		n = append(n, "embedding_"+s, "rmsnorm_"+s, "add_rmsnorm_"+s, "bias_add_"+s)
		for _, tt := range []int{1, 2, 4, 8} {
			n = append(n, fmt.Sprintf("skinny_%s_%d", s, tt))
		}
	}
	for _, e := range []string{"store", "add", "addf", "silu", "rope"} {
		for _, m := range []int{1, 2, 4} {
			for _, ks := range []int{1, 2, 4, 8} {
				n = append(n, fmt.Sprintf("dgemv_%s_%d_%d", e, m, ks), fmt.Sprintf("dgemv_%s_f8_%d_%d", e, m, ks))
			}
		}
	}
	for epl := 1; epl <= 8; epl *= 2 {
		for _, v := range stepVariants {
			n = append(n, stepKernelName(epl, v))
		}
	}
	for _, s := range []string{"f32", "bf16"} {
		for _, m := range []int{1, 2, 4, 8} {
			for _, ks := range []int{1, 2, 4, 8} {
				n = append(n, fmt.Sprintf("gemv_bf16_x%s_%d_%d", s, m, ks))
			}
			n = append(n, fmt.Sprintf("gemv_bf16_x%s_%d_p", s, m))
		}
		n = append(n, "write_kv_"+s, "qknorm_rope_kv_"+s)
		for _, e := range []int{1, 2, 4, 8} {
			n = append(n, fmt.Sprintf("attention_%s_%d", s, e))
		}
	}
	// An fp8 KV cache's kernels.
	n = append(n, "write_kv_f8", "rope_kv_f8", "qknorm_rope_kv_f8")
	for _, e := range []int{1, 2, 4, 8} {
		n = append(n, fmt.Sprintf("attention_f8_%d", e))
	}
	for _, d := range []int{64, 128} {
		for _, passes := range []int{1, 2} {
			n = append(n, fmt.Sprintf("flash_attn_bf16_%d_%d", d, passes))
			n = append(n, fmt.Sprintf("flash_attn_bf16_%d_%d_wide", d, passes))
		}
	}
	n = append(n, "gemv_f8")
	for _, dk := range []int{1, 2, 4, 8} {
		n = append(n, fmt.Sprintf("attn_tc_bf16_%d", dk))
	}
	return n
}

// Name implements ml.Backend.
func (b *Backend) Name() string { return "cuda" }

// ActivationDType implements ml.ActivationDTyper: the dtype a KV cache of
// dtype "auto" takes. It is the model's for bf16/f16 models, as vLLM's
// cache (the activations themselves stay f32 and reach the tensor cores as
// split bf16 halves), and f32 under ExactActivations.
func (b *Backend) ActivationDType(weights ml.DType) ml.DType {
	if b.opts.ExactActivations {
		return ml.F32
	}
	return weights
}

// DeviceName is the GPU's name (e.g. "NVIDIA H100 80GB HBM3").
func (b *Backend) DeviceName() string { return b.dev.name }

// enter makes the context current on this OS thread for the calls that follow.
func (b *Backend) enter() error {
	runtime.LockOSThread()
	if err := b.l.call(b.l.cuCtxSetCurrent, "cuCtxSetCurrent", b.ctx); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	return nil
}

func (b *Backend) exit() { runtime.UnlockOSThread() }

var errClosed = fmt.Errorf("%w: backend closed", ml.ErrUnsupported)

func (b *Backend) lock() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return errClosed
	}
	return nil
}

// Sync implements ml.Backend.
func (b *Backend) Sync() error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	return b.flushSync()
}

// Launch sends the ops recorded so far to the GPU without waiting for
// them, so that the host can prepare what the next ops need meanwhile.
func (b *Backend) Launch() error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	return b.flush()
}

func (b *Backend) flushSync() error {
	if err := b.flush(); err != nil {
		return err
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.exit()
	return b.streamSync()
}

// Close implements ml.Backend: it waits for queued work and releases the
// stream, graphs, cuBLAS and the context (with every tensor of it).
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	err := b.flushSync()
	b.release()
	b.closed = true
	return err
}

func (b *Backend) release() {
	for _, ku := range b.units {
		ku.once.Do(func() {}) // a deferred compile not begun never starts now
		if !ku.pending() {
			<-ku.done // no compile outlives the backend
		}
	}
	if b.ctx == 0 {
		return
	}
	if b.enter() != nil {
		return
	}
	defer b.exit()
	for _, g := range b.graphs {
		if g.exec != 0 {
			_ = b.l.call(b.l.cuGraphExecDestroy, "cuGraphExecDestroy", g.exec)
		}
	}
	b.graphs = nil
	if b.blas != 0 {
		_ = b.l.blascall(b.l.cublasDestroy, "cublasDestroy", b.blas)
	}
	for _, d := range []*devBuf{&b.workspace, &b.act16, &b.split32, &b.sh16, &b.part, &b.amPart, &b.amCount, &b.moeGroup, &b.mmaPart, &b.w16, &b.step.table, &b.step.acts, &b.step.bar, &b.step.stamps} {
		if d.ptr != 0 {
			_ = b.l.call(b.l.cuMemFree, "cuMemFree", uintptr(d.ptr))
		}
	}
	if b.pinned.buf != nil {
		_ = b.l.call(b.l.cuMemFreeHost, "cuMemFreeHost", uintptr(unsafe.Pointer(&b.pinned.buf[0])))
		b.pinned.buf = nil
	}
	if b.wstage[0] != nil {
		_ = b.l.call(b.l.cuMemFreeHost, "cuMemFreeHost", uintptr(unsafe.Pointer(&b.wstage[0][0])))
		b.wstage = [2][]byte{}
	}
	for _, ku := range b.units {
		if ku.mod != 0 {
			_ = b.l.call(b.l.cuModuleUnload, "cuModuleUnload", ku.mod)
			ku.mod = 0
		}
	}
	if b.stream != 0 {
		_ = b.l.call(b.l.cuStreamDestroy, "cuStreamDestroy", b.stream)
	}
	_ = b.l.call(b.l.cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease", uintptr(b.dev.dev))
	b.ctx = 0
}
