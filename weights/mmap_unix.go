//go:build unix

package weights

import (
	"os"

	"golang.org/x/sys/unix"
)

func mmap(f *os.File, size int) ([]byte, error) {
	return unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
}

func munmap(b []byte) error { return unix.Munmap(b) }

// release drops a page-aligned part of a mapping from the resident set.
// The mapping is shared and read-only, so the pages read back unchanged.
func release(b []byte) { _ = unix.Madvise(b, unix.MADV_DONTNEED) }
