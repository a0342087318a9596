// Package cpu is the pure-Go ml.Backend: tensors live in Go slices, ops run
// on a persistent pool of one worker per core, and the hot loops call the
// SIMD kernels of ml/cpu/kernels (weights stay bf16/f16/int8 and are upcast
// in registers).
//
// A Backend runs one op at a time: like a CUDA stream it must not be used
// from several goroutines at once.
package cpu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu/kernels"
)

// ErrShape is returned (wrapped, with the shapes) for operands that do not fit.
var ErrShape = errors.New("cpu: shape mismatch")

// Options configures a Backend.
type Options struct {
	// Threads is the number of workers; 0 means runtime.NumCPU().
	Threads int
	// Logger receives start-up information; nil discards it.
	Logger *slog.Logger
	// ExactActivations keeps f32 activations in matmuls with int8
	// weights. By default, on CPUs with an int8 dot product (AVX512-VNNI),
	// the activations are quantized to int8 per block of 32 (as llama.cpp's
	// Q8_0) and multiplied in integer arithmetic.
	ExactActivations bool
}

// Backend implements ml.Backend on the CPU.
type Backend struct {
	log  *slog.Logger
	pool *pool

	// Preallocated op state, reused by every call so ops do not allocate.
	mm     matmulTask
	attn   flashTask
	rows   rowsTask
	rope   ropeTask
	exp    expertTask
	seqMax []int32 // per-sequence max position, for Attention's checks
	// MatMulExperts' and TopKSoftmax's scratch, grown to the largest call.
	expCount []int
	expOrder []int32
	probs    []float64
	wkvTmp   [256]uint16 // WriteKV's value column, converted in bulk
	// quantizeActs: int8-weight matmuls quantize their activations into q8.
	quantizeActs bool
	q8           kernels.Q8Acts
}

var _ ml.Backend = (*Backend)(nil)

// New starts a Backend and its workers; Close stops them.
func New(o Options) *Backend {
	n := o.Threads
	if n <= 0 {
		n = runtime.NumCPU()
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Backend{log: log, pool: newPool(n), quantizeActs: !o.ExactActivations && kernels.HasInt8Dot()}
	b.attn.scratch = make([]flashScratch, n)
	b.rope.scratch = make([][]float32, n)
	log.Info("cpu backend", "threads", n, "kernels", kernels.Features(), "int8_activations", b.quantizeActs)
	return b
}

// Name is "cpu".
func (b *Backend) Name() string { return "cpu" }

// ActivationDType implements ml.ActivationDTyper: the CPU computes in f32
// whatever the weights' dtype.
func (b *Backend) ActivationDType(ml.DType) ml.DType { return ml.F32 }

// Threads is the number of workers.
func (b *Backend) Threads() int { return b.pool.n }

// Tensor is a CPU tensor: one of the typed slices holds its rows*cols
// elements (I8 and F8 also hold one scale per row).
type Tensor struct {
	dt         ml.DType
	rows, cols int
	f32        []float32
	i32        []int32
	u16        []uint16 // F16, BF16
	i8         []int8
	f8         []uint8   // F8 (E4M3)
	scales     []float32 // I8, F8: per row
	// mem holds a weight's elements outside the Go heap (nil: in it);
	// owner is a view's parent, kept reachable so its mapping stays.
	mem   *arena
	owner *Tensor
	// segs, when set, holds the rows instead of f32/u16: a weight aliased
	// over parts that are not adjacent in memory (AliasWeight); only
	// MatMul reads it.
	segs []segment
}

func (t *Tensor) DType() ml.DType { return t.dt }
func (t *Tensor) Rows() int       { return t.rows }
func (t *Tensor) Cols() int       { return t.cols }

func (t *Tensor) String() string { return fmt.Sprintf("%s[%d,%d]", t.dt, t.rows, t.cols) }

// Bytes is the memory the tensor holds (I8 and F8 include their scales).
func (t *Tensor) Bytes() int64 {
	return int64(t.rows)*int64(t.cols)*int64(t.dt.Size()) + 4*int64(len(t.scales))
}

func alloc(dt ml.DType, rows, cols int) (*Tensor, error) {
	if rows < 0 || cols < 0 {
		return nil, fmt.Errorf("%w: negative shape [%d,%d]", ErrShape, rows, cols)
	}
	n := rows * cols
	if cols != 0 && n/cols != rows {
		return nil, fmt.Errorf("%w: shape [%d,%d] overflows", ErrShape, rows, cols)
	}
	t := &Tensor{dt: dt, rows: rows, cols: cols}
	switch dt {
	case ml.F32:
		t.f32 = make([]float32, n)
	case ml.I32:
		t.i32 = make([]int32, n)
	case ml.F16, ml.BF16:
		t.u16 = make([]uint16, n)
	case ml.I8:
		t.i8 = make([]int8, n)
		t.scales = make([]float32, rows)
	case ml.F8:
		t.f8 = make([]uint8, n)
		t.scales = make([]float32, rows)
	default:
		return nil, fmt.Errorf("%w: tensor dtype %s", ml.ErrUnsupported, dt)
	}
	return t, nil
}

// mappedWeightBytes is the size from which LoadWeight maps a weight outside
// the Go heap: the big matrices, not the norms and biases.
const mappedWeightBytes = 1 << 20

// allocWeight is alloc with the elements of large tensors in an arena
// outside the Go heap: weights live as long as the model and the garbage
// collector need not count them (they would double its heap goal).
func allocWeight(dt ml.DType, rows, cols int) (*Tensor, error) {
	if _, err := alloc(dt, 0, 0); err != nil { // the dtype check
		return nil, err
	}
	if rows < 0 || cols < 0 || (cols != 0 && rows*cols/cols != rows) {
		return alloc(dt, rows, cols) // its shape errors
	}
	n := rows * cols
	if !offHeap || n*dt.Size() < mappedWeightBytes {
		return alloc(dt, rows, cols)
	}
	t := &Tensor{dt: dt, rows: rows, cols: cols}
	mem, err := newArena(t, carvedSize(n*dt.Size(), 4*rows))
	if err != nil {
		return nil, err
	}
	t.mem = mem
	c := &carver{mem: mem.mem}
	switch dt { // LoadWeight's storage dtypes
	case ml.F32:
		t.f32 = carve[float32](c, n)
	case ml.F16, ml.BF16:
		t.u16 = carve[uint16](c, n)
	case ml.I8:
		t.i8 = carve[int8](c, n)
		t.scales = carve[float32](c, rows)
	case ml.F8:
		t.f8 = carve[uint8](c, n)
		t.scales = carve[float32](c, rows)
	}
	return t, nil
}

// NewTensor allocates a zeroed tensor.
func (b *Backend) NewTensor(dt ml.DType, rows, cols int) (ml.Tensor, error) {
	t, err := alloc(dt, rows, cols)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// LoadWeight converts host data of dtype src into a tensor of dtype store.
// I8 is symmetric per row: scale = max|row|/127, q = round(w/scale).
func (b *Backend) LoadWeight(rows, cols int, data []byte, src, store ml.DType) (ml.Tensor, error) {
	switch src {
	case ml.F32, ml.F16, ml.BF16:
	default:
		return nil, fmt.Errorf("%w: weight source dtype %s (want float32, float16 or bfloat16)", ml.ErrUnsupported, src)
	}
	switch store {
	case ml.F32, ml.F16, ml.BF16, ml.I8, ml.F8:
	default:
		return nil, fmt.Errorf("%w: weight storage dtype %s (want float32, float16, bfloat16, int8 or fp8_e4m3)", ml.ErrUnsupported, store)
	}
	if want := rows * cols * src.Size(); len(data) != want {
		return nil, fmt.Errorf("%w: weight [%d,%d] of %s needs %d bytes, got %d", ErrShape, rows, cols, src, want, len(data))
	}
	t, err := allocWeight(store, rows, cols)
	if err != nil {
		return nil, err
	}
	if rows == 0 || cols == 0 {
		return t, nil
	}
	// Convert row blocks in parallel: checkpoints hold billions of values.
	rowsPer := max(1, (1<<16)/cols)
	items := (rows + rowsPer - 1) / rowsPer
	b.pool.parallelFor(items, func(item int) {
		r0 := item * rowsPer
		r1 := min(rows, r0+rowsPer)
		buf := make([]float32, cols)
		for r := r0; r < r1; r++ {
			raw := data[r*cols*src.Size() : (r+1)*cols*src.Size()]
			// Same-dtype storage copies the bits exactly.
			if src == store && store != ml.F32 {
				dst := t.u16[r*cols : (r+1)*cols]
				for i := range dst {
					dst[i] = binary.LittleEndian.Uint16(raw[2*i:])
				}
				continue
			}
			decode(buf, raw, src)
			switch store {
			case ml.F32:
				copy(t.f32[r*cols:], buf)
			case ml.BF16:
				kernels.F32ToBF16(t.u16[r*cols:(r+1)*cols], buf)
			case ml.F16:
				kernels.F32ToF16(t.u16[r*cols:(r+1)*cols], buf)
			case ml.I8:
				t.scales[r] = quantizeRow(t.i8[r*cols:(r+1)*cols], buf)
			case ml.F8:
				quantizeF8(t, r, buf)
			}
		}
	})
	return t, nil
}

// decode widens little-endian src of dtype dt into dst.
func decode(dst []float32, src []byte, dt ml.DType) {
	switch dt {
	case ml.F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case ml.BF16:
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16)
		}
	case ml.F16:
		h := make([]uint16, len(dst))
		for i := range h {
			h[i] = binary.LittleEndian.Uint16(src[2*i:])
		}
		kernels.F16ToF32(dst, h)
	}
}

// quantizeRow stores row as symmetric int8 and returns its scale.
func quantizeRow(q []int8, row []float32) float32 {
	m := ml.MaxAbs(row)
	if m == 0 {
		clear(q)
		return 0
	}
	s := m / 127
	for i, v := range row {
		x := math.Round(float64(v) / s)
		q[i] = int8(max(-127, min(127, x)))
	}
	return float32(s)
}

// View shares rows [start, start+rows) of t; it returns nil (which every op
// rejects) for a range outside t.
func (b *Backend) View(t ml.Tensor, start, rows int) ml.Tensor {
	x, ok := t.(*Tensor)
	if !ok || x == nil || x.segs != nil || start < 0 || rows < 0 || start+rows > x.rows {
		return nil
	}
	v := &Tensor{dt: x.dt, rows: rows, cols: x.cols}
	if x.mem != nil {
		v.owner = x
	}
	lo, hi := start*x.cols, (start+rows)*x.cols
	switch x.dt {
	case ml.F32:
		v.f32 = x.f32[lo:hi:hi]
	case ml.I32:
		v.i32 = x.i32[lo:hi:hi]
	case ml.F16, ml.BF16:
		v.u16 = x.u16[lo:hi:hi]
	case ml.I8:
		v.i8 = x.i8[lo:hi:hi]
		v.scales = x.scales[start : start+rows : start+rows]
	case ml.F8:
		v.f8 = x.f8[lo:hi:hi]
		v.scales = x.scales[start : start+rows : start+rows]
	}
	return v
}

func (b *Backend) UploadI32(t ml.Tensor, src []int32) error {
	x, err := asTensor(t, "UploadI32 dst", i32Only)
	if err != nil {
		return err
	}
	if len(src) > len(x.i32) {
		return fmt.Errorf("%w: UploadI32 of %d values into %v", ErrShape, len(src), x)
	}
	copy(x.i32, src)
	return nil
}

func (b *Backend) UploadF32(t ml.Tensor, src []float32) error {
	x, err := asTensor(t, "UploadF32 dst", f32Only)
	if err != nil {
		return err
	}
	if len(src) > len(x.f32) {
		return fmt.Errorf("%w: UploadF32 of %d values into %v", ErrShape, len(src), x)
	}
	copy(x.f32, src)
	return nil
}

func (b *Backend) Download(dst []float32, t ml.Tensor) error {
	x, err := asTensor(t, "Download src", f32Only)
	if err != nil {
		return err
	}
	if len(dst) != len(x.f32) {
		return fmt.Errorf("%w: Download of %v into %d values", ErrShape, x, len(dst))
	}
	copy(dst, x.f32)
	return nil
}

// Free drops the tensor's memory: the garbage collector reclaims heap
// memory once no view refers to it; a weight mapped outside the heap is
// unmapped at once, so no view of it may be used after Free.
func (b *Backend) Free(t ml.Tensor) {
	if x, ok := t.(*Tensor); ok && x != nil {
		mem := x.mem
		*x = Tensor{dt: x.dt}
		mem.free()
	}
}

func (b *Backend) Sync() error { return nil }

// Close stops the workers.
func (b *Backend) Close() error {
	if b.pool != nil {
		b.pool.close()
		b.pool = nil
	}
	return nil
}

// dtypes is a set of dtypes (a bit mask, so checking one allocates nothing).
type dtypes uint32

func set(ds ...ml.DType) dtypes {
	var m dtypes
	for _, d := range ds {
		m |= 1 << d
	}
	return m
}

var (
	f32Only   = set(ml.F32)
	i32Only   = set(ml.I32)
	anyWeight = set(ml.F32, ml.F16, ml.BF16, ml.I8, ml.F8)
	anyDType  = ^dtypes(0)
)

func (m dtypes) String() string {
	var names []string
	for d := ml.DType(0); d < 32; d++ {
		if m&(1<<d) != 0 && d.Size() > 0 {
			names = append(names, d.String())
		}
	}
	return fmt.Sprint(names)
}

// asTensor checks that t is a live CPU tensor of one of dts.
func asTensor(t ml.Tensor, what string, dts dtypes) (*Tensor, error) {
	x, ok := t.(*Tensor)
	if !ok || x == nil {
		return nil, fmt.Errorf("%w: %s is not a cpu tensor (%T)", ErrShape, what, t)
	}
	if dts&(1<<x.dt) == 0 {
		return nil, fmt.Errorf("%w: %s has dtype %s, want %v", ml.ErrUnsupported, what, x.dt, dts)
	}
	if x.segs != nil {
		return nil, fmt.Errorf("%w: %s %v is a weight of %d parts, which only MatMul reads", ml.ErrUnsupported, what, x, len(x.segs))
	}
	return x, nil
}

// asWeight is asTensor for a matmul weight, which may be segmented.
func asWeight(t ml.Tensor, what string) (*Tensor, error) {
	x, ok := t.(*Tensor)
	if ok && x != nil && x.segs != nil {
		return x, nil
	}
	return asTensor(t, what, anyWeight)
}

// indices returns the first n elements of an I32 index tensor.
func indices(t ml.Tensor, what string, n int) ([]int32, error) {
	x, err := asTensor(t, what, i32Only)
	if err != nil {
		return nil, err
	}
	if len(x.i32) < n {
		return nil, fmt.Errorf("%w: %s %v holds fewer than %d indices", ErrShape, what, x, n)
	}
	return x.i32[:n], nil
}
