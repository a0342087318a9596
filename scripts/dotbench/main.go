// dotbench times the inner step of a bf16-weight GEMM tile (4 tokens x 2
// rows x 32 weights) three ways on this CPU: VDPBF16PS on activations
// rounded to bf16, VDPBF16PS on activations split into bf16 hi and lo
// halves (which keeps f32-grade accuracy), and the f32 FMAs on widened
// weights that ml/cpu/kernels uses.
//
//	cd scripts/dotbench && go run .
package main

import (
	"fmt"
	"slices"
	"time"
)

func dpTile(n int)
func dpSplitTile(n int)
func fmaTile(n int)

func main() {
	const n, macs = 100_000_000, 4 * 2 * 32
	res := map[string][]float64{}
	names := []string{"vdpbf16ps, bf16 activations", "vdpbf16ps, hi+lo activations", "widen + vfmadd231ps (f32)"}
	for range 5 {
		for i, f := range []func(int){dpTile, dpSplitTile, fmaTile} {
			t := time.Now()
			f(n)
			res[names[i]] = append(res[names[i]], float64(n)*macs/time.Since(t).Seconds()/1e9)
		}
	}
	for _, name := range names {
		slices.Sort(res[name])
		fmt.Printf("%-30s %6.1f GMAC/s (median of 5, one thread)\n", name, res[name][2])
	}
}
