package llama

import (
	"testing"

	"github.com/llmserve/llmserve/model/reference"
)

// loadRef loads the float64 reference of a checkpoint directory.
func loadRef(t testing.TB, dir string) *reference.Model {
	t.Helper()
	r, err := reference.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
