package cuda

import (
	"fmt"
	"unsafe"

	"github.com/llmserve/llmserve/ml"
)

// Device memory: tensors, uploads and downloads through the pinned stage,
// the KV cache.

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
	case ml.F8:
		return b.loadF8(rows, cols, data, src)
	default:
		return nil, fmt.Errorf("%w: weight storage %v on cuda (int8 weights have CPU kernels only)", ml.ErrUnsupported, store)
	}
	host := convertHost(data[:n*src.Size()], src, store)
	t, err := b.newTensor(store, rows, cols)
	if err != nil {
		return nil, err
	}
	if store == ml.BF16 && b.opts.RoundActivations {
		b.useShadow = true // only rounded activations read bf16 copies
	}
	if n == 0 {
		return t, nil
	}
	if err := b.uploadWeight(t.ptr, host); err != nil {
		return nil, err
	}
	return t, nil
}

// uploadWeight copies host to device memory at p once the stream has
// drained (a weight's bytes; the caller holds b.mu). A large weight goes
// through the two pinned weight buffers: the host fills one while the
// copy engine reads the other, where a copy from pageable memory stages
// through the driver's buffers one chunk after the other.
func (b *Backend) uploadWeight(p uint64, host []byte) error {
	if err := b.flush(); err != nil {
		return err
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.exit()
	if err := b.streamSync(); err != nil {
		return err
	}
	if len(host) < 2*weightStageBytes || !b.weightStage() {
		return b.l.call(b.l.cuMemcpyHtoD, "cuMemcpyHtoD", uintptr(p), uintptr(unsafe.Pointer(&host[0])), uintptr(len(host)))
	}
	for off, k := 0, 0; off < len(host); k++ {
		n := min(weightStageBytes, len(host)-off)
		// Free: the copy that last read it was waited for one chunk ago.
		buf := b.wstage[k%2]
		copy(buf, host[off:off+n])
		// Waits for the previous chunk's copy, which ran while this one
		// was filled, before the next fill reuses its buffer.
		if err := b.streamSync(); err != nil {
			return err
		}
		if err := b.l.call(b.l.cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync", uintptr(p)+uintptr(off),
			uintptr(unsafe.Pointer(&buf[0])), uintptr(n), b.stream); err != nil {
			return err
		}
		off += n
	}
	return b.streamSync()
}

// weightStageBytes is the size of each pinned weight buffer.
const weightStageBytes = 8 << 20

// weightStage allocates the pinned weight buffers on first use; false
// when there is no pinned memory (the copies then use pageable memory).
func (b *Backend) weightStage() bool {
	if b.wstage[0] != nil {
		return true
	}
	if b.wstageFailed || b.l.cuMemAllocHost == 0 {
		return false
	}
	var p unsafe.Pointer
	if err := b.l.call(b.l.cuMemAllocHost, "cuMemAllocHost", uintptr(unsafe.Pointer(&p)), 2*weightStageBytes); err != nil || p == nil {
		b.wstageFailed = true
		return false
	}
	all := unsafe.Slice((*byte)(p), 2*weightStageBytes)
	b.wstage = [2][]byte{all[:weightStageBytes:weightStageBytes], all[weightStageBytes:]}
	return true
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
	v := &tensor{owner: b, ptr: src.ptr + uint64(start*src.cols*src.dt.Size()), dt: src.dt, rows: rows, cols: src.cols}
	if src.scales != 0 {
		v.scales = src.scales + uint64(start*4)
	}
	return v
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

// NewKVCache implements ml.Backend; dt is F32, BF16 or F8 (E4M3, scale 1,
// as the CPU's).
func (b *Backend) NewKVCache(layers, numBlocks, blockSize, numKVHeads, headDim int, dt ml.DType) (ml.KVCache, error) {
	if err := b.lock(); err != nil {
		return nil, err
	}
	defer b.mu.Unlock()
	if dt != ml.F32 && dt != ml.BF16 && dt != ml.F8 {
		return nil, fmt.Errorf("%w: kv cache dtype %v on cuda (float32, bfloat16 or fp8)", ml.ErrUnsupported, dt)
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
