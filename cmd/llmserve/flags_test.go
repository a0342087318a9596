package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{
		"1073741824": 1 << 30, "2GiB": 2 << 30, "2G": 2 << 30, "1.5GB": 1_500_000_000, "512MiB": 512 << 20,
		"64 MiB": 64 << 20, "800m": 800 << 20, "1tib": 1 << 40, "10kb": 10_000,
	} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "GiB", "1XB", "-1G", "1e3"} {
		if _, err := parseBytes(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseFlags(t *testing.T) {
	env := map[string]string{"LLMSERVE_API_KEY": "from-env"}
	c, err := parseFlags([]string{"--model", "m", "--served-model-name", "a,b", "--served-model-name=c",
		"--no-enable-prefix-caching", "--kv-cache-memory", "2GiB", "--max-queue-wait", "3s", "--port", "9000"},
		func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.ServedModelNames, ",") != "a,b,c" || c.EnablePrefixCaching || c.KVCacheMemory != 2<<30 ||
		c.MaxQueueWait != 3*time.Second || c.Port != 9000 || c.APIKey != "from-env" || c.Device != "auto" || c.MaxModelLen != 0 {
		t.Fatalf("%+v", c)
	}
	if c.StreamWriteTimeout != 30*time.Second || c.ReadHeaderTimeout != 10*time.Second || c.BodyReadTimeout != 30*time.Second ||
		c.IdleTimeout != 90*time.Second || c.MaxConnections != 0 || c.ShutdownTimeout != 30*time.Second {
		t.Fatalf("transport defaults %+v", c)
	}
	c, err = parseFlags([]string{"--api-key", "flag", "Qwen/Qwen2.5-0.5B"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil || c.APIKey != "flag" || c.Model != "Qwen/Qwen2.5-0.5B" || !c.EnablePrefixCaching ||
		c.GemmActivations != "auto" || !c.gpuOptions().roundActivations() || c.gpuOptions().cpuRefused() != nil {
		t.Fatalf("%+v %v", c, err)
	}
	if c.MaxNumBatchedTokens != 0 {
		t.Fatalf("--max-num-batched-tokens unset: %d, want 0 (the device's default, chosen at start-up)", c.MaxNumBatchedTokens)
	}
	c, err = parseFlags([]string{"--gemm-activations", "bf16", "m"}, func(string) string { return "" }, io.Discard)
	if err != nil || !c.gpuOptions().roundActivations() {
		t.Fatalf("--gemm-activations bf16: %+v %v", c, err)
	}
	c, err = parseFlags([]string{"--gemm-activations", "split", "m"}, func(string) string { return "" }, io.Discard)
	if err != nil || c.gpuOptions().roundActivations() || c.gpuOptions().cpuRefused() != nil {
		t.Fatalf("--gemm-activations split: %+v %v", c, err)
	}
	for _, bad := range [][]string{
		{}, {"--model", "m", "--device", "tpu"}, {"--model", "m", "--gpu-memory-utilization", "1.5"},
		{"--model", "m", "--kv-cache-memory", "lots"}, {"--model", "m", "--tokenizer", "x", "--skip-tokenizer-init"},
		{"--model", "m", "--max-num-seqs", "0"}, {"--model", "m", "--dtype", "fp64"},
		{"--model", "m", "--quantization", "fp4"}, {"--model", "m", "--load-format", "gguf"},
		{"--model", "m", "--kv-cache-dtype", "int4"}, {"--model", "m", "--stream-write-timeout", "-1s"},
		{"--model", "m", "--max-connections", "-1"}, {"--model", "m", "--idle-timeout", "-1s"},
		{"--model", "m", "--gemm-activations", "fp8"}, {"--model", "m", "--max-num-batched-tokens", "0"},
		{"--model", "m", "--max-num-batched-tokens", "-1"},
	} {
		if _, err := parseFlags(bad, func(string) string { return "" }, io.Discard); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestNewBackendCPUAndErrors(t *testing.T) {
	b, err := newBackend("cpu", gpuOptions{})
	if err != nil || b.Name() != "cpu" {
		t.Fatal(b, err)
	}
	b.Close()
	if _, err := newBackend("tpu", gpuOptions{}); err == nil {
		t.Fatal("tpu accepted")
	}
	// An option only the GPU honours is refused on the CPU, not ignored.
	round := gpuOptions{Activations: "bf16"}
	if _, err := newBackend("cpu", round); err == nil || !strings.Contains(err.Error(), "--gemm-activations bf16") {
		t.Fatalf("cpu with bf16 GEMM activations: %v", err)
	}
	if _, err := newGroup("cpu", round, 2); err == nil || !strings.Contains(err.Error(), "--gemm-activations bf16") {
		t.Fatalf("cpu ranks with bf16 GEMM activations: %v", err)
	}
}
