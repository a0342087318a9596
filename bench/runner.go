package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Doer sends one request and measures it; *Client is one.
type Doer interface {
	Do(ctx context.Context, it Item) Result
}

// Progress is a level's state after each completed request.
type Progress struct {
	Level              Level
	Done, Total        int // Total 0 when the level is bounded by time only
	OK, Failed, Reject int
	Elapsed, Duration  time.Duration
}

// RunOptions bound and observe a level.
type RunOptions struct {
	// Requests per level; 0 means until Duration runs out.
	Requests int
	// Duration stops issuing new requests once this much time has passed
	// (those in flight finish); 0 means until Requests are sent.
	Duration time.Duration
	// Seed fixes the open-loop arrival times.
	Seed uint64
	SLO  SLO
	// Progress, when set, is called from the calling goroutine after each
	// completion.
	Progress func(Progress)
	// Monitor, when set, is started with the level and stopped when it
	// ends; its stop function's stats land in LevelResult.Server.
	Monitor func(ctx context.Context) (stop func() *ServerStats)
	// FirstItem offsets the workload index (warm-up uses a distinct range).
	FirstItem int
}

// RunLevel runs one level: closed loop with Level.Concurrency clients when
// Level.RequestRate is 0, open loop with gamma arrivals otherwise. It
// returns the aggregate and every result; on cancellation it returns what
// finished with ctx's error.
func RunLevel(ctx context.Context, d Doer, w Workload, level Level, opts RunOptions) (LevelResult, []Result, error) {
	if opts.Requests <= 0 && opts.Duration <= 0 {
		return LevelResult{}, nil, fmt.Errorf("%w: need a request count or a duration", ErrConfig)
	}
	if level.RequestRate <= 0 && level.Concurrency <= 0 {
		return LevelResult{}, nil, fmt.Errorf("%w: closed loop needs concurrency >= 1", ErrConfig)
	}
	var stopMon func() *ServerStats
	if opts.Monitor != nil {
		stopMon = opts.Monitor(ctx)
	}
	ch := make(chan Result, 64)
	start := time.Now()
	if level.RequestRate > 0 {
		go openLoop(ctx, d, w, level, opts, start, ch)
	} else {
		go closedLoop(ctx, d, w, level, opts, start, ch)
	}
	var results []Result
	p := Progress{Level: level, Total: opts.Requests, Duration: opts.Duration}
	for r := range ch {
		results = append(results, r)
		p.Done++
		switch {
		case r.OK:
			p.OK++
		case r.Rejected:
			p.Reject++
		default:
			p.Failed++
		}
		if opts.Progress != nil {
			p.Elapsed = time.Since(start)
			opts.Progress(p)
		}
	}
	elapsed := time.Since(start)
	lr := Aggregate(level, results, elapsed, opts.SLO)
	if stopMon != nil {
		lr.Server = stopMon()
	}
	return lr, results, ctx.Err()
}

// more reports whether request i may still be issued at time now.
func (o *RunOptions) more(i int, start, now time.Time) bool {
	if o.Requests > 0 && i >= o.Requests {
		return false
	}
	return o.Duration <= 0 || now.Sub(start) < o.Duration
}

func closedLoop(ctx context.Context, d Doer, w Workload, level Level, opts RunOptions, start time.Time, ch chan<- Result) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range level.Concurrency {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if !opts.more(i, start, time.Now()) {
					return
				}
				ch <- d.Do(ctx, w.Item(opts.FirstItem+i))
			}
		})
	}
	wg.Wait()
	close(ch)
}

func openLoop(ctx context.Context, d Doer, w Workload, level Level, opts RunOptions, start time.Time, ch chan<- Result) {
	arr := NewArrivals(float64(level.RequestRate), level.Burstiness, opts.Seed)
	var sem chan struct{}
	if level.Concurrency > 0 {
		sem = make(chan struct{}, level.Concurrency)
	}
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		close(ch)
	}()
	at := start
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for i := 0; ; i++ {
		if i > 0 {
			at = at.Add(arr.Next())
		}
		if !opts.more(i, start, at) {
			return
		}
		if wait := time.Until(at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		}
		if ctx.Err() != nil {
			return
		}
		it := w.Item(opts.FirstItem + i)
		wg.Go(func() {
			if sem != nil {
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					return // never sent: not a result
				}
				defer func() { <-sem }()
			}
			ch <- d.Do(ctx, it)
		})
	}
}

// Warmup sends n requests at the given concurrency and discards their
// timings; it returns how many failed (429s included).
func Warmup(ctx context.Context, d Doer, w Workload, n, concurrency int) (failed int, err error) {
	if n <= 0 {
		return 0, nil
	}
	_, res, err := RunLevel(ctx, d, w, Level{Concurrency: max(1, concurrency)},
		RunOptions{Requests: n, FirstItem: 1 << 30})
	for _, r := range res {
		if !r.OK {
			failed++
		}
	}
	return failed, err
}
