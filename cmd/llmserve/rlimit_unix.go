//go:build unix

package main

import "syscall"

// openFileLimit is RLIMIT_NOFILE's soft limit (which the Go runtime raises
// to the hard limit at start-up).
func openFileLimit() (int, bool) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur > 1<<30 {
		return 0, false
	}
	return int(r.Cur), true
}
