package cpu

import (
	"fmt"
	"runtime"
	"unsafe"
)

// arena is memory mapped outside the Go heap for large, long-lived buffers
// (the KV cache, weights). Its owner frees it explicitly; a cleanup frees
// it too if the owner is dropped without (a test that never closes its
// model), so the mapping cannot leak.
type arena struct {
	mem     []byte
	cleanup runtime.Cleanup
}

// newArena maps n bytes and ties their release to owner's reachability.
func newArena[T any](owner *T, n int) (*arena, error) {
	mem, err := mapAnon(n)
	if err != nil {
		return nil, fmt.Errorf("cpu: mapping %d bytes: %w", n, err)
	}
	a := &arena{mem: mem}
	a.cleanup = runtime.AddCleanup(owner, func(mem []byte) { _ = unmapAnon(mem) }, mem)
	return a, nil
}

// free unmaps the memory now; every slice of it must be dropped first.
func (a *arena) free() {
	if a == nil || a.mem == nil {
		return
	}
	a.cleanup.Stop()
	_ = unmapAnon(a.mem)
	a.mem = nil
}

// carve hands out consecutive typed slices of the arena.
type carver struct {
	mem []byte
	off int
}

func carve[T float32 | uint16 | int8 | uint8](c *carver, n int) []T {
	var z T
	size := int(unsafe.Sizeof(z))
	c.off = (c.off + 63) &^ 63 // cache-line aligned, for the SIMD kernels
	b := c.mem[c.off : c.off+n*size]
	c.off += n * size
	if n == 0 {
		return []T{}
	}
	return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(b))), n)
}

// carvedSize is the bytes carve needs for slices of the given byte sizes.
func carvedSize(sizes ...int) int {
	off := 0
	for _, s := range sizes {
		off = (off+63)&^63 + s
	}
	return off
}
