package weights

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

var dtypeNames = map[string]string{"float32": "F32", "float16": "F16", "bfloat16": "BF16", "fp8_e4m3": "F8_E4M3"}

// Write encodes tensors as one safetensors file (tensors in the given order,
// header padded to 8 bytes as the reference writer does). Used by tests and
// tools that produce checkpoints.
func Write(w io.Writer, tensors []*Tensor, metadata map[string]string) error {
	hdr := map[string]any{}
	if len(metadata) > 0 {
		hdr["__metadata__"] = metadata
	}
	var off uint64
	for _, t := range tensors {
		dn, ok := dtypeNames[t.DType.String()]
		if !ok {
			return fmt.Errorf("%w: tensor %q: %v", ErrUnsupportedDType, t.Name, t.DType)
		}
		if _, dup := hdr[t.Name]; dup || t.Name == "__metadata__" {
			return fmt.Errorf("weights: duplicate or reserved tensor name %q", t.Name)
		}
		if want := t.Elems() * t.DType.Size(); want != len(t.Data) {
			return fmt.Errorf("weights: tensor %q: shape %v needs %d bytes, has %d", t.Name, t.Shape, want, len(t.Data))
		}
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		hdr[t.Name] = map[string]any{"dtype": dn, "shape": shape, "data_offsets": []uint64{off, off + uint64(len(t.Data))}}
		off += uint64(len(t.Data))
	}
	js, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	if pad := len(js) % 8; pad != 0 {
		js = append(js, strings.Repeat(" ", 8-pad)...)
	}
	bw := bufio.NewWriter(w)
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(js)))
	bw.Write(n[:])
	bw.Write(js)
	for _, t := range tensors {
		bw.Write(t.Data)
	}
	return bw.Flush()
}

// WriteFile writes tensors to path as a safetensors file.
func WriteFile(path string, tensors []*Tensor, metadata map[string]string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := Write(f, tensors, metadata); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
