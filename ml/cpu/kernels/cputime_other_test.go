//go:build !linux

package kernels

import "testing"

func cpuLoop(b *testing.B, n int, unit string, f func()) {
	for b.Loop() {
		f()
	}
}
