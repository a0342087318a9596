// Package cuda is the NVIDIA GPU implementation of ml.Backend. It needs no
// cgo: github.com/ebitengine/purego dlopens the CUDA driver (libcuda.so.1),
// NVRTC and cuBLAS at run time, so one CGO_ENABLED=0 binary runs on machines
// without a GPU and uses one when present.
//
// Kernels are CUDA C (kernels/*.cu, embedded) compiled by NVRTC for the
// device's architecture at start-up and cached under
// os.UserCacheDir()/llmserve/cuda. GEMMs go through cublasGemmEx with f32
// accumulation (bf16/f16 weights take bf16/f16 activations).
//
// Ops are recorded, not launched, until something needs the results
// (Download, Sync, an upload, a free). A recorded step whose launches are
// byte-for-byte those of an earlier step (same kernels, shapes and device
// pointers) is replayed from a CUDA graph captured the second time it is
// seen; a decode step of the same batch size therefore costs one graph
// launch instead of hundreds of kernel launches.
package cuda

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"unsafe"

	"github.com/llmserve/llmserve/ml"
)

// The kernels, one file per concern, compiled as one program (later files
// use the helpers of kernels.cu).
var (
	//go:embed kernels/kernels.cu
	kernelsCU []byte
	//go:embed kernels/moe.cu
	moeCU []byte

	kernelSource = joinSources(kernelFile{"kernels.cu", kernelsCU}, kernelFile{"moe.cu", moeCU})
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
	// MaxGraphs bounds the number of cached graphs (default 1024).
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
	// ExactActivations makes every bf16/f16 MatMul keep f32 activations (the
	// GEMV kernel, slow for large batches) instead of rounding them to the
	// weight dtype for cuBLAS: bit-for-bit closer to the CPU backend.
	ExactActivations bool
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
	mu   sync.Mutex
	l    *libs
	dev  *deviceInfo
	opts Options
	log  *slog.Logger

	ctx, stream, module, blas uintptr
	fns                       map[string]uintptr

	workspace devBuf // cuBLAS workspace
	act16     devBuf // activations cast for GEMM
	sh16      devBuf // bf16 copy of the last normed / SiLU output
	part      devBuf // attention split partials
	step      stepState
	amPart    devBuf // argmax partials (values, then indices)
	pinned    pinnedStage
	amCount   devBuf // argmax per-row block counters
	moeGroup  devBuf // MatMulExperts' rows grouped by expert (moe_align)
	shadow    struct {
		ptr        uint64
		rows, cols int
		valid      bool
	}
	useShadow  bool // a bf16 weight was loaded: norms also write bf16 copies
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

	seed     maphash.Seed
	graphs   map[uint64]*graphEntry
	numGraph int

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
	argOff, argSz int
	g             gemmArgs
	coll          collArgs
}

type gemmArgs struct {
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
}

type tensor struct {
	owner      *Backend
	ptr        uint64
	dt         ml.DType
	rows, cols int
	owned      bool
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
	case opts.ExactActivations:
		opts.FusedDecodeMaxT = -1 // the fused o and down GEMVs read bf16 copies of their inputs
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
	b := &Backend{l: l, dev: dev, opts: opts, log: log, fns: map[string]uintptr{}, one: 1,
		seed: maphash.MakeSeed(), graphs: map[uint64]*graphEntry{}}
	b.pdl = opts.EnablePDL && dev.major >= 9 && l.cuLaunchKernelEx != 0
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
	img, err := l.compileKernels(kernelSource, dev.major, dev.minor, dev.driver, opts.CacheDir, log)
	if err != nil {
		return fail(fmt.Errorf("cuda: compiling kernels for sm_%d%d: %w", dev.major, dev.minor, err))
	}
	if err := l.call(l.cuModuleLoadData, "cuModuleLoadData", uintptr(unsafe.Pointer(&b.module)), uintptr(unsafe.Pointer(&img[0]))); err != nil {
		return fail(err)
	}
	for _, name := range kernelNames() {
		var f uintptr
		cn := cstr(name)
		if err := l.call(l.cuModuleGetFunction, "cuModuleGetFunction "+name, uintptr(unsafe.Pointer(&f)), b.module, uintptr(unsafe.Pointer(&cn[0]))); err != nil {
			return fail(err)
		}
		b.fns[name] = f
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

func kernelNames() []string {
	n := []string{"cast_f32_bf16", "cast_f32_f16", "rope_kv_f32", "rope_kv_bf16", "silu_mul", "gather_rows", "argmax_rows", "attn_combine"}
	n = append(n, moeKernelNames()...)
	for _, s := range []string{"f32", "bf16", "f16"} {
		n = append(n, "embedding_"+s, "rmsnorm_"+s, "add_rmsnorm_"+s, "bias_add_"+s)
		for _, tt := range []int{1, 2, 4, 8} {
			n = append(n, fmt.Sprintf("skinny_%s_%d", s, tt))
		}
	}
	for _, e := range []string{"store", "add", "silu", "rope"} {
		for _, m := range []int{1, 2, 4} {
			for _, ks := range []int{1, 2, 4, 8} {
				n = append(n, fmt.Sprintf("dgemv_%s_%d_%d", e, m, ks))
			}
		}
	}
	for _, k := range stepKernels {
		if k != "" {
			n = append(n, k)
		}
	}
	for _, s := range []string{"f32", "bf16"} {
		for _, m := range []int{1, 2, 4, 8} {
			for _, ks := range []int{1, 2, 4, 8} {
				n = append(n, fmt.Sprintf("gemv_bf16_x%s_%d_%d", s, m, ks))
			}
			n = append(n, fmt.Sprintf("gemv_bf16_x%s_%d_p", s, m))
		}
		n = append(n, "write_kv_"+s)
		for _, e := range []int{1, 2, 4, 8} {
			n = append(n, fmt.Sprintf("attention_%s_%d", s, e))
		}
	}
	return n
}

// Name implements ml.Backend.
func (b *Backend) Name() string { return "cuda" }

// ActivationDType implements ml.ActivationDTyper: bf16/f16 models compute
// with activations in their dtype (rounded for the tensor-core GEMMs)
// unless ExactActivations keeps them in f32.
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

func (b *Backend) alloc(n int64) (uint64, error) {
	if n < 256 {
		n = 256
	}
	if err := b.enter(); err != nil {
		return 0, err
	}
	defer b.exit()
	var p uint64
	if err := b.l.call(b.l.cuMemAlloc, "cuMemAlloc", uintptr(unsafe.Pointer(&p)), uintptr(n)); err != nil {
		return 0, err
	}
	if err := b.l.call(b.l.cuMemsetD8Async, "cuMemsetD8Async", uintptr(p), 0, uintptr(n), b.stream); err != nil {
		_ = b.l.call(b.l.cuMemFree, "cuMemFree", uintptr(p))
		return 0, err
	}
	return p, nil
}

// freeDev releases device memory after all queued work that may use it.
func (b *Backend) freeDev(p uint64) error {
	if p == 0 {
		return nil
	}
	if err := b.flushSync(); err != nil {
		return err
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.exit()
	return b.l.call(b.l.cuMemFree, "cuMemFree", uintptr(p))
}

// ensure grows a scratch buffer to at least n bytes (growing invalidates graphs
// only by changing the pointers recorded in later steps).
func (b *Backend) ensure(d *devBuf, n int64) error {
	if d.size >= n {
		return nil
	}
	n = max(n, d.size*3/2)
	if err := b.freeDev(d.ptr); err != nil {
		return err
	}
	d.ptr, d.size = 0, 0
	p, err := b.alloc(n)
	if err != nil {
		return err
	}
	d.ptr, d.size = p, n
	return nil
}

// NewTensor implements ml.Backend.
func (b *Backend) NewTensor(dt ml.DType, rows, cols int) (ml.Tensor, error) {
	if err := b.lock(); err != nil {
		return nil, err
	}
	defer b.mu.Unlock()
	return b.newTensor(dt, rows, cols)
}

func (b *Backend) newTensor(dt ml.DType, rows, cols int) (*tensor, error) {
	if rows < 0 || cols < 0 {
		return nil, fmt.Errorf("%w: negative shape %dx%d", ErrShape, rows, cols)
	}
	switch dt {
	case ml.F32, ml.F16, ml.BF16, ml.I32:
	default:
		return nil, fmt.Errorf("%w: cuda tensor dtype %v", ml.ErrUnsupported, dt)
	}
	t := &tensor{owner: b, dt: dt, rows: rows, cols: cols, owned: true}
	p, err := b.alloc(t.bytes())
	if err != nil {
		return nil, err
	}
	t.ptr = p
	return t, nil
}

// LoadWeight implements ml.Backend. I8 storage is not supported (ErrUnsupported).
func (b *Backend) LoadWeight(rows, cols int, data []byte, src, store ml.DType) (ml.Tensor, error) {
	if err := b.lock(); err != nil {
		return nil, err
	}
	defer b.mu.Unlock()
	n := rows * cols
	if src.Size() == 0 || len(data) < n*src.Size() {
		return nil, fmt.Errorf("%w: weight %dx%d of %v needs %d bytes, got %d", ErrShape, rows, cols, src, n*src.Size(), len(data))
	}
	switch src {
	case ml.F32, ml.F16, ml.BF16:
	default:
		return nil, fmt.Errorf("%w: weight source dtype %v", ml.ErrUnsupported, src)
	}
	switch store {
	case ml.F32, ml.F16, ml.BF16:
	default:
		return nil, fmt.Errorf("%w: weight storage %v on cuda", ml.ErrUnsupported, store)
	}
	host := convertHost(data[:n*src.Size()], src, store)
	t, err := b.newTensor(store, rows, cols)
	if err != nil {
		return nil, err
	}
	if store == ml.BF16 {
		b.useShadow = true
	}
	if n == 0 {
		return t, nil
	}
	if err := b.flush(); err != nil {
		return nil, err
	}
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.exit()
	if err := b.streamSync(); err != nil {
		return nil, err
	}
	if err := b.l.call(b.l.cuMemcpyHtoD, "cuMemcpyHtoD", uintptr(t.ptr), uintptr(unsafe.Pointer(&host[0])), uintptr(len(host))); err != nil {
		return nil, err
	}
	return t, nil
}

// View implements ml.Backend; out-of-range requests are clamped (ops then
// report the shape mismatch).
func (b *Backend) View(t ml.Tensor, start, rows int) ml.Tensor {
	src, ok := t.(*tensor)
	if !ok || src == nil {
		return t
	}
	start = min(max(start, 0), src.rows)
	rows = min(max(rows, 0), src.rows-start)
	return &tensor{owner: b, ptr: src.ptr + uint64(start*src.cols*src.dt.Size()), dt: src.dt, rows: rows, cols: src.cols}
}

func (b *Backend) tens(t ml.Tensor, what string) (*tensor, error) {
	x, ok := t.(*tensor)
	if !ok || x == nil {
		return nil, fmt.Errorf("%w: %s is not a cuda tensor (%T)", ErrShape, what, t)
	}
	if x.owner != b {
		return nil, fmt.Errorf("%w: %s belongs to another backend", ErrShape, what)
	}
	return x, nil
}

func (b *Backend) upload(t ml.Tensor, src unsafe.Pointer, n int, dt ml.DType) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	x, err := b.tens(t, "upload target")
	if err != nil {
		return err
	}
	if x.dt != dt {
		return fmt.Errorf("%w: upload of %v into %v tensor", ErrShape, dt, x.dt)
	}
	if n > x.n() {
		return fmt.Errorf("%w: upload of %d elements into %dx%d", ErrShape, n, x.rows, x.cols)
	}
	if n == 0 {
		return nil
	}
	b.invalidate(x.ptr, int64(n)*4)
	if err := b.flush(); err != nil {
		return err
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.exit()
	var p []byte
	if n*4 <= b.pinned.maxUpload {
		p = b.pinned.take(n * 4)
	}
	if p != nil {
		copy(p, unsafe.Slice((*byte)(src), n*4))
		return b.l.call(b.l.cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync", uintptr(x.ptr), uintptr(unsafe.Pointer(&p[0])), uintptr(n*4), b.stream)
	}
	// Pageable source: the driver stages it before returning, so the caller
	// may reuse it at once; the copy stays ordered on the stream.
	return b.l.call(b.l.cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync", uintptr(x.ptr), uintptr(src), uintptr(n*4), b.stream)
}

// UploadI32 implements ml.Backend.
func (b *Backend) UploadI32(t ml.Tensor, src []int32) error {
	if len(src) == 0 {
		return nil
	}
	return b.upload(t, unsafe.Pointer(&src[0]), len(src), ml.I32)
}

// UploadF32 implements ml.Backend.
func (b *Backend) UploadF32(t ml.Tensor, src []float32) error {
	if len(src) == 0 {
		return nil
	}
	return b.upload(t, unsafe.Pointer(&src[0]), len(src), ml.F32)
}

func (b *Backend) download(dst unsafe.Pointer, n int, t ml.Tensor, dt ml.DType) error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	x, err := b.tens(t, "download source")
	if err != nil {
		return err
	}
	if x.dt != dt {
		return fmt.Errorf("%w: download of a %v tensor as %v", ErrShape, x.dt, dt)
	}
	if n < x.n() {
		return fmt.Errorf("%w: download of %dx%d into %d elements", ErrShape, x.rows, x.cols, n)
	}
	if err := b.flush(); err != nil {
		return err
	}
	if x.n() == 0 {
		return nil
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.exit()
	nb := x.n() * 4
	if p := b.pinned.take(nb); p != nil {
		if err := b.l.call(b.l.cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync", uintptr(unsafe.Pointer(&p[0])), uintptr(x.ptr), uintptr(nb), b.stream); err != nil {
			return err
		}
		if err := b.streamSync(); err != nil {
			return err
		}
		copy(unsafe.Slice((*byte)(dst), nb), p)
		return nil
	}
	if err := b.l.call(b.l.cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync", uintptr(dst), uintptr(x.ptr), uintptr(nb), b.stream); err != nil {
		return err
	}
	return b.streamSync()
}

// pinnedStage is page-locked host memory that copies go through: the
// driver transfers from it directly instead of staging pageable memory
// first, which made a step's inputs (tens of KiB at large batches) and its
// downloads faster (see pinnedMaxUpload; copies of a few bytes cost the
// same either way). Regions are handed out in order and all reused after
// the stream has been synchronized, when every copy queued from them has run.
type pinnedStage struct {
	buf       []byte // nil: no pinned memory (the copies use pageable memory)
	used      int
	maxUpload int // the largest upload staged (pinnedMaxUpload)
}

// pinnedStageBytes is enough for a step's packed inputs at a few hundred
// sequences and its greedy tokens; larger copies use pageable memory.
const pinnedStageBytes = 1 << 20

// pinnedMaxUpload is the largest upload staged. Measured on an H100 (an
// upload and a stream sync, results/h100/pinned-transfer.log): 64 KiB
// staged 15.9 µs against 19.0 from pageable memory, 600 KiB 67 against 58
// (the driver overlaps its own staging copy with the transfer). Downloads
// gained at every size measured, up to 600 KiB: 66 against 85 µs.
const pinnedMaxUpload = 64 << 10

// take returns n bytes of the stage that no queued copy uses, or nil.
func (s *pinnedStage) take(n int) []byte {
	if n <= 0 || s.used+n > len(s.buf) {
		return nil
	}
	p := s.buf[s.used : s.used+n : s.used+n]
	s.used = (s.used + n + 63) &^ 63
	return p
}

// streamSync waits for the stream; every staged copy has then run.
func (b *Backend) streamSync() error {
	if err := b.l.call(b.l.cuStreamSynchronize, "cuStreamSynchronize", b.stream); err != nil {
		return err
	}
	b.pinned.used = 0
	return nil
}

// Download implements ml.Backend.
func (b *Backend) Download(dst []float32, t ml.Tensor) error {
	if len(dst) == 0 {
		if x, ok := t.(*tensor); ok && x != nil && x.n() == 0 {
			return nil
		}
		return fmt.Errorf("%w: empty download destination", ErrShape)
	}
	return b.download(unsafe.Pointer(&dst[0]), len(dst), t, ml.F32)
}

// DownloadI32 copies the I32 tensor t to dst, waiting for queued work.
func (b *Backend) DownloadI32(dst []int32, t ml.Tensor) error {
	if len(dst) == 0 {
		return fmt.Errorf("%w: empty download destination", ErrShape)
	}
	return b.download(unsafe.Pointer(&dst[0]), len(dst), t, ml.I32)
}

// Free implements ml.Backend (views are ignored).
func (b *Backend) Free(t ml.Tensor) {
	if err := b.lock(); err != nil {
		return
	}
	defer b.mu.Unlock()
	x, ok := t.(*tensor)
	if !ok || x == nil || !x.owned || x.owner != b || x.ptr == 0 {
		return
	}
	b.invalidate(x.ptr, x.bytes())
	if err := b.freeDev(x.ptr); err != nil {
		b.log.Warn("cuda: free", "err", err)
	}
	x.ptr = 0
}

// NewKVCache implements ml.Backend; dt is F32 or BF16.
func (b *Backend) NewKVCache(layers, numBlocks, blockSize, numKVHeads, headDim int, dt ml.DType) (ml.KVCache, error) {
	if err := b.lock(); err != nil {
		return nil, err
	}
	defer b.mu.Unlock()
	if dt != ml.F32 && dt != ml.BF16 {
		return nil, fmt.Errorf("%w: kv cache dtype %v on cuda", ml.ErrUnsupported, dt)
	}
	if layers <= 0 || numBlocks <= 0 || blockSize <= 0 || numKVHeads <= 0 || headDim <= 0 {
		return nil, fmt.Errorf("%w: kv cache %d layers %d blocks of %d, %d heads of %d", ErrShape, layers, numBlocks, blockSize, numKVHeads, headDim)
	}
	if headDim > 256 {
		return nil, fmt.Errorf("%w: head dim %d > 256", ml.ErrUnsupported, headDim)
	}
	c := &kvCache{owner: b, layers: layers, numBlocks: numBlocks, blockSize: blockSize, kvh: numKVHeads, hd: headDim, dt: dt}
	c.layerBytes = int64(numBlocks) * int64(blockSize) * int64(numKVHeads) * int64(headDim) * int64(dt.Size())
	p, err := b.alloc(c.layerBytes * 2 * int64(layers))
	if err != nil {
		return nil, err
	}
	c.ptr = p
	return c, nil
}

// FreeKVCache implements ml.Backend.
func (b *Backend) FreeKVCache(c ml.KVCache) {
	if err := b.lock(); err != nil {
		return
	}
	defer b.mu.Unlock()
	kc, ok := c.(*kvCache)
	if !ok || kc == nil || kc.owner != b || kc.ptr == 0 {
		return
	}
	if err := b.freeDev(kc.ptr); err != nil {
		b.log.Warn("cuda: free kv cache", "err", err)
	}
	kc.ptr = 0
}

// MemInfo reports the device's free and total memory in bytes.
func (b *Backend) MemInfo() (free, total int64, err error) {
	if err := b.lock(); err != nil {
		return 0, 0, err
	}
	defer b.mu.Unlock()
	if err := b.enter(); err != nil {
		return 0, 0, err
	}
	defer b.exit()
	var f, t uint64
	err = b.l.call(b.l.cuMemGetInfo, "cuMemGetInfo", uintptr(unsafe.Pointer(&f)), uintptr(unsafe.Pointer(&t)))
	return int64(f), int64(t), err
}

// Sync implements ml.Backend.
func (b *Backend) Sync() error {
	if err := b.lock(); err != nil {
		return err
	}
	defer b.mu.Unlock()
	return b.flushSync()
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
	for _, d := range []*devBuf{&b.workspace, &b.act16, &b.sh16, &b.part, &b.amPart, &b.amCount, &b.moeGroup, &b.step.table, &b.step.acts, &b.step.bar, &b.step.stamps} {
		if d.ptr != 0 {
			_ = b.l.call(b.l.cuMemFree, "cuMemFree", uintptr(d.ptr))
		}
	}
	if b.pinned.buf != nil {
		_ = b.l.call(b.l.cuMemFreeHost, "cuMemFreeHost", uintptr(unsafe.Pointer(&b.pinned.buf[0])))
		b.pinned.buf = nil
	}
	if b.module != 0 {
		_ = b.l.call(b.l.cuModuleUnload, "cuModuleUnload", b.module)
	}
	if b.stream != 0 {
		_ = b.l.call(b.l.cuStreamDestroy, "cuStreamDestroy", b.stream)
	}
	_ = b.l.call(b.l.cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease", uintptr(b.dev.dev))
	b.ctx = 0
}

// ---- recording and replay ----

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
	fn := b.fns[name]
	if fn == 0 {
		b.args = b.args[:start]
		return fmt.Errorf("%w: kernel %s", ml.ErrUnsupported, name)
	}
	o := op{kind: opKernel, fn: fn, grid: grid, block: block, argOff: start, argSz: len(b.args) - start, traceOff: len(b.trace)}
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
	b.trace = binary.LittleEndian.AppendUint32(b.trace, uint32(o.argSz))
	b.trace = append(b.trace, b.args[start:]...)
	return nil
}

func (b *Backend) pushGemm(g gemmArgs) {
	b.ops = append(b.ops, op{kind: opGemm, g: g, traceOff: len(b.trace), argOff: len(b.args)})
	b.trace = append(b.trace, 0xFF)
	b.trace = binary.LittleEndian.AppendUint64(b.trace, g.a)
	b.trace = binary.LittleEndian.AppendUint64(b.trace, g.b)
	b.trace = binary.LittleEndian.AppendUint64(b.trace, g.c)
	for _, v := range []int32{g.transa, g.transb, g.m, g.n, g.k, g.atype, g.lda, g.btype, g.ldb, g.ctype, g.ldc} {
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
		switch {
		case e == nil:
			if b.numGraph < b.opts.MaxGraphs {
				b.graphs[h] = &graphEntry{trace: bytes.Clone(b.trace), seen: 1}
				b.numGraph++
			}
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
					blockX: o.block[0], blockY: o.block[1], blockZ: o.block[2],
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
				0, b.stream, 0, uintptr(unsafe.Pointer(&b.extra[0]))); err != nil {
				return err
			}
		case opGemm:
			g := &o.g
			if err := b.l.blascall(b.l.cublasGemmEx, "cublasGemmEx", b.blas,
				uintptr(g.transa), uintptr(g.transb), uintptr(g.m), uintptr(g.n), uintptr(g.k),
				uintptr(unsafe.Pointer(&b.one)), uintptr(g.a), uintptr(g.atype), uintptr(g.lda),
				uintptr(g.b), uintptr(g.btype), uintptr(g.ldb),
				uintptr(unsafe.Pointer(&b.zero)), uintptr(g.c), uintptr(g.ctype), uintptr(g.ldc),
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
