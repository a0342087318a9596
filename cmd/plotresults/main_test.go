package main

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/bench"
)

func writeReport(t *testing.T, path string, scale float64, withMemory bool) {
	t.Helper()
	r := &bench.Report{Version: bench.ReportVersion, Config: bench.Config{Endpoint: "generate"}}
	if withMemory {
		w, kv := 1.0*(1<<30), 4096.0
		r.Environment.WeightsBytes, r.Environment.KVCacheCapacityTokens = &w, &kv
	}
	for i, c := range []int{1, 2, 4, 8, 16, 32} {
		tps := scale * float64(c) * 20
		if c == 32 {
			tps = scale * 16 * 20 * 1.02 // saturated
		}
		ttft := bench.Summary{Count: 10, P50: 10, P95: 12, P99: 14 * float64(i+1)}
		if c == 32 {
			ttft.P99 = 1000
		}
		r.Levels = append(r.Levels, bench.LevelResult{Level: bench.Level{Concurrency: c}, Successes: 10,
			OutputThroughput: tps, RequestThroughput: tps / 100, TTFTms: ttft,
			E2Ems:  bench.Summary{Count: 10, P50: 500, P95: 600, P99: 700},
			Server: &bench.ServerStats{Samples: 5, KVCacheUsageMax: 0.02 * float64(c), KVCacheUsageMean: 0.01 * float64(c)}})
	}
	if err := r.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
}

func TestPlotsAreDecodablePNGsOfTheRequestedSize(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "cpu.json"), filepath.Join(dir, "other.json")
	writeReport(t, a, 1, true)
	writeReport(t, b, 2, true)
	for _, tc := range []struct {
		name string
		args []string
		w, h int
	}{
		{"one", []string{"--results", a}, 1200, 600},
		{"overlay", []string{"--results", a + "," + b, "--labels", "CPU,GPU", "--width", "800", "--height", "450"}, 800, 450},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, tc.name)
			if d := os.Getenv("PLOT_KEEP"); d != "" {
				out = filepath.Join(d, tc.name)
			}
			var stdout, stderr bytes.Buffer
			if err := run(append(tc.args, "--output-dir", out), &stdout, &stderr); err != nil {
				t.Fatalf("%v: %s", err, stderr.String())
			}
			for _, f := range []string{fileThroughput, fileLatency, fileMemory} {
				checkPNG(t, filepath.Join(out, f), tc.w, tc.h)
				if !strings.Contains(stdout.String(), f) {
					t.Errorf("stdout does not list %s", f)
				}
			}
		})
	}
}

func checkPNG(t *testing.T, path string, w, h int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() != w || b.Dy() != h {
		t.Fatalf("%s: %dx%d, want %dx%d", path, b.Dx(), b.Dy(), w, h)
	}
	// Something was drawn: not every pixel is the background.
	bg := img.At(0, 0)
	for y := 0; y < h; y += 3 {
		for x := 0; x < w; x += 3 {
			if img.At(x, y) != bg {
				return
			}
		}
	}
	t.Fatalf("%s is blank", path)
}

func TestMissingMemoryFiguresStillPlot(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "bare.json")
	writeReport(t, a, 1, false)
	if err := run([]string{"--results", a, "--output-dir", dir, "--width", "640", "--height", "400"}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, filepath.Join(dir, fileMemory), 640, 400)
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.json")
	writeReport(t, a, 1, true)
	for _, args := range [][]string{
		{"--results", filepath.Join(dir, "missing.json")},
		{"--results", a, "--labels", "x,y"},
		{"--results", a, "--width", "5"},
		{"--results", ""},
	} {
		if err := run(append(args, "--output-dir", dir), &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
			t.Errorf("%q: want error", args)
		}
	}
}
