package cuda

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestWriteCacheFileWhole: writers racing on one cache path (the backends
// of one process compiling the same unit) never leave it, or show a
// reader, anything but one writer's whole image, and leave no temporary
// files behind.
func TestWriteCacheFileWhole(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key-16.bin")
	images := make([][]byte, 8)
	for i := range images {
		images[i] = bytes.Repeat([]byte{byte('a' + i)}, 1<<20+i*4096)
	}
	whole := func(b []byte) bool {
		for _, img := range images {
			if bytes.Equal(b, img) {
				return true
			}
		}
		return false
	}
	stop := make(chan struct{})
	var reads sync.WaitGroup
	reads.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if b, err := os.ReadFile(path); err == nil && !whole(b) {
				t.Errorf("a reader saw %d bytes that are no writer's whole image", len(b))
				return
			}
		}
	})
	var writes sync.WaitGroup
	for round := 0; round < 20; round++ {
		for _, img := range images {
			writes.Go(func() {
				if err := writeCacheFile(path, img); err != nil {
					t.Error(err)
				}
			})
		}
		writes.Wait()
	}
	close(stop)
	reads.Wait()
	b, err := os.ReadFile(path)
	if err != nil || !whole(b) {
		t.Fatalf("after the writers: %d bytes, %v", len(b), err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("left in the cache directory: %v (%v)", entries, err)
	}
}
