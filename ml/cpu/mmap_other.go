//go:build !unix

package cpu

// Without mmap the memory comes from the Go heap.
func mapAnon(n int) ([]byte, error) { return make([]byte, n), nil }

func unmapAnon([]byte) error { return nil }

const offHeap = false
