package weights

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"unsafe"
)

// IndexFile and SingleFile are the Hugging Face file names Open looks for.
const (
	SingleFile = "model.safetensors"
	IndexFile  = "model.safetensors.index.json"
)

// located is where one tensor lives.
type located struct {
	file  *mappedFile
	entry *entry
}

type mappedFile struct {
	path string
	data []byte
	hdr  *header
}

// source is a Source over one or more mapped files.
type source struct {
	files   []*mappedFile
	tensors map[string]located
	names   []string
}

// Open maps the safetensors weights of a Hugging Face model directory:
// model.safetensors.index.json with its shards, else model.safetensors,
// else every *.safetensors file in dir. dir may also name a single
// .safetensors file. Every header is validated up front.
func Open(dir string) (Source, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	if !st.IsDir() {
		return openFiles([]string{dir}, nil)
	}
	idx := filepath.Join(dir, IndexFile)
	if _, err := os.Stat(idx); err == nil {
		return openIndex(dir, idx)
	}
	single := filepath.Join(dir, SingleFile)
	if _, err := os.Stat(single); err == nil {
		return openFiles([]string{single}, nil)
	}
	matches, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	if len(matches) == 0 {
		return nil, errNoWeights(dir)
	}
	sort.Strings(matches)
	return openFiles(matches, nil)
}

type indexJSON struct {
	WeightMap map[string]string `json:"weight_map"`
}

func openIndex(dir, idx string) (Source, error) {
	b, err := os.ReadFile(idx)
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	var ix indexJSON
	if err := json.Unmarshal(b, &ix); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, idx, err)
	}
	if len(ix.WeightMap) == 0 {
		return nil, fmt.Errorf("%w: %s has an empty weight_map", ErrCorrupt, idx)
	}
	seen := map[string]bool{}
	var paths []string
	for name, f := range ix.WeightMap {
		// Shards must stay inside the model directory.
		if !filepath.IsLocal(f) {
			return nil, fmt.Errorf("%w: %s: tensor %q maps to a non-local file %q", ErrCorrupt, idx, name, f)
		}
		if !seen[f] {
			seen[f] = true
			paths = append(paths, filepath.Join(dir, f))
		}
	}
	sort.Strings(paths)
	want := make(map[string]string, len(ix.WeightMap))
	for name, f := range ix.WeightMap {
		want[name] = filepath.Join(dir, f)
	}
	return openFiles(paths, want)
}

// openFiles maps paths; when want is non-nil (from an index) the tensor set
// is exactly want's keys, each found in the file it names.
func openFiles(paths []string, want map[string]string) (_ Source, err error) {
	s := &source{tensors: map[string]located{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	for _, p := range paths {
		data, err := mmapFile(p)
		if err != nil {
			return nil, err
		}
		mf := &mappedFile{path: p, data: data}
		s.files = append(s.files, mf)
		h, err := parseHeader(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		mf.hdr = h
		for i := range h.entries {
			e := &h.entries[i]
			if want != nil && want[e.name] != p {
				continue // the index places this tensor elsewhere (or nowhere)
			}
			if prev, dup := s.tensors[e.name]; dup {
				return nil, fmt.Errorf("%w: tensor %q is in both %s and %s", ErrCorrupt, e.name, prev.file.path, p)
			}
			s.tensors[e.name] = located{file: mf, entry: e}
		}
	}
	for name, p := range want {
		if _, ok := s.tensors[name]; !ok {
			return nil, fmt.Errorf("%w: index maps tensor %q to %s, which does not hold it", ErrCorrupt, name, p)
		}
	}
	s.names = make([]string, 0, len(s.tensors))
	for n := range s.tensors {
		s.names = append(s.names, n)
	}
	sort.Strings(s.names)
	return s, nil
}

func (s *source) Tensor(name string) (*Tensor, error) {
	l, ok := s.tensors[name]
	if !ok {
		return nil, missing(name)
	}
	return tensorFrom(l.entry, l.file.hdr, l.file.data)
}

func (s *source) Names() []string { return append([]string(nil), s.names...) }

// Release implements Releaser: it drops the pages wholly inside data, a
// tensor's bytes in one of the source's mappings, from the process's
// resident set (they stay in the page cache and fault back in if read
// again). Bytes outside the mappings are left alone.
func (s *source) Release(data []byte) {
	if len(data) == 0 {
		return
	}
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(data)))
	hi := lo + uintptr(len(data))
	for _, f := range s.files {
		if len(f.data) == 0 {
			continue
		}
		flo := uintptr(unsafe.Pointer(unsafe.SliceData(f.data)))
		if lo < flo || hi > flo+uintptr(len(f.data)) {
			continue
		}
		page := uintptr(os.Getpagesize())
		first, last := (lo-flo+page-1)/page*page, (hi-flo)/page*page
		if first < last {
			release(f.data[first:last])
		}
		return
	}
}

func (s *source) Close() error {
	var errs []error
	for _, f := range s.files {
		if f.data != nil {
			if err := munmap(f.data); err != nil {
				errs = append(errs, fmt.Errorf("weights: munmap %s: %w", f.path, err))
			}
			f.data = nil
		}
	}
	s.files = nil
	s.tensors = nil
	return errors.Join(errs...)
}

func mmapFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("weights: %s is not a regular file: %w", path, fs.ErrInvalid)
	}
	size := st.Size()
	if size < 8 {
		// mmap of an empty file fails; report it as the truncation it is.
		return nil, fmt.Errorf("%w: %s is %d bytes", ErrCorrupt, path, size)
	}
	if int64(int(size)) != size {
		return nil, fmt.Errorf("weights: %s: %d bytes do not fit the address space", path, size)
	}
	data, err := mmap(f, int(size))
	if err != nil {
		return nil, fmt.Errorf("weights: mmap %s: %w", path, err)
	}
	return data, nil
}
