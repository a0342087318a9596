package bench

import (
	"math"
	"testing"
	"time"
)

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

func TestPercentilesMatchNumpyLinear(t *testing.T) {
	xs := []float64{10, 1, 9, 2, 8, 3, 7, 4, 6, 5} // 1..10 shuffled
	// numpy.percentile(range(1, 11), [0, 50, 90, 95, 99, 100])
	want := []float64{1, 5.5, 9.1, 9.55, 9.91, 10}
	got := Percentiles(xs, 0, 50, 90, 95, 99, 100)
	for i := range want {
		if !near(got[i], want[i], 1e-9) {
			t.Errorf("p%d: got %v want %v", i, got[i], want[i])
		}
	}
	if xs[0] != 10 {
		t.Error("Percentiles modified its input")
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Error("empty percentile should be NaN")
	}
	if Percentile([]float64{7}, 99) != 7 {
		t.Error("single-sample percentile")
	}
}

func TestSummarize(t *testing.T) {
	s := Summarize([]float64{2, 4, 4, 4, 5, 5, 7, 9})
	if s.Count != 8 || s.Mean != 5 || s.Std != 2 || s.Min != 2 || s.Max != 9 || s.P50 != 4.5 {
		t.Fatalf("got %+v", s)
	}
	if (Summarize(nil) != Summary{}) {
		t.Fatal("empty summary should be zero")
	}
}

func TestAggregate(t *testing.T) {
	msd := func(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }
	res := []Result{
		{OK: true, TTFT: msd(100), Latency: msd(1000), OutputTokens: 10, PromptTokens: 5, OutputFromServer: true,
			ITL: []time.Duration{msd(100), msd(100)}},
		{OK: true, TTFT: msd(300), Latency: msd(2300), OutputTokens: 5, PromptTokens: 5},
		{OK: true, TTFT: msd(50), Latency: msd(50), OutputTokens: 1, PromptTokens: 5}, // no TPOT
		{Rejected: true, StatusCode: 429, Err: "HTTP 429"},
		{Err: "timeout"},
		{Err: "timeout"},
	}
	slo := SLO{TTFT: msd(200), TPOT: msd(200)}
	lr := Aggregate(Level{Concurrency: 4}, res, 2*time.Second, slo)
	if lr.Successes != 3 || lr.Rejected429 != 1 || lr.Failures != 2 || lr.Errors["timeout"] != 2 {
		t.Fatalf("counts %+v", lr)
	}
	if lr.TotalOutputTokens != 16 || lr.TotalInputTokens != 15 {
		t.Fatalf("tokens %d/%d", lr.TotalInputTokens, lr.TotalOutputTokens)
	}
	if lr.RequestThroughput != 1.5 || lr.OutputThroughput != 8 || lr.TotalTokenThroughput != 15.5 {
		t.Fatalf("throughput %v %v %v", lr.RequestThroughput, lr.OutputThroughput, lr.TotalTokenThroughput)
	}
	// TPOT: (1000-100)/9 = 100, (2300-300)/4 = 500.
	if lr.TPOTms.Count != 2 || !near(lr.TPOTms.Mean, 300, 1e-9) || !near(lr.TPOTms.Max, 500, 1e-9) {
		t.Fatalf("tpot %+v", lr.TPOTms)
	}
	if lr.TTFTms.Count != 3 || !near(lr.TTFTms.P50, 100, 1e-9) {
		t.Fatalf("ttft %+v", lr.TTFTms)
	}
	if lr.ITLms.Count != 2 || lr.E2Ems.Count != 3 {
		t.Fatalf("itl/e2e counts %d %d", lr.ITLms.Count, lr.E2Ems.Count)
	}
	// Good: request 1 (ttft 100, tpot 100) and 3 (ttft 50, one token);
	// request 2 misses both.
	if lr.GoodRequests == nil || *lr.GoodRequests != 2 || *lr.Goodput != 1 {
		t.Fatalf("goodput %v %v", lr.GoodRequests, lr.Goodput)
	}
	if !near(lr.OutputTokensFromServer, 1.0/3, 1e-9) {
		t.Fatalf("from server %v", lr.OutputTokensFromServer)
	}
	if lr2 := Aggregate(Level{Concurrency: 1}, res, time.Second, SLO{}); lr2.Goodput != nil {
		t.Fatal("goodput without SLO")
	}
}

func TestArrivalsPoissonAndGamma(t *testing.T) {
	const n = 50000
	for _, tc := range []struct {
		rate, burst float64
	}{{50, 1}, {10, 4}, {200, 0.5}} {
		a := NewArrivals(tc.rate, tc.burst, 42)
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = a.Next().Seconds()
		}
		s := Summarize(xs)
		mean := 1 / tc.rate
		cv := 1 / math.Sqrt(tc.burst) // gamma(k): std/mean = 1/sqrt(k)
		// Standard errors at n=50000 are under 1% for the mean and ~2%
		// for the CV; 4% and 6% leave a wide margin with a fixed seed.
		if !near(s.Mean, mean, 0.04*mean) {
			t.Errorf("rate %v burst %v: mean gap %v want %v", tc.rate, tc.burst, s.Mean, mean)
		}
		if !near(s.Std/s.Mean, cv, 0.06*cv) {
			t.Errorf("rate %v burst %v: cv %v want %v", tc.rate, tc.burst, s.Std/s.Mean, cv)
		}
		if tc.burst == 1 {
			// Exponential gaps: P(gap > mean) = 1/e, and it is memoryless.
			over, over2 := 0, 0
			for _, x := range xs {
				if x > mean {
					over++
				}
				if x > 2*mean {
					over2++
				}
			}
			if p := float64(over) / n; !near(p, 1/math.E, 0.01) {
				t.Errorf("P(gap>mean)=%v want %v", p, 1/math.E)
			}
			if p := float64(over2) / float64(over); !near(p, 1/math.E, 0.015) {
				t.Errorf("P(gap>2m | gap>m)=%v want %v", p, 1/math.E)
			}
		}
	}
	if NewArrivals(math.Inf(1), 1, 1).Next() != 0 {
		t.Error("infinite rate should send at once")
	}
}
