package kernels

import (
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

// TestProbe prints min-of-many timings (robust to a shared machine). Temporary.
func TestProbe(t *testing.T) {
	if os.Getenv("PROBE") == "" {
		t.Skip()
	}
	r := rand.New(rand.NewPCG(1, 2))
	type cfg struct {
		kind    wkind
		T, N, K int
		reps    int
	}
	cfgs := []cfg{
		{kBF16, 1, 896, 896, 400}, {kBF16, 1, 4864, 896, 100}, {kBF16, 1, 151936, 896, 12},
		{kI8, 1, 896, 896, 400}, {kI8, 1, 4864, 896, 100}, {kI8, 1, 151936, 896, 12},
		{kF32, 1, 4864, 896, 100}, {kF32, 1, 151936, 896, 8},
		{kBF16, 128, 4864, 896, 12}, {kBF16, 128, 896, 4864, 12}, {kF32, 128, 4864, 896, 12}, {kI8, 128, 4864, 896, 12},
		{kBF16, 16, 4864, 896, 30},
	}
	for _, c := range cfgs {
		if os.Getenv("PROBE") == "dram" && c.N != 151936 {
			continue
		}
		gc := newGemmCase(r, c.kind, c.T, c.N, c.K, c.N)
		dst := make([]float32, c.T*c.N)
		run := func() {
			switch c.kind {
			case kF32:
				GemmF32(dst, c.N, gc.x, gc.wf, c.T, c.N, c.K)
			case kBF16:
				GemmBF16(dst, c.N, gc.x, gc.wh, c.T, c.N, c.K)
			case kI8:
				GemmI8(dst, c.N, gc.x, gc.wi, gc.scales, c.T, c.N, c.K)
			}
		}
		best := time.Hour
		var times []time.Duration
		for i := 0; i < c.reps; i++ {
			t0 := time.Now()
			run()
			d := time.Since(t0)
			times = append(times, d)
			best = min(best, d)
		}
		esz := map[wkind]int{kF32: 4, kBF16: 2, kI8: 1}[c.kind]
		gbs := float64(c.N*c.K*esz) / best.Seconds() / 1e9
		gf := 2 * float64(c.T*c.N*c.K) / best.Seconds() / 1e9
		fmt.Printf("%-5s T=%-3d %6dx%-5d best %9v  %6.1f GB/s  %6.1f GFLOP/s\n", c.kind, c.T, c.N, c.K, best, gbs, gf)
	}
}

func fmaPeak(n int)
func movzxPeak(n int, p *uint16)

func TestProbePeak(t *testing.T) {
	if os.Getenv("PROBE") == "" {
		t.Skip()
	}
	best := time.Hour
	for i := 0; i < 50; i++ {
		t0 := time.Now()
		fmaPeak(1 << 20)
		best = min(best, time.Since(t0))
	}
	fmt.Printf("fma: %.2f G zmm-FMA/s = %.1f GFLOP/s\n", 12*float64(1<<20)/best.Seconds()/1e9, 12*32*float64(1<<20)/best.Seconds()/1e9)
	buf := make([]uint16, 64)
	best = time.Hour
	for i := 0; i < 50; i++ {
		t0 := time.Now()
		movzxPeak(1<<20, &buf[0])
		best = min(best, time.Since(t0))
	}
	fmt.Printf("vpmovzxwd: %.2f G/s\n", 8*float64(1<<20)/best.Seconds()/1e9)
}
