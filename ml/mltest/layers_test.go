package mltest_test

import (
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/cpu"
	"github.com/llmserve/llmserve/ml/mltest"
)

// forgetful fuses layers as the reference does but drops the per-head q/k
// norms and the sliding windows of the spec it is given.
type forgetful struct{ ml.Backend }

func (forgetful) FusesLayers(ml.LayerSpec) bool { return true }

func (f forgetful) FuseLayers(spec ml.LayerSpec, layers []ml.DecoderLayer, finalNorm, lmHead ml.Tensor) (ml.FusedLayers, error) {
	spec.QKNorm, spec.Windows = false, nil
	return mltest.ReferenceLayers(f.Backend, spec, layers, finalNorm, lmHead)
}

// TestCompareFusedLayersCatchesDifferences: the reference compared with
// itself agrees exactly on every case, and a fuser that ignores the q/k
// norms and windows is caught on exactly the cases that have them.
func TestCompareFusedLayersCatchesDifferences(t *testing.T) {
	be := cpu.New(cpu.Options{})
	defer be.Close()
	for _, c := range mltest.FusedCases(ml.BF16, ml.F32) {
		same, err := mltest.CompareFusedLayers(be, mltest.Fusing(be), c)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		if same != 0 {
			t.Errorf("%s: the reference differs from itself by %.3g", c.Name, same)
		}
		broken, err := mltest.CompareFusedLayers(be, forgetful{be}, c)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		ignored := c.Spec.QKNorm || c.Spec.Windows != nil
		switch {
		case ignored && broken < 1e-2:
			t.Errorf("%s: a fuser ignoring q/k norms and windows passes (difference %.3g)", c.Name, broken)
		case !ignored && broken != 0:
			t.Errorf("%s: nothing ignored, yet a difference of %.3g", c.Name, broken)
		}
		t.Logf("%s: the forgetful fuser differs by %.3g", c.Name, broken)
	}
}
