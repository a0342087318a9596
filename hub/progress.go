package hub

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"
)

// progress reports download progress: a redrawn bar on a terminal, else a
// line every few seconds. A nil *progress is quiet.
type progress struct {
	w     io.Writer
	tty   bool
	repo  string
	done  atomic.Int64
	total int64
	began time.Time
	stopc chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
	mu    sync.Mutex // serializes writes to w
}

func newProgress(w io.Writer, repo string) *progress {
	if w == nil {
		return nil
	}
	p := &progress{w: w, repo: repo, stopc: make(chan struct{})}
	if f, ok := w.(interface{ Fd() uintptr }); ok {
		p.tty = term.IsTerminal(int(f.Fd()))
	}
	return p
}

func (p *progress) add(n int64) {
	if p != nil {
		p.done.Add(n)
	}
}

// start begins reporting; total is the bytes to download.
func (p *progress) start(total int64) {
	if p == nil {
		return
	}
	p.total, p.began = total, time.Now()
	if total == 0 {
		return
	}
	p.mu.Lock()
	fmt.Fprintf(p.w, "Downloading %s (%s)\n", p.repo, humanBytes(total))
	p.mu.Unlock()
	every := 5 * time.Second
	if p.tty {
		every = 200 * time.Millisecond
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.stopc:
				return
			case <-t.C:
				p.draw(false)
			}
		}
	}()
}

func (p *progress) draw(final bool) {
	done := p.done.Load()
	el := time.Since(p.began).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(done) / el
	}
	pct := 100.0
	if p.total > 0 {
		pct = min(100, 100*float64(done)/float64(p.total))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		const width = 30
		fill := int(pct / 100 * width)
		bar := make([]byte, width)
		for i := range bar {
			bar[i] = ' '
			if i < fill {
				bar[i] = '='
			}
		}
		end := ""
		if final {
			end = "\n"
		}
		fmt.Fprintf(p.w, "\r[%s] %5.1f%% %s / %s  %s/s   %s", bar, pct, humanBytes(done), humanBytes(p.total), humanBytes(int64(rate)), end)
		return
	}
	fmt.Fprintf(p.w, "%s: %.1f%% %s / %s  %s/s\n", p.repo, pct, humanBytes(done), humanBytes(p.total), humanBytes(int64(rate)))
}

// finish draws the final state.
func (p *progress) finish() {
	if p == nil || p.total == 0 {
		return
	}
	p.stop()
	p.draw(true)
}

// stop ends the reporting goroutine (idempotent).
func (p *progress) stop() {
	if p == nil {
		return
	}
	p.once.Do(func() { close(p.stopc) })
	p.wg.Wait()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
