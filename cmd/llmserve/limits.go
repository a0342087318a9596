package main

import (
	"bufio"
	"bytes"
	"log/slog"
	"runtime/debug"
	"strconv"
	"strings"
)

// fdHeadroom is the descriptors --max-connections 0 leaves to everything
// but connections: the listener, the model's files, CUDA's driver, logs.
const fdHeadroom = 64

// maxConnections is --max-connections, or with 0 the open-file limit less
// fdHeadroom (at least 16): running out of descriptors makes accept fail,
// and then even /health goes unanswered.
func maxConnections(flag int, log *slog.Logger) int {
	if flag > 0 {
		return flag
	}
	n, ok := openFileLimit()
	if !ok {
		return 0 // unknown: unbounded, as before
	}
	limit := max(16, n-fdHeadroom)
	log.Debug("connection limit from the open-file limit", "open_files", n, "max_connections", limit)
	return limit
}

// Memory-limit inputs: the sizes below which a soft limit is not worth it
// (the GC would run all the time), and the share of memory left to what the
// Go runtime does not see (C libraries, page cache of the weights' files).
const (
	minMemoryLimit   = 256 << 20
	memLimitHeadroom = 10 // percent of the total
)

// memoryLimit is the soft limit for the Go heap: the memory available to
// the process (its cgroup's limit, else the machine's) less what lives
// outside the heap (the CPU backend's KV cache and weights, allocated with
// mmap) and a headroom. 0 when unknown or too small to help. The runtime
// then collects harder as the heap nears it, instead of growing into an
// out-of-memory kill after a burst of large request bodies.
func memoryLimit(total, offHeap int64) int64 {
	if total <= 0 {
		return 0
	}
	limit := total - offHeap - total*memLimitHeadroom/100
	if limit < minMemoryLimit {
		return 0
	}
	return limit
}

// setMemoryLimit applies memoryLimit unless GOMEMLIMIT is set.
func setMemoryLimit(offHeap int64, getenv func(string) string, readFile func(string) ([]byte, error), log *slog.Logger) {
	if v := getenv("GOMEMLIMIT"); v != "" {
		log.Info("memory limit from GOMEMLIMIT", "gomemlimit", v)
		return
	}
	total := availableMemory(readFile)
	limit := memoryLimit(total, offHeap)
	if limit == 0 {
		log.Info("no Go memory limit set", "available", humanBytes(total), "off_heap", humanBytes(offHeap))
		return
	}
	debug.SetMemoryLimit(limit)
	log.Info("Go memory limit", "limit", humanBytes(limit), "available", humanBytes(total), "off_heap", humanBytes(offHeap))
}

// availableMemory is the cgroup's memory limit (v2, else v1) when it is
// below the machine's memory, else the machine's (/proc/meminfo); 0 when
// neither can be read.
func availableMemory(readFile func(string) ([]byte, error)) int64 {
	var total int64
	if b, err := readFile("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
				f := strings.Fields(rest)
				if len(f) >= 1 {
					if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
						total = kb << 10
					}
				}
			}
		}
	}
	for _, p := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := readFile(p)
		if err != nil {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64) // "max" fails: no limit
		if err == nil && v > 0 && (total == 0 || v < total) {
			total = v
		}
		break
	}
	return total
}
