package cpu

import (
	"math"
	"runtime"
	"testing"

	"github.com/llmserve/llmserve/ml"
)

// heapBytes is the Go heap in use after a collection, and the heap memory
// the runtime holds from the OS.
func heapBytes() (alloc, sys uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.HeapSys
}

// Issue 17 item 8: the KV cache lives outside the Go heap, so the GC's heap
// goal does not grow with it; it is usable, and freed at FreeKVCache.
func TestKVCacheOffHeap(t *testing.T) {
	if !offHeap {
		t.Skip("no mmap on this platform")
	}
	b := New(Options{Threads: 1})
	defer b.Close()
	alloc0, sys0 := heapBytes()
	const layers, blocks, bs, heads, hd = 4, 512, 16, 4, 64 // 64 MiB of f32 keys and values
	c, err := b.NewKVCache(layers, blocks, bs, heads, hd, ml.F32)
	if err != nil {
		t.Fatal(err)
	}
	kc := c.(*KVCache)
	if got := kc.Bytes(); got != 64<<20 {
		t.Fatalf("%d bytes", got)
	}
	// Touch every page of it.
	for l := range layers {
		for i := range kc.kf[l] {
			kc.kf[l][i], kc.vf[l][i] = float32(i), -float32(i)
		}
	}
	alloc1, sys1 := heapBytes()
	t.Logf("64 MiB KV cache: heap in use %+d bytes, heap from the OS %+d bytes", int64(alloc1)-int64(alloc0), int64(sys1)-int64(sys0))
	if int64(alloc1)-int64(alloc0) > 1<<20 || int64(sys1)-int64(sys0) > 4<<20 {
		t.Fatalf("the KV cache is in the Go heap: in use %d -> %d, from the OS %d -> %d", alloc0, alloc1, sys0, sys1)
	}
	// The writes stay.
	if kc.kf[layers-1][len(kc.kf[layers-1])-1] != float32(len(kc.kf[layers-1])-1) {
		t.Fatal("lost a write")
	}
	b.FreeKVCache(c)
	if kc.mem != nil || kc.kf != nil {
		t.Fatal("not freed")
	}
	if _, err := asCache(c, 0); err == nil {
		t.Fatal("a freed cache is still usable")
	}
	b.FreeKVCache(c) // twice is harmless

	// BF16 too, and a KV cache through the ops.
	c, err = b.NewKVCache(1, 4, 4, 1, 8, ml.BF16)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.(*KVCache).ku[0]) != 4*4*8 {
		t.Fatal("bf16 layout")
	}
	b.FreeKVCache(c)
	if _, err := b.NewKVCache(1, math.MaxInt/2, 16, 8, 128, ml.F32); err == nil {
		t.Fatal("an overflowing KV cache was accepted")
	}
}

// Large weights are mapped outside the Go heap too, and unmapped by Free;
// small ones (norms) stay in it.
func TestWeightsOffHeap(t *testing.T) {
	if !offHeap {
		t.Skip("no mmap on this platform")
	}
	b := New(Options{Threads: 1})
	defer b.Close()
	const rows, cols = 1024, 4096 // 8 MiB of bf16 from 16 MiB of f32
	data := make([]byte, rows*cols*4)
	for i := 0; i < len(data); i += 4 {
		data[i+3] = 0x3f // 0.5..1
	}
	alloc0, _ := heapBytes()
	w, err := b.LoadWeight(rows, cols, data, ml.F32, ml.BF16)
	if err != nil {
		t.Fatal(err)
	}
	alloc1, _ := heapBytes()
	if d := int64(alloc1) - int64(alloc0); d > 1<<20 {
		t.Fatalf("a %d MiB weight grew the heap by %d bytes", rows*cols*2>>20, d)
	}
	x := w.(*Tensor)
	if x.mem == nil || len(x.u16) != rows*cols || x.u16[rows*cols-1] != 0x3f00 {
		t.Fatal("weight not mapped or not converted")
	}
	v := b.View(w, 10, 2).(*Tensor)
	if v.owner != x || v.mem != nil {
		t.Fatal("a view must keep its mapped parent alive and not own its memory")
	}
	b.Free(w)
	if x.mem != nil || x.u16 != nil {
		t.Fatal("Free kept the mapping")
	}
	small, err := b.LoadWeight(1, 64, make([]byte, 64*4), ml.F32, ml.F32)
	if err != nil || small.(*Tensor).mem != nil {
		t.Fatalf("a small weight was mapped: %v", err)
	}
	// I8 weights carry their scales in the same mapping.
	q, err := b.LoadWeight(rows, cols, data, ml.F32, ml.I8)
	if err != nil {
		t.Fatal(err)
	}
	if qx := q.(*Tensor); qx.mem == nil || len(qx.scales) != rows || qx.scales[0] == 0 {
		t.Fatal("int8 weight")
	}
	b.Free(q)
}

// A mapped weight dropped without Free is unmapped by its cleanup.
func TestArenaCleanup(t *testing.T) {
	if !offHeap {
		t.Skip("no mmap on this platform")
	}
	freed := make(chan struct{})
	func() {
		owner := new(int)
		a, err := newArena(owner, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		a.mem[0] = 1
		runtime.AddCleanup(owner, func(ch chan struct{}) { close(ch) }, freed)
	}()
	for range 100 {
		runtime.GC()
		select {
		case <-freed:
			return
		default:
		}
	}
	t.Fatal("owner never collected")
}
