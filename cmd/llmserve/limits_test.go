package main

import (
	"errors"
	"io/fs"
	"log/slog"
	"runtime/debug"
	"testing"
)

func TestMemoryLimit(t *testing.T) {
	const gib = int64(1 << 30)
	for _, c := range []struct{ total, off, want int64 }{
		{16 * gib, 2 * gib, 16*gib - 2*gib - 16*gib/10},
		{0, 0, 0},             // unknown
		{2 * gib, 2 * gib, 0}, // nothing left for the heap: no limit rather than a GC storm
		{gib, 800 << 20, 0},   // below minMemoryLimit
		{64 * gib, 0, 64*gib - 64*gib/10},
	} {
		if got := memoryLimit(c.total, c.off); got != c.want {
			t.Errorf("memoryLimit(%d, %d) = %d, want %d", c.total, c.off, got, c.want)
		}
	}
}

func TestAvailableMemory(t *testing.T) {
	files := func(m map[string]string) func(string) ([]byte, error) {
		return func(p string) ([]byte, error) {
			if v, ok := m[p]; ok {
				return []byte(v), nil
			}
			return nil, fs.ErrNotExist
		}
	}
	meminfo := "MemTotal:       16384000 kB\nMemFree:         1000 kB\n"
	for _, c := range []struct {
		name  string
		files map[string]string
		want  int64
	}{
		{"machine", map[string]string{"/proc/meminfo": meminfo}, 16384000 << 10},
		{"cgroup v2", map[string]string{"/proc/meminfo": meminfo, "/sys/fs/cgroup/memory.max": "4294967296\n"}, 4 << 30},
		{"cgroup v2 unlimited", map[string]string{"/proc/meminfo": meminfo, "/sys/fs/cgroup/memory.max": "max\n"}, 16384000 << 10},
		{"cgroup v1", map[string]string{"/proc/meminfo": meminfo, "/sys/fs/cgroup/memory/memory.limit_in_bytes": "2147483648"}, 2 << 30},
		{"cgroup above the machine", map[string]string{"/proc/meminfo": meminfo, "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712"}, 16384000 << 10},
		{"nothing", nil, 0},
	} {
		if got := availableMemory(files(c.files)); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

// GOMEMLIMIT wins over the computed limit; otherwise the limit is applied.
func TestSetMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	read := func(p string) ([]byte, error) {
		if p == "/proc/meminfo" {
			return []byte("MemTotal: 8388608 kB\n"), nil
		}
		return nil, errors.New("no")
	}
	log := slog.New(slog.DiscardHandler)
	debug.SetMemoryLimit(1 << 62)
	setMemoryLimit(1<<30, func(string) string { return "1GiB" }, read, log)
	if got := debug.SetMemoryLimit(-1); got != 1<<62 {
		t.Fatalf("GOMEMLIMIT set, yet the limit changed to %d", got)
	}
	setMemoryLimit(1<<30, func(string) string { return "" }, read, log)
	if got, want := debug.SetMemoryLimit(-1), int64(8<<30-1<<30-(8<<30)/10); got != want {
		t.Fatalf("limit %d, want %d", got, want)
	}
}

func TestMaxConnections(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	if got := maxConnections(100, log); got != 100 {
		t.Fatal(got)
	}
	n, ok := openFileLimit()
	if got := maxConnections(0, log); ok && got != max(16, n-fdHeadroom) {
		t.Fatalf("auto: %d with an open-file limit of %d", got, n)
	}
}
