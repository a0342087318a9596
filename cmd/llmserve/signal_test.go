package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/server"
	"github.com/llmserve/llmserve/server/servertest"
)

// TestMain lets a test run this package's main in a child process (the
// test binary re-executed with LLMSERVE_TEST_MAIN set), so signal handling
// is tested on a real process without building one.
func TestMain(m *testing.M) {
	if args := os.Getenv("LLMSERVE_TEST_MAIN"); args != "" {
		var a []string
		if err := json.Unmarshal([]byte(args), &a); err != nil {
			panic(err)
		}
		os.Args = append([]string{"llmserve"}, a...)
		main()
		os.Exit(0)
	}
	code := m.Run()
	removeFixtures()
	os.Exit(code)
}

// child is llmserve running in a child process.
type child struct {
	cmd  *exec.Cmd
	logs *syncBuf
	done chan error
}

func startChild(t *testing.T, args ...string) *child {
	t.Helper()
	if testing.Short() {
		t.Skip("runs llmserve in a child process")
	}
	a, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LLMSERVE_TEST_MAIN="+string(a))
	c := &child{cmd: cmd, logs: &syncBuf{}, done: make(chan error, 1)}
	cmd.Stderr = c.logs
	cmd.Stdout = c.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.done
		c.done <- nil
	})
	return c
}

// waitLog waits until the child's log matches re (or it exits).
func (c *child) waitLog(t *testing.T, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if m := rx.FindStringSubmatch(c.logs.String()); m != nil {
			return m
		}
		select {
		case err := <-c.done:
			c.done <- err
			t.Fatalf("llmserve exited (%v) before logging %q:\n%s", err, re, c.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log:\n%s", re, c.logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wait waits for the child to exit (liveness bound) and returns its status.
func (c *child) wait(t *testing.T) int {
	t.Helper()
	select {
	case err := <-c.done:
		c.done <- err
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(60 * time.Second):
		t.Fatalf("llmserve did not exit:\n%s", c.logs)
		return -1
	}
}

// Issue 17 item 9: SIGTERM while a large model loads exits promptly and
// cleanly, instead of loading (and warming up) first.
func TestSIGTERMDuringLoad(t *testing.T) {
	// Dummy weights for Qwen2.5-0.5B take seconds to generate here.
	c := startChild(t, "--model", "Qwen/Qwen2.5-0.5B", "--load-format", "dummy", "--device", "cpu",
		"--skip-tokenizer-init", "--host", "127.0.0.1", "--port", "0")
	c.waitLog(t, `msg="loading model"`)
	start := time.Now()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code := c.wait(t)
	t.Logf("exited %v after SIGTERM during load", time.Since(start).Round(time.Millisecond))
	logs := c.logs.String()
	if code != 0 || !strings.Contains(logs, "stopped while loading") || strings.Contains(logs, "msg=ready") {
		t.Fatalf("exit %d:\n%s", code, logs)
	}
}

// Issue 17 item 9: a second SIGTERM during the drain exits at once.
func TestSecondSignalExits(t *testing.T) {
	td := shareddata.Dir(t)
	c := startChild(t, "--model", filepath.Join(td, "models", "qwen2-tiny"), "--skip-tokenizer-init",
		"--device", "cpu", "--kv-cache-memory", "8MiB", "--host", "127.0.0.1", "--port", "0",
		"--shutdown-timeout", "10m", "--max-num-seqs", "1")
	addr := c.waitLog(t, `msg=ready .*address=http://(\S+)`)[1]
	// Streams that outlast the test's patience: the drain waits for them.
	for range 4 {
		go func() {
			resp, err := http.Post("http://"+addr+"/v1/completions", "application/json",
				strings.NewReader(`{"prompt":[1,2,3],"max_tokens":2000,"ignore_eos":true,"stream":true}`))
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for health(addr).Running == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no request running")
		}
		time.Sleep(time.Millisecond)
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	c.waitLog(t, `msg=draining`)
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	if code := c.wait(t); code != 1 || !strings.Contains(c.logs.String(), "second signal") {
		t.Fatalf("exit %d:\n%s", code, c.logs)
	}
}

func health(addr string) server.HealthResponse {
	var h server.HealthResponse
	resp, err := http.Get("http://" + addr + "/health")
	if err != nil {
		return h
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&h)
	return h
}

func TestOnSignals(t *testing.T) {
	sigs := make(chan os.Signal, 2)
	drained, exited := make(chan struct{}), make(chan struct{})
	go onSignals(sigs, func() { close(drained) }, func() { close(exited) }, slog.New(slog.DiscardHandler))
	sigs <- syscall.SIGTERM
	<-drained
	select {
	case <-exited:
		t.Fatal("exit on the first signal")
	default:
	}
	sigs <- syscall.SIGINT
	<-exited
}

// Issue 17 item 9: drain gives in-flight requests until the shutdown
// timeout, then ends them cleanly: a stream gets an error event and [DONE],
// and drain returns within the timeout.
func TestDrainEndsStreamsAtTimeout(t *testing.T) {
	fe := &servertest.Engine{Hold: make(chan struct{})}
	srv, err := server.New(server.Options{Engine: fe, Tokenizer: servertest.Tokenizer{}, ModelNames: []string{"m"},
		MaxModelLen: 1 << 20, VocabSize: servertest.VocabSize})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := srv.NewHTTPServer()
	served := make(chan error, 1)
	go func() { served <- hs.Serve(srv.Listener(ln)) }()
	go func() { fe.Hold <- struct{}{} }() // one token: the stream starts
	resp, err := http.Post("http://"+ln.Addr().String()+"/v1/completions", "application/json",
		strings.NewReader(`{"prompt":"abc","max_tokens":100000,"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); drain(srv, hs, 400*time.Millisecond, slog.New(slog.DiscardHandler)) }()
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(rest), "data: [DONE]\n\n") || !strings.Contains(string(rest), `"code":"draining"`) {
		t.Fatalf("stream end:\n%s", rest)
	}
	wg.Wait()
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatal(err)
	}
	if fe.Aborted() != 1 {
		t.Fatalf("%d aborted", fe.Aborted())
	}
}
