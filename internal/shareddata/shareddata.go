// Package shareddata locates the shared test data (tokenizers, tiny Hugging
// Face checkpoints and their goldens) that lives beside the repository, never
// inside it.
package shareddata

import (
	"encoding/json"
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

// ModelGolden is a tiny checkpoint's golden.json: transformers' float64
// logits at every prompt position and a greedy continuation.
type ModelGolden struct {
	PromptIDs    []int32     `json:"prompt_ids"`
	PromptLogits [][]float64 `json:"prompt_logits"`
	Greedy       []struct {
		Token  int32     `json:"token"`
		Margin float64   `json:"margin"` // gap between the top two logits
		Logits []float64 `json:"logits"`
	} `json:"greedy"`
}

// ReadModelGolden reads dir/golden.json.
func ReadModelGolden(t testing.TB, dir string) *ModelGolden {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g ModelGolden
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatalf("%s/golden.json: %v", dir, err)
	}
	return &g
}
