// Package weights reads model weights: safetensors files (memory-mapped,
// single or sharded with model.safetensors.index.json), converts between
// F32/F16/BF16, and generates deterministic dummy weights.
package weights

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/bits"
	"sort"

	"github.com/llmserve/llmserve/ml"
)

var (
	// ErrMissingTensor: the checkpoint has no tensor of the requested name.
	ErrMissingTensor = errors.New("weights: missing tensor")
	// ErrCorrupt: a file is truncated or its header is malformed or inconsistent.
	ErrCorrupt = errors.New("weights: corrupt safetensors")
	// ErrUnsupportedDType: a tensor's dtype is not F32, F16 or BF16.
	ErrUnsupportedDType = errors.New("weights: unsupported dtype")
)

// Tensor is one named tensor. Data aliases the mapped file memory (little-endian)
// and is valid until the Source is closed; it must not be written.
type Tensor struct {
	Name  string
	DType ml.DType
	Shape []int
	Data  []byte
}

// Elems is the product of Shape.
func (t *Tensor) Elems() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Source gives access to a checkpoint's tensors.
type Source interface {
	// Tensor returns the named tensor; the error wraps ErrMissingTensor or
	// ErrUnsupportedDType and names the tensor.
	Tensor(name string) (*Tensor, error)
	// Names lists all tensors, sorted.
	Names() []string
	// Close unmaps the files; tensors' Data is invalid afterwards.
	Close() error
}

// Releaser is implemented by sources whose tensors are mapped from files:
// Release(t.Data) tells it the caller has copied what it needs of a
// tensor, so that its pages need not stay resident.
type Releaser interface {
	Release(data []byte)
}

// maxHeaderLen bounds the JSON header, as the reference safetensors
// implementation does (100 MB), so a corrupt length cannot allocate wildly.
const maxHeaderLen = 100 << 20

// entry is one tensor described by a header; begin/end are relative to the
// start of the data section.
type entry struct {
	name       string
	dtypeName  string
	dtype      ml.DType
	supported  bool
	shape      []int
	begin, end uint64
}

// header is a parsed safetensors header.
type header struct {
	dataStart uint64 // 8 + header length
	entries   []entry
	metadata  map[string]string
}

// dtypeSizes are the element sizes of every safetensors dtype, so that
// unsupported tensors are still validated and can be reported by name.
var dtypeSizes = map[string]int{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4,
	"I64": 8, "U64": 8, "F64": 8,
}

type rawEntry struct {
	DType       string          `json:"dtype"`
	Shape       []int64         `json:"shape"`
	DataOffsets json.RawMessage `json:"data_offsets"`
}

// parseHeader validates the safetensors layout of a whole file's bytes:
// header length, JSON, dtypes, shapes, and that every tensor's byte range
// lies within the data section, matches its shape, and overlaps no other.
func parseHeader(file []byte) (*header, error) {
	if len(file) < 8 {
		return nil, fmt.Errorf("%w: file is %d bytes, shorter than the 8-byte header length", ErrCorrupt, len(file))
	}
	n := binary.LittleEndian.Uint64(file[:8])
	if n > maxHeaderLen {
		return nil, fmt.Errorf("%w: header length %d exceeds the %d limit", ErrCorrupt, n, maxHeaderLen)
	}
	if n > uint64(len(file)-8) {
		return nil, fmt.Errorf("%w: header length %d but only %d bytes follow (truncated?)", ErrCorrupt, n, len(file)-8)
	}
	js := file[8 : 8+n]
	if len(bytes.TrimSpace(js)) == 0 || bytes.TrimSpace(js)[0] != '{' {
		return nil, fmt.Errorf("%w: header is not a JSON object", ErrCorrupt)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(js, &raw); err != nil {
		return nil, fmt.Errorf("%w: header JSON: %v", ErrCorrupt, err)
	}
	h := &header{dataStart: 8 + n}
	dataLen := uint64(len(file)) - h.dataStart
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &h.metadata); err != nil {
				return nil, fmt.Errorf("%w: __metadata__: %v", ErrCorrupt, err)
			}
			continue
		}
		e, err := parseEntry(name, msg, dataLen)
		if err != nil {
			return nil, err
		}
		h.entries = append(h.entries, e)
	}
	// Sort by offset to detect overlaps; ties broken by name for determinism.
	sort.Slice(h.entries, func(i, j int) bool {
		a, b := h.entries[i], h.entries[j]
		if a.begin != b.begin {
			return a.begin < b.begin
		}
		if a.end != b.end {
			return a.end < b.end
		}
		return a.name < b.name
	})
	for i := 1; i < len(h.entries); i++ {
		p, c := h.entries[i-1], h.entries[i]
		if c.begin < p.end {
			return nil, fmt.Errorf("%w: tensors %q [%d,%d) and %q [%d,%d) overlap", ErrCorrupt, p.name, p.begin, p.end, c.name, c.begin, c.end)
		}
	}
	return h, nil
}

func parseEntry(name string, msg json.RawMessage, dataLen uint64) (entry, error) {
	var r rawEntry
	if err := json.Unmarshal(msg, &r); err != nil {
		return entry{}, fmt.Errorf("%w: tensor %q: %v", ErrCorrupt, name, err)
	}
	var offs []uint64
	if err := json.Unmarshal(r.DataOffsets, &offs); err != nil || len(offs) != 2 {
		return entry{}, fmt.Errorf("%w: tensor %q: data_offsets must be two non-negative integers, got %s", ErrCorrupt, name, clip(r.DataOffsets))
	}
	e := entry{name: name, dtypeName: r.DType, begin: offs[0], end: offs[1]}
	if e.begin > e.end {
		return entry{}, fmt.Errorf("%w: tensor %q: data_offsets [%d,%d) are reversed", ErrCorrupt, name, e.begin, e.end)
	}
	if e.end > dataLen {
		return entry{}, fmt.Errorf("%w: tensor %q: data_offsets [%d,%d) beyond the %d-byte data section (truncated file?)", ErrCorrupt, name, e.begin, e.end, dataLen)
	}
	size, ok := dtypeSizes[r.DType]
	if !ok {
		// An unknown dtype name is reported as unsupported, not corrupt,
		// but its size cannot be checked.
		size = 0
	}
	switch r.DType {
	case "F32":
		e.dtype, e.supported = ml.F32, true
	case "F16":
		e.dtype, e.supported = ml.F16, true
	case "BF16":
		e.dtype, e.supported = ml.BF16, true
	case "F8_E4M3":
		// FP8 checkpoints' weights; their scales are separate tensors
		// (model.Weights dequantizes them).
		e.dtype, e.supported = ml.F8, true
	}
	elems := uint64(1)
	e.shape = make([]int, len(r.Shape))
	for i, d := range r.Shape {
		if d < 0 || uint64(d) > math.MaxInt {
			return entry{}, fmt.Errorf("%w: tensor %q: bad dimension %d in shape %v", ErrCorrupt, name, d, r.Shape)
		}
		e.shape[i] = int(d)
		hi, lo := bits.Mul64(elems, uint64(d))
		if hi != 0 {
			return entry{}, fmt.Errorf("%w: tensor %q: shape %v overflows", ErrCorrupt, name, r.Shape)
		}
		elems = lo
	}
	if size > 0 {
		hi, want := bits.Mul64(elems, uint64(size))
		if hi != 0 || want != e.end-e.begin {
			return entry{}, fmt.Errorf("%w: tensor %q: %s shape %v needs %d bytes but data_offsets [%d,%d) hold %d", ErrCorrupt, name, r.DType, r.Shape, elems*uint64(size), e.begin, e.end, e.end-e.begin)
		}
	}
	return e, nil
}

func clip(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// tensorFrom builds the Tensor of e from the file bytes of its header.
func tensorFrom(e *entry, h *header, file []byte) (*Tensor, error) {
	if !e.supported {
		return nil, fmt.Errorf("%w: tensor %q has dtype %q (supported: F32, F16, BF16, F8_E4M3)", ErrUnsupportedDType, e.name, e.dtypeName)
	}
	start := h.dataStart + e.begin
	end := h.dataStart + e.end
	return &Tensor{
		Name:  e.name,
		DType: e.dtype,
		Shape: append([]int(nil), e.shape...),
		Data:  file[start:end:end],
	}, nil
}

// missing is the error for an absent tensor.
func missing(name string) error {
	return fmt.Errorf("%w: %q", ErrMissingTensor, name)
}

// errNoWeights wraps fs.ErrNotExist so callers can tell "no weights here"
// from a corrupt file.
func errNoWeights(dir string) error {
	return fmt.Errorf("weights: no model.safetensors, model.safetensors.index.json or *.safetensors in %s: %w", dir, fs.ErrNotExist)
}
