package bench

import (
	"math"
	"math/rand/v2"
	"time"
)

// Arrivals draws inter-arrival gaps for open-loop load, as vLLM's bench
// serve does: gamma distributed with shape = burstiness and mean 1/rate.
// Burstiness 1 is a Poisson process (exponential gaps); below 1 is burstier,
// above 1 more regular. An infinite rate gives zero gaps. Not safe for
// concurrent use.
type Arrivals struct {
	rate, shape float64
	rng         *rand.Rand
}

// NewArrivals returns a generator seeded by seed. A burstiness <= 0 is
// taken as 1.
func NewArrivals(rate, burstiness float64, seed uint64) *Arrivals {
	if burstiness <= 0 {
		burstiness = 1
	}
	return &Arrivals{rate: rate, shape: burstiness, rng: rand.New(rand.NewPCG(seed, 0xa221))}
}

// Next returns the gap before the next request.
func (a *Arrivals) Next() time.Duration {
	if math.IsInf(a.rate, 1) || a.rate <= 0 {
		return 0
	}
	scale := 1 / (a.rate * a.shape)
	return time.Duration(gamma(a.rng, a.shape) * scale * float64(time.Second))
}

// gamma samples Gamma(k, 1) by Marsaglia and Tsang's method, boosting k < 1
// with U^(1/k).
func gamma(rng *rand.Rand, k float64) float64 {
	if k < 1 {
		u := rng.Float64()
		for u == 0 {
			u = rng.Float64()
		}
		return gamma(rng, k+1) * math.Pow(u, 1/k)
	}
	d := k - 1.0/3
	c := 1 / math.Sqrt(9*d)
	for {
		x := rng.NormFloat64()
		v := 1 + c*x
		if v <= 0 {
			continue
		}
		v = v * v * v
		u := rng.Float64()
		if u < 1-0.0331*x*x*x*x {
			return d * v
		}
		if u > 0 && math.Log(u) < 0.5*x*x+d*(1-v+math.Log(v)) {
			return d * v
		}
	}
}
