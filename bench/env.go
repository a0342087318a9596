package bench

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// Environment records where and against what a run happened.
type Environment struct {
	Time        string   `json:"time"` // RFC 3339, start of the run
	Hostname    string   `json:"hostname,omitempty"`
	CPUModel    string   `json:"cpu_model,omitempty"`
	Cores       int      `json:"cores"`
	MemoryBytes int64    `json:"memory_bytes,omitempty"`
	GPUs        []string `json:"gpus,omitempty"` // nvidia-smi name, memory, driver
	GOOS        string   `json:"goos"`
	GOARCH      string   `json:"goarch"`
	GoVersion   string   `json:"go_version"`
	GitCommit   string   `json:"git_commit,omitempty"`
	GitDirty    bool     `json:"git_dirty,omitempty"`
	CommandLine []string `json:"command_line,omitempty"`

	ServerURL    string         `json:"server_url,omitempty"`
	ServerHealth map[string]any `json:"server_health,omitempty"`
	ServerModels any            `json:"server_models,omitempty"`
	Model        string         `json:"model,omitempty"`
	// Read from /health when the server reports them.
	WeightsBytes          *float64 `json:"weights_bytes,omitempty"`
	KVCacheCapacityTokens *float64 `json:"kv_cache_capacity_tokens,omitempty"`
	KVCacheBytes          *float64 `json:"kv_cache_bytes,omitempty"`
	// From /metrics when /health lacks a token capacity:
	// llmserve_kv_cache_blocks (llmserve_kv_cache_blocks_total before) and a block size (from /health's
	// block_size, llmserve_kv_cache_block_size or vLLM's
	// cache_config_info{block_size}); capacity = blocks * block size.
	KVCacheBlocks *float64 `json:"kv_cache_blocks,omitempty"`
	KVBlockSize   *float64 `json:"kv_block_size,omitempty"`
}

// CollectEnvironment describes this machine and, when s is not nil, the
// server. Every probe is best effort: what cannot be read stays empty.
func CollectEnvironment(ctx context.Context, s *Scraper) Environment {
	e := Environment{
		Time:        time.Now().Format(time.RFC3339),
		Cores:       runtime.NumCPU(),
		GOOS:        runtime.GOOS,
		GOARCH:      runtime.GOARCH,
		GoVersion:   runtime.Version(),
		CommandLine: os.Args,
	}
	e.Hostname, _ = os.Hostname()
	e.CPUModel = cpuModel()
	e.MemoryBytes = memTotal()
	e.GPUs = gpus(ctx)
	e.GitCommit, e.GitDirty = gitCommit(ctx)
	if s != nil {
		e.ServerURL = s.Base
		if h, err := s.Health(ctx); err == nil || h != nil {
			e.SetHealth(h)
		}
		if m, err := s.Models(ctx); err == nil {
			e.ServerModels = m
			e.Model = FirstModelID(m)
		}
		if e.Model == "" {
			e.Model, _ = e.ServerHealth["model"].(string)
		}
		if ms, err := s.Metrics(ctx); err == nil {
			e.SetMetrics(ms)
		}
	}
	return e
}

// SetHealth stores a /health answer and lifts the memory figures out of it.
func (e *Environment) SetHealth(h map[string]any) {
	e.ServerHealth = h
	e.WeightsBytes = findNumber(h, "weights_bytes", "model_weights_bytes", "weights_memory_bytes")
	e.KVCacheCapacityTokens = findNumber(h, "kv_cache_capacity_tokens", "kv_cache_tokens", "num_kv_cache_tokens")
	e.KVCacheBytes = findNumber(h, "kv_cache_bytes", "kv_cache_memory_bytes")
}

// SetMetrics fills the KV cache capacity from a /metrics scrape where
// /health did not give it.
func (e *Environment) SetMetrics(ms []MetricSample) {
	if v, ok := metricValue(ms, []string{"llmserve_kv_cache_blocks", "llmserve_kv_cache_blocks_total", "vllm:num_gpu_blocks"}); ok {
		e.KVCacheBlocks = &v
	}
	if e.KVBlockSize == nil {
		e.KVBlockSize = findNumber(e.ServerHealth, "block_size", "kv_block_size")
	}
	if e.KVBlockSize == nil {
		if v, ok := metricValue(ms, []string{"llmserve_kv_cache_block_size"}); ok {
			e.KVBlockSize = &v
		}
	}
	if e.KVBlockSize == nil {
		for _, m := range ms {
			if m.Name == "vllm:cache_config_info" {
				if v, ok := labelNumber(m.Labels, "block_size"); ok {
					e.KVBlockSize = &v
				}
				if v, ok := labelNumber(m.Labels, "num_gpu_blocks"); ok && e.KVCacheBlocks == nil {
					e.KVCacheBlocks = &v
				}
			}
		}
	}
	if e.KVCacheCapacityTokens == nil && e.KVCacheBlocks != nil && e.KVBlockSize != nil {
		c := *e.KVCacheBlocks * *e.KVBlockSize
		e.KVCacheCapacityTokens = &c
	}
}

// labelNumber reads a numeric label value from a raw label string.
func labelNumber(labels, name string) (float64, bool) {
	for _, kv := range strings.Split(labels, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if ok && k == name {
			f, err := strconv.ParseFloat(strings.Trim(v, `"`), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// findNumber looks for the first key present at the top level or one
// object down (servers nest such figures under "memory" or "kv_cache").
func findNumber(m map[string]any, keys ...string) *float64 {
	for _, k := range keys {
		if v, ok := number(m[k]); ok {
			return &v
		}
	}
	for _, sub := range m {
		if sm, ok := sub.(map[string]any); ok {
			for _, k := range keys {
				if v, ok := number(sm[k]); ok {
					return &v
				}
			}
		}
	}
	return nil
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case string:
		f, err := strconv.ParseFloat(x, 64)
		return f, err == nil
	}
	return 0, false
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 && fs[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(fs[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func run(ctx context.Context, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func gpus(ctx context.Context) []string {
	if _, err := exec.LookPath("nvidia-smi"); err != nil {
		return nil
	}
	out := run(ctx, "nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader")
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

func gitCommit(ctx context.Context) (string, bool) {
	if c := run(ctx, "git", "rev-parse", "HEAD"); c != "" {
		return c, run(ctx, "git", "status", "--porcelain", "--untracked-files=no") != ""
	}
	// Outside a checkout, the binary may carry the commit it was built at.
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev string
		var dirty bool
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		return rev, dirty
	}
	return "", false
}
