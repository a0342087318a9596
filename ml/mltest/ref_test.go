package mltest_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/mltest"
)

// TestF8RoundMatchesML: the reference's FP8 rounding (nearest of the
// enumerated values) and ml's bit-level encoder agree on random values of
// every magnitude, the subnormals and exact midpoints included.
func TestF8RoundMatchesML(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 200000 {
		x := float32(math.Ldexp(r.Float64()*2-1, r.IntN(24)-14))
		if i%7 == 0 { // a midpoint between two neighbours
			a := float64(ml.F8Value(uint8(r.IntN(0x7e))))
			x = float32((a + float64(ml.F8Value(ml.F8Bits(float32(a))+1))) / 2)
		}
		want := mltest.F8Round(float64(x))
		got := float64(ml.F8Value(ml.F8Bits(x)))
		if got != want && !(got == 0 && want == 0) {
			t.Fatalf("%v: ml rounds to %v, the reference to %v", x, got, want)
		}
	}
}
