package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmserve/llmserve/server"
)

// TestChaos runs the whole server (the tiny Qwen2 checkpoint on the CPU)
// under a few seconds of abuse: clients that hang up at random points,
// streams nobody reads, bodies that never finish, more clients than
// --max-concurrent-requests (429s) and a KV cache small enough that the
// engine preempts. Afterwards nothing may be left behind: no running or
// waiting sequence, no admitted request, every KV block free, and the
// goroutines and file descriptors back to where they were.
func TestChaos(t *testing.T) {
	l := startLive(t,
		"--max-model-len", "256", "--kv-cache-memory", "160KiB", // 20 blocks of 16 tokens for up to 8 sequences
		"--max-num-seqs", "8", "--max-num-batched-tokens", "64",
		"--max-concurrent-requests", "6", "--max-connections", "64",
		"--stream-write-timeout", "2s", "--body-read-timeout", "500ms", "--idle-timeout", "300ms")
	addr := strings.TrimPrefix(l.url, "http://")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	defer client.CloseIdleConnections()

	// Warm up every path once, then take the baseline.
	if code, b := l.post(t, "/v1/completions", `{"prompt":[1,2,3],"max_tokens":4}`); code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	http.DefaultClient.CloseIdleConnections()
	time.Sleep(400 * time.Millisecond) // past --idle-timeout: the server's side of those connections is gone too
	baseG, baseFD := runtime.NumGoroutine(), openFDs()

	var counts sync.Map // outcome -> *atomic.Int64
	count := func(what string) {
		v, _ := counts.LoadOrStore(what, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	const workers = 14
	stop := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 17))
			for time.Now().Before(stop) {
				if err := chaosOne(rng, client, l.url, addr, count); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	client.CloseIdleConnections()

	var summary []string
	counts.Range(func(k, v any) bool {
		summary = append(summary, fmt.Sprintf("%s=%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	t.Logf("outcomes: %s", strings.Join(summary, " "))
	for _, must := range []string{"429", "stream-done", "hangup-mid-stream"} {
		if _, ok := counts.Load(must); !ok {
			t.Errorf("no %q outcome: the test did not exercise it", must)
		}
	}
	if p := l.metric(t, `vllm:num_preemptions_total{model_name="tiny"}`); p == "0" {
		t.Error("no preemption: the KV cache was not small enough")
	}

	// Nothing is left behind.
	deadline := time.Now().Add(30 * time.Second)
	for {
		h := liveHealth(t, l.url)
		g, fds := runtime.NumGoroutine(), openFDs()
		if h.Running == 0 && h.Waiting == 0 && h.Admitted == 0 && h.KVBlocksFree == h.KVBlocksTotal && g <= baseG && fds <= baseFD {
			t.Logf("after: goroutines %d (baseline %d), fds %d (baseline %d), KV blocks free %d/%d",
				g, baseG, fds, baseFD, h.KVBlocksFree, h.KVBlocksTotal)
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("left behind: %+v; goroutines %d (baseline %d), fds %d (baseline %d)\n%s",
				h, g, baseG, fds, baseFD, buf[:runtime.Stack(buf, true)])
		}
		http.DefaultClient.CloseIdleConnections()
		time.Sleep(10 * time.Millisecond)
	}
}

// chaosOne is one random client action; it returns an error only for a
// response the server must never give.
func chaosOne(rng *rand.Rand, client *http.Client, url, addr string, count func(string)) error {
	prompt := make([]int, 1+rng.IntN(40))
	for i := range prompt {
		prompt[i] = 3 + rng.IntN(500)
	}
	pj, _ := json.Marshal(prompt)
	maxTokens := 1 + rng.IntN(180)
	path := []string{"/v1/completions", "/generate"}[rng.IntN(2)]
	body := func(stream bool) string {
		return fmt.Sprintf(`{"prompt":%s,"max_tokens":%d,"ignore_eos":true,"stream":%v,"temperature":%v,"seed":%d}`,
			pj, maxTokens, stream, rng.IntN(2), rng.IntN(1000))
	}
	switch k := rng.IntN(10); {
	case k < 3: // a stream read to its end
		resp, err := client.Post(url+path, "application/json", strings.NewReader(body(true)))
		if err != nil {
			return fmt.Errorf("stream: %w", err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		switch {
		case err != nil:
			return fmt.Errorf("stream body: %w", err)
		case resp.StatusCode == 429:
			count("429")
		case resp.StatusCode == 200 && strings.HasSuffix(string(b), "data: [DONE]\n\n") && !strings.Contains(string(b), `"error"`):
			count("stream-done")
		default:
			return fmt.Errorf("stream: %d %q", resp.StatusCode, b[max(0, len(b)-300):])
		}
	case k < 5: // a stream the client hangs up on after a few events
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", url+path, strings.NewReader(body(true)))
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("hangup: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode == 429 {
			count("429")
			return nil
		}
		br := bufio.NewReader(resp.Body)
		for range rng.IntN(6) {
			if _, err := br.ReadString('\n'); err != nil {
				break
			}
		}
		cancel()
		count("hangup-mid-stream")
	case k < 7: // not streaming, maybe given up on
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(300))*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", url+path, strings.NewReader(body(false)))
		resp, err := client.Do(req)
		if err != nil {
			count("gave-up")
			return nil
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		switch {
		case err != nil:
			count("gave-up")
		case resp.StatusCode == 429:
			count("429")
		case resp.StatusCode == 200:
			count("complete")
		default:
			return fmt.Errorf("non-streaming: %d %s", resp.StatusCode, b)
		}
	case k < 8: // raw TCP: a stream nobody reads, then gone
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		b := body(true)
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", path, len(b), b)
		time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
		c.Close()
		count("unread-stream")
	case k < 9: // raw TCP: half a body, then silence
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		b := body(false)
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", path, len(b), b[:len(b)/2])
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return fmt.Errorf("slow body: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout {
			return fmt.Errorf("slow body: %d", resp.StatusCode)
		}
		count("408")
	default:
		resp, err := client.Get(url + []string{"/health", "/metrics"}[rng.IntN(2)])
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s: %d", resp.Request.URL.Path, resp.StatusCode)
		}
		count("probe")
	}
	return nil
}

// liveHealth reads /health on a connection it closes, so that checking
// for leftover goroutines and descriptors does not leave one itself.
func liveHealth(t *testing.T, url string) server.HealthResponse {
	t.Helper()
	req, _ := http.NewRequest("GET", url+"/health", nil)
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h server.HealthResponse
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return h
}

// openFDs counts this process's open file descriptors (Linux; elsewhere 0,
// which makes the check vacuous).
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}
