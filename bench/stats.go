package bench

import (
	"math"
	"slices"
)

// Percentile returns the p-th percentile (0..100) of xs by linear
// interpolation between closest ranks, the method numpy.percentile (and so
// vLLM's bench serve) uses by default. It returns NaN for an empty slice.
// xs need not be sorted and is not modified.
func Percentile(xs []float64, p float64) float64 {
	return Percentiles(xs, p)[0]
}

// Percentiles returns one value for each of ps, sorting a copy of xs once.
func Percentiles(xs []float64, ps ...float64) []float64 {
	out := make([]float64, len(ps))
	if len(xs) == 0 {
		for i := range out {
			out[i] = math.NaN()
		}
		return out
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	for i, p := range ps {
		out[i] = sortedPercentile(s, p)
	}
	return out
}

func sortedPercentile(s []float64, p float64) float64 {
	switch {
	case p <= 0:
		return s[0]
	case p >= 100:
		return s[len(s)-1]
	}
	rank := p / 100 * float64(len(s)-1)
	lo := int(math.Floor(rank))
	hi := lo + 1
	if hi >= len(s) {
		return s[lo]
	}
	frac := rank - float64(lo)
	return s[lo] + (s[hi]-s[lo])*frac
}

// Mean returns the arithmetic mean of xs, NaN when empty.
func Mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}

// Summary describes a distribution the way vLLM's bench serve reports one
// (mean, median, percentiles), plus count, min, max and population std.
// Values are in whatever unit the samples had (milliseconds in reports).
// An empty distribution has Count 0 and all other fields 0, so it encodes
// as JSON (which has no NaN).
type Summary struct {
	Count int     `json:"count"`
	Mean  float64 `json:"mean"`
	Std   float64 `json:"std"`
	Min   float64 `json:"min"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// Summarize computes a Summary of xs.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	mean := Mean(s)
	var ss float64
	for _, x := range s {
		d := x - mean
		ss += d * d
	}
	return Summary{
		Count: len(s),
		Mean:  mean,
		Std:   math.Sqrt(ss / float64(len(s))),
		Min:   s[0],
		P50:   sortedPercentile(s, 50),
		P90:   sortedPercentile(s, 90),
		P95:   sortedPercentile(s, 95),
		P99:   sortedPercentile(s, 99),
		Max:   s[len(s)-1],
	}
}
