//go:build unix

package cpu

import "golang.org/x/sys/unix"

// mapAnon returns n zeroed bytes mapped outside the Go heap: the garbage
// collector neither counts nor scans them, so a gigabyte KV cache does not
// double the heap goal. Pages are committed on first touch.
func mapAnon(n int) ([]byte, error) {
	return unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
}

func unmapAnon(b []byte) error { return unix.Munmap(b) }

// offHeap reports whether mapAnon maps outside the Go heap.
const offHeap = true
