package kernels

import (
	"runtime"
	"syscall"
	"testing"
	"time"
)

// threadCPU is the calling thread's CPU time: on a shared machine a
// single-threaded benchmark's CPU time per op shows what wall time hides.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuLoop runs f b.N times on one locked OS thread and reports its CPU
// time per op (cpu-ns/op) and per unit (cpu-ns/<unit>, n units per op).
func cpuLoop(b *testing.B, n int, unit string, f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c0 := threadCPU()
	for b.Loop() {
		f()
	}
	ns := float64(threadCPU()-c0) / float64(b.N)
	b.ReportMetric(ns, "cpu-ns/op")
	if unit != "" {
		b.ReportMetric(ns/float64(n), "cpu-ns/"+unit)
	}
}
