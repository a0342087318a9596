package cpu

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestExpf(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	worst := 0.0
	for i := range 1000000 {
		x := float32(r.Float64()*200 - 100)
		if i < 1000 {
			x = float32(r.Float64()*2 - 1)
		}
		// expf clamps its argument to [-87, 88].
		want := math.Exp(float64(min(max(x, -87), 88)))
		got := float64(expf(x))
		worst = max(worst, math.Abs(got-want)/want)
	}
	if worst > 4e-7 {
		t.Errorf("expf relative error %.3g", worst)
	}
	for _, x := range []float32{0, -0, 1, -87.5, 88.5, float32(math.Inf(-1)), float32(math.Inf(1))} {
		if got, want := expf(x), float32(math.Exp(float64(min(max(x, -87), 88)))); math.Abs(float64(got-want)) > 4e-7*float64(want) {
			t.Errorf("expf(%v) = %v, want %v", x, got, want)
		}
	}
	if !math.IsNaN(float64(expf(float32(math.NaN())))) {
		t.Error("expf(NaN) is not NaN")
	}
}

func BenchmarkSiLU(b *testing.B) {
	x := make([]float32, 4864)
	for i := range x {
		x[i] = float32(i%200)/20 - 5
	}
	y := make([]float32, len(x))
	for b.Loop() {
		for i, v := range x {
			y[i] = silu(v)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(x)), "ns/elem")
}
