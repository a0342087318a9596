package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/bench"
	"github.com/llmserve/llmserve/bench/benchtest"
)

func TestSweepWritesReport(t *testing.T) {
	fs := &benchtest.Server{Usage: true, Reject: 7}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	dir := t.TempDir()
	out := filepath.Join(dir, "r.json")
	var logs bytes.Buffer
	err := run(context.Background(), []string{
		"--url", srv.URL + "/v1/chat/completions", "--prompt", "ttft=5 itl=2 n=4",
		"--concurrency-levels", "1,2", "--requests", "7", "--output", out, "--warmup", "1",
		"--slo-ttft-ms", "1000", "--metrics-interval", "5ms",
	}, &logs, false)
	if err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	r, err := bench.ReadReport(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Levels) != 2 || r.Config.Model != "fake-model" || r.Config.Endpoint != "chat" {
		t.Fatalf("levels %d model %q endpoint %q", len(r.Levels), r.Config.Model, r.Config.Endpoint)
	}
	// 1 warm-up + 14 measured requests; every 7th is rejected: hits 7 and 14.
	if fs.Hits() != 15 {
		t.Fatalf("hits %d", fs.Hits())
	}
	rej := r.Levels[0].Rejected429 + r.Levels[1].Rejected429
	ok := r.Levels[0].Successes + r.Levels[1].Successes
	if rej != 2 || ok != 12 {
		t.Fatalf("429 %d ok %d", rej, ok)
	}
	if l := r.Levels[1]; l.Goodput == nil || l.TTFTms.Count != l.Successes || l.OutputTokensFromServer != 1 {
		t.Fatalf("level 2: %+v", l)
	}
	if r.Environment.WeightsBytes == nil || r.Environment.KVCacheCapacityTokens == nil {
		t.Fatal("memory figures from /health missing")
	}
	md, err := os.ReadFile(filepath.Join(dir, "r.md"))
	if err != nil || !strings.Contains(string(md), "1.0x (baseline)") {
		t.Fatalf("table: %v\n%s", err, md)
	}
	if strings.Contains(logs.String(), "\r") {
		t.Error("progress bar drawn without a terminal")
	}
}

func TestFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--concurrency-levels", "1,x"},
		{"--request-rate", "-1"},
		{"--endpoint", "grpc"},
		{"--input-len", "5:1"},
		{"--url", "nohost"},
		{"stray"},
	} {
		if err := run(context.Background(), append(args, "--no-metrics"), &bytes.Buffer{}, false); err == nil {
			t.Errorf("%q: want error", args)
		}
	}
}

func TestOpenLoopRandomWorkload(t *testing.T) {
	fs := &benchtest.Server{Usage: true}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	out := filepath.Join(t.TempDir(), "open.json")
	var logs bytes.Buffer
	err := run(context.Background(), []string{"--url", srv.URL, "--request-rate", "100,inf",
		"--input-len", "10:20", "--output-len", "3", "--requests", "10", "--output", out, "--no-metrics"}, &logs, false)
	if err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	r, err := bench.ReadReport(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Levels) != 2 || r.Levels[0].RequestRate != 100 || r.Levels[0].Successes != 10 || r.Config.Workload != "random" {
		t.Fatalf("%+v", r.Levels)
	}
}
