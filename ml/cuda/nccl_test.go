package cuda

import (
	"errors"
	"strings"
	"testing"
)

// TestLoadNCCLErrorIsClear: without libnccl the error says what is missing
// and how to get it (on machines with NCCL it loads every symbol used).
func TestLoadNCCLErrorIsClear(t *testing.T) {
	l, err := loadNCCL()
	if err == nil {
		t.Logf("NCCL found at %s", l.path)
		return
	}
	if !errors.Is(err, ErrLibrary) || !strings.Contains(err.Error(), "libnccl") || !strings.Contains(err.Error(), "nvidia-nccl") {
		t.Errorf("missing NCCL: %v", err)
	}
}
