package cuda

import (
	"fmt"
	"testing"
	"unsafe"

	"github.com/llmserve/llmserve/ml"
)

// TestPinnedStageRegions: the stage hands out disjoint 64-byte aligned
// regions in order and none once it is full (the copy then goes through
// pageable memory), and refuses empty ones.
func TestPinnedStageRegions(t *testing.T) {
	s := pinnedStage{buf: make([]byte, 256)}
	if s.take(0) != nil {
		t.Fatal("take(0) returned a region")
	}
	a, b := s.take(4), s.take(100)
	if len(a) != 4 || len(b) != 100 || cap(a) != 4 {
		t.Fatalf("regions of %d (cap %d) and %d bytes", len(a), cap(a), len(b))
	}
	if &b[0] != &s.buf[64] {
		t.Fatal("the second region does not start at the next 64-byte boundary")
	}
	if c := s.take(100); c != nil {
		t.Fatalf("a region of 100 bytes past offset %d of 256", s.used)
	}
	if c := s.take(64); c == nil || &c[0] != &s.buf[192] {
		t.Fatal("the last 64 bytes were not handed out")
	}
	s.used = 0 // as streamSync does
	if c := s.take(256); c == nil || &c[0] != &s.buf[0] {
		t.Fatal("the whole stage is not reused after a sync")
	}
}

// TestUploadsBetweenSyncs: more uploads than the pinned stage holds,
// queued without a sync in between (later ones go through pageable
// memory), each land intact, as do downloads through the stage.
func TestUploadsBetweenSyncs(t *testing.T) {
	gpuOrSkip(t)
	b := newTestBackend(t, Options{})
	defer b.Close()
	const n, cols = 600, 512 // 1.2 MB of uploads
	ts := make([]ml.Tensor, n)
	for i := range ts {
		x, err := b.NewTensor(ml.I32, 1, cols)
		if err != nil {
			t.Fatal(err)
		}
		ts[i] = x
		v := make([]int32, cols)
		for j := range v {
			v[j] = int32(i*cols + j)
		}
		if err := b.UploadI32(x, v); err != nil {
			t.Fatal(err)
		}
		clear(v) // the backend must not read the caller's slice later
	}
	for i, x := range ts {
		got := make([]int32, cols)
		if err := b.DownloadI32(got, x); err != nil {
			t.Fatal(err)
		}
		for j, v := range got {
			if v != int32(i*cols+j) {
				t.Fatalf("tensor %d element %d: %d, want %d", i, j, v, i*cols+j)
			}
		}
	}
	if b.pinned.buf == nil {
		t.Log("no pinned stage on this driver: every copy went through pageable memory")
	}
}

// TestStagedWeightUpload: a weight larger than two pinned weight buffers
// (so through each of them more than once, the last chunk short) lands
// intact, as does a small one copied straight from pageable memory.
func TestStagedWeightUpload(t *testing.T) {
	gpuOrSkip(t)
	b := newTestBackend(t, Options{})
	defer b.Close()
	// 40 MB (4.77 buffers), then 4 KB.
	for _, rows := range []int{10000, 1} {
		n := rows * 1000
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(i%100003) - 0.5
		}
		x, err := b.LoadWeight(rows, 1000, unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*n), ml.F32, ml.F32)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]float32, n)
		if err := b.Download(got, x); err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if got[i] != v[i] {
				t.Fatalf("%d floats: element %d is %v, want %v", n, i, got[i], v[i])
			}
		}
		b.Free(x)
	}
	if b.wstage[0] == nil {
		t.Log("no pinned memory on this driver: the weight went through pageable memory")
	}
}

// BenchmarkWeightUpload times LoadWeight of a 64 MiB bf16 matrix: through
// the pinned weight buffers, and straight from pageable memory.
func BenchmarkWeightUpload(bm *testing.B) {
	gpuOrSkip(bm)
	b := newTestBackend(bm, Options{})
	defer b.Close()
	const rows, cols = 8192, 4096
	data := make([]byte, rows*cols*2)
	// Pageable first: the buffers, once made, are used from then on.
	for _, staged := range []bool{false, true} {
		bm.Run(map[bool]string{true: "staged", false: "pageable"}[staged], func(bm *testing.B) {
			b.wstageFailed = !staged
			bm.SetBytes(int64(len(data)))
			for bm.Loop() {
				x, err := b.LoadWeight(rows, cols, data, ml.BF16, ml.BF16)
				if err != nil {
					bm.Fatal(err)
				}
				b.Free(x)
			}
		})
	}
}

// BenchmarkTransfer times an upload or a download of n bytes and the
// stream sync after it, staged through pinned memory or straight from
// pageable memory, to place the stage's size limits.
func BenchmarkTransfer(bm *testing.B) {
	gpuOrSkip(bm)
	b := newTestBackend(bm, Options{})
	defer b.Close()
	if b.pinned.buf == nil {
		bm.Skip("no pinned stage")
	}
	buf, maxUp := b.pinned.buf, b.pinned.maxUpload
	for _, n := range []int{64, 16 << 10, 64 << 10, 600 << 10} {
		x, err := b.NewTensor(ml.I32, 1, n/4)
		if err != nil {
			bm.Fatal(err)
		}
		host := make([]int32, n/4)
		for _, dir := range []string{"up", "down"} {
			for _, staged := range []bool{true, false} {
				name := fmt.Sprintf("%s/%dB/pageable", dir, n)
				if staged {
					name = fmt.Sprintf("%s/%dB/staged", dir, n)
				}
				bm.Run(name, func(bm *testing.B) {
					b.pinned.buf, b.pinned.maxUpload = nil, maxUp
					if staged {
						b.pinned.buf, b.pinned.maxUpload = buf, len(buf)
					}
					defer func() { b.pinned.buf, b.pinned.maxUpload = buf, maxUp }()
					for bm.Loop() {
						if dir == "up" {
							err = b.UploadI32(x, host)
							if err == nil {
								err = b.Sync()
							}
						} else {
							err = b.DownloadI32(host, x)
						}
						if err != nil {
							bm.Fatal(err)
						}
					}
				})
			}
		}
		b.Free(x)
	}
}
