// Package shareddata locates the shared test data (tokenizers, tiny Hugging
// Face checkpoints and their goldens) that lives beside the repository, never
// inside it.
package shareddata

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// Lookup returns $LLMSERVE_TESTDATA, else ../shared/testdata beside the
// repository root, and whether it exists.
func Lookup() (string, bool) {
	dir := os.Getenv("LLMSERVE_TESTDATA")
	if dir == "" {
		// This file is <root>/internal/shareddata/shareddata.go, wherever the test runs from.
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "testdata")
	}
	_, err := os.Stat(dir)
	return dir, err == nil
}

// Dir returns the test data directory. When it is absent the test is
// skipped, or failed when CI is set (CI must not pass by skipping).
func Dir(t testing.TB) string {
	t.Helper()
	dir, ok := Lookup()
	if !ok {
		if os.Getenv("CI") != "" {
			t.Fatalf("test data not found at %s (set LLMSERVE_TESTDATA)", dir)
		}
		t.Skipf("test data not found at %s (set LLMSERVE_TESTDATA)", dir)
	}
	return dir
}

// Path is filepath.Join(Dir(t), elem...), which must exist (skip or fail as Dir).
func Path(t testing.TB, elem ...string) string {
	t.Helper()
	p := filepath.Join(append([]string{Dir(t)}, elem...)...)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("test data incomplete: %v", err)
		}
		t.Skipf("test data incomplete: %v", err)
	}
	return p
}
