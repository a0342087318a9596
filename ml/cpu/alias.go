package cpu

import (
	"fmt"
	"unsafe"

	"github.com/llmserve/llmserve/ml"
)

var _ ml.WeightAliaser = (*Backend)(nil)

// segment is rows of a weight made of several parts (see AliasWeight).
type segment struct {
	row0, rows int
	f32        []float32
	u16        []uint16
}

// AliasWeight implements ml.WeightAliaser for F32, BF16 and F16 on a
// little-endian host: the tensor's slices point into the parts' memory (a
// memory-mapped checkpoint), so loading copies nothing and the weights are
// read from the page cache. Parts adjacent in memory become one slice;
// otherwise the tensor keeps one segment per part, which MatMul reads as
// one matrix (other ops reject it).
func (b *Backend) AliasWeight(rows, cols int, dt ml.DType, parts ...[]byte) (ml.Tensor, error) {
	switch dt {
	case ml.F32, ml.F16, ml.BF16:
	default:
		return nil, fmt.Errorf("%w: aliased weight of dtype %s", ml.ErrUnsupported, dt)
	}
	if !littleEndian() {
		return nil, fmt.Errorf("%w: aliased weights need a little-endian host", ml.ErrUnsupported)
	}
	if rows <= 0 || cols <= 0 || len(parts) == 0 {
		return nil, fmt.Errorf("%w: aliased weight [%d,%d] of %d parts", ErrShape, rows, cols, len(parts))
	}
	sz := dt.Size()
	rowBytes := cols * sz
	total := 0
	for i, p := range parts {
		if len(p) == 0 || len(p)%rowBytes != 0 {
			return nil, fmt.Errorf("%w: aliased weight part %d of %d bytes is not whole rows of %d×%s", ErrShape, i, len(p), cols, dt)
		}
		if uintptr(unsafe.Pointer(unsafe.SliceData(p)))%uintptr(sz) != 0 {
			return nil, fmt.Errorf("%w: aliased weight part %d is not %d-byte aligned", ml.ErrUnsupported, i, sz)
		}
		total += len(p) / rowBytes
	}
	if total != rows {
		return nil, fmt.Errorf("%w: aliased weight [%d,%d] from parts of %d rows", ErrShape, rows, cols, total)
	}
	// Merge parts that follow each other in memory.
	merged := [][]byte{parts[0]}
	for _, p := range parts[1:] {
		last := merged[len(merged)-1]
		if unsafe.Add(unsafe.Pointer(unsafe.SliceData(last)), len(last)) == unsafe.Pointer(unsafe.SliceData(p)) {
			merged[len(merged)-1] = unsafe.Slice(unsafe.SliceData(last), len(last)+len(p))
			continue
		}
		merged = append(merged, p)
	}
	t := &Tensor{dt: dt, rows: rows, cols: cols}
	row0 := 0
	for _, p := range merged {
		s := segment{row0: row0, rows: len(p) / rowBytes}
		if dt == ml.F32 {
			s.f32 = unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(p))), len(p)/4)
		} else {
			s.u16 = unsafe.Slice((*uint16)(unsafe.Pointer(unsafe.SliceData(p))), len(p)/2)
		}
		t.segs = append(t.segs, s)
		row0 += s.rows
	}
	if len(t.segs) == 1 {
		t.f32, t.u16, t.segs = t.segs[0].f32, t.segs[0].u16, nil
	}
	return t, nil
}

func littleEndian() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}
