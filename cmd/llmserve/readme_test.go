package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmserve/llmserve/internal/shareddata"
)

// shellCommands splits a script into commands of words as a POSIX shell
// would for the README's commands: single and double quotes (spanning
// lines), backslash-newline continuations, # comments, one command a line.
func shellCommands(script string) ([][]string, error) {
	var cmds [][]string
	var words []string
	var cur strings.Builder
	inWord := false
	endWord := func() {
		if inWord {
			words = append(words, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(script); i++ {
		c := script[i]
		switch {
		case c == '\'':
			j := strings.IndexByte(script[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unclosed '")
			}
			cur.WriteString(script[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(script) && script[i] != '"'; i++ {
				if script[i] == '\\' && i+1 < len(script) && strings.IndexByte(`"\$`+"`", script[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(script[i])
			}
			if i >= len(script) {
				return nil, errors.New(`unclosed "`)
			}
			inWord = true
		case c == '\\' && i+1 < len(script) && script[i+1] == '\n':
			i++
		case c == '#' && !inWord:
			for i+1 < len(script) && script[i+1] != '\n' {
				i++
			}
		case c == '\n':
			endWord()
			if len(words) > 0 {
				cmds = append(cmds, words)
				words = nil
			}
		case c == ' ' || c == '\t':
			endWord()
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	endWord()
	if len(words) > 0 {
		cmds = append(cmds, words)
	}
	return cmds, nil
}

// readmeBlock returns the first ```bash block after the heading.
func readmeBlock(t *testing.T, readme, heading string) string {
	t.Helper()
	i := strings.Index(readme, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README has no %q", heading)
	}
	rest := readme[i:]
	start := strings.Index(rest, "```bash\n")
	end := strings.Index(rest[start+8:], "```")
	if start < 0 || end < 0 {
		t.Fatalf("no bash block after %q", heading)
	}
	return rest[start+8 : start+8+end]
}

// commands splits a block into commands of words.
func commands(t *testing.T, block string) [][]string {
	t.Helper()
	cmds, err := shellCommands(block)
	if err != nil {
		t.Fatal(err)
	}
	return cmds
}

func TestShellCommands(t *testing.T) {
	w, err := shellCommands("curl -X POST \"http://x/a?b=1\" \\\n -d '{\"a\":\n \"b c\"}' # comment\nnext")
	if err != nil || fmt.Sprintf("%q", w) != `[["curl" "-X" "POST" "http://x/a?b=1" "-d" "{\"a\":\n \"b c\"}"] ["next"]]` {
		t.Fatalf("%q %v", w, err)
	}
}

// The README's first command starts the server offline exactly as written,
// and every curl of its Usage section succeeds against it (the model they
// name is the one it serves). It loads a 0.5B-parameter model with random
// weights and generates about a hundred tokens: ~20 s on 2 cores; -short
// skips it.
func TestREADMECommandsWorkOffline(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the 0.5B dummy model")
	}
	td := shareddata.Dir(t)
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	first := commands(t, readmeBlock(t, readme, "## Two commands"))
	if len(first) != 2 || strings.Join(first[0][:3], " ") != "go run ./cmd/llmserve" || strings.Join(first[1], " ") != "go test ./..." {
		t.Fatalf("the two first commands: %q", first)
	}
	args := first[0][3:]
	t.Chdir("../..") // the README's commands run from the repository root
	for i, a := range args {
		if rel, ok := strings.CutPrefix(a, "../shared/testdata"); ok {
			if _, err := os.Stat(a); err != nil {
				args[i] = filepath.Join(td, rel) // test data elsewhere ($LLMSERVE_TESTDATA)
			}
		}
	}
	t.Setenv("HF_HUB_OFFLINE", "1") // offline, as promised
	t.Setenv("HF_HUB_CACHE", t.TempDir())
	cfg, err := parseFlags(append(args, "--host", "127.0.0.1", "--port", "0", "--device", "cpu"), noEnv, io.Discard)
	if err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	logs := &syncBuf{}
	go func() {
		done <- serve(ctx, cfg, slog.New(slog.NewTextHandler(logs, nil)), func(a string) { addr <- a })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case err := <-done:
		t.Fatalf("serve: %v\n%s", err, logs)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		resp, err := http.Get(base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v\n%s", err, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}

	n := 0
	for _, w := range commands(t, readmeBlock(t, readme, "## Usage")) {
		if w[0] != "curl" {
			continue
		}
		n++
		method, url, body := "GET", "", ""
		hdr := http.Header{}
		for i := 1; i < len(w); i++ {
			switch w[i] {
			case "-X":
				i++
				method = w[i]
			case "-H":
				i++
				k, v, _ := strings.Cut(w[i], ":")
				hdr.Set(strings.TrimSpace(k), strings.TrimSpace(v))
			case "-d":
				i++
				body = w[i]
				if method == "GET" {
					method = "POST"
				}
			case "-N", "-s", "-sS":
			default:
				if !strings.HasPrefix(w[i], "http://localhost:8000/") {
					t.Fatalf("curl argument %q not understood in %q", w[i], w)
				}
				url = base + strings.TrimPrefix(w[i], "http://localhost:8000")
			}
		}
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		req.Header = hdr
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s %s %s: %d %s", method, url, body, resp.StatusCode, got)
		}
	}
	if n < 10 {
		t.Fatalf("found %d curls", n)
	}
}
