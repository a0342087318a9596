package cuda

import (
	"errors"
	"testing"

	"github.com/llmserve/llmserve/ml"
)

// Sticky CUresults match ml.ErrDeviceLost (the engine then marks the server
// unhealthy); recoverable ones, such as running out of memory, do not.
func TestDriverErrorDeviceLost(t *testing.T) {
	for _, c := range []struct {
		code int32
		lost bool
	}{
		{2, false},   // CUDA_ERROR_OUT_OF_MEMORY
		{720, false}, // a refused cooperative launch (ml.ErrRetryStep's case)
		{700, true},  // CUDA_ERROR_ILLEGAL_ADDRESS
		{719, true},  // CUDA_ERROR_LAUNCH_FAILED
		{214, true},  // CUDA_ERROR_ECC_UNCORRECTABLE
	} {
		var err error = &driverError{call: "cuLaunchKernel", code: c.code}
		err = errors.Join(errors.New("step"), err)
		if got := errors.Is(err, ml.ErrDeviceLost); got != c.lost {
			t.Errorf("code %d: device lost %v, want %v", c.code, got, c.lost)
		}
		if !errors.Is(err, ErrDriver) {
			t.Errorf("code %d: not ErrDriver", c.code)
		}
	}
}
