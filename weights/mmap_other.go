//go:build !unix

package weights

import (
	"io"
	"os"
)

// Without mmap the file is read into memory.
func mmap(f *os.File, size int) ([]byte, error) {
	b := make([]byte, size)
	_, err := io.ReadFull(f, b)
	return b, err
}

func munmap([]byte) error { return nil }

func release([]byte) {}
