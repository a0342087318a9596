package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/model"
)

func noEnv(string) string { return "" }

// A vLLM launch script for one GPU, as people write them, runs unchanged.
func TestParseFlagsVLLMLaunchScript(t *testing.T) {
	args := strings.Fields(`serve Qwen/Qwen2.5-1.5B-Instruct --trust-remote-code --tensor-parallel-size 1
		--enforce-eager --disable-log-requests --chat-template /tmp/t.jinja --enable-auto-tool-choice
		--tool-call-parser hermes --swap-space 4 --max_model_len 4096 -tp 1 --pipeline-parallel-size=1
		--gpu-memory-utilization 0.85 --dtype half --served-model-name qwen qwen-alias --port 8001
		--disable-custom-all-reduce --max-num-seqs 64 --reasoning-parser qwen3 --generation-config vllm
		--max-log-len 100 --distributed-executor-backend mp --enable-chunked-prefill --disable-log-stats
		--uvicorn-log-level warning --kv-cache-dtype auto --block-size 16 --seed 1 --max-seq-len-to-capture 8192
		--download-dir /tmp/hf --enable-prefix-caching --scheduling-policy fcfs --disable-fastapi-docs`)
	c, err := parseFlags(args, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Model != "Qwen/Qwen2.5-1.5B-Instruct" || !c.EnforceEager || !c.DisableLogRequests || c.ChatTemplate != "/tmp/t.jinja" ||
		!c.EnableAutoToolChoice || c.ToolCallParser != "hermes" || c.ReasoningParser != "qwen3" || c.MaxModelLen != 4096 ||
		c.GPUMemoryUtilization != 0.85 || c.DType != "half" || strings.Join(c.ServedModelNames, ",") != "qwen,qwen-alias" ||
		c.Port != 8001 || c.MaxNumSeqs != 64 || c.GenerationConfig != "vllm" || c.MaxLogLen != 100 || !c.DisableLogStats ||
		c.LogLevel != "warn" || c.Seed != 1 || c.DownloadDir != "/tmp/hf" {
		t.Fatalf("%+v", c)
	}
	for _, f := range []string{"--trust-remote-code", "--tensor-parallel-size", "--swap-space", "--disable-custom-all-reduce",
		"--distributed-executor-backend", "--max-seq-len-to-capture"} {
		if !slices.Contains(c.Accepted, f) {
			t.Errorf("%s not noted as accepted: %v", f, c.Accepted)
		}
	}
	// The model may come anywhere, and --model works as before.
	// (The images' entrypoints put --host and --port before the user's `serve MODEL`.)
	for _, a := range [][]string{
		{"--port", "9000", "serve", "m"}, {"serve", "--port", "9000", "m"}, {"m", "--port", "9000"},
		{"--model", "m", "--port", "9000"}, {"serve", "m", "--model", "m", "--port=9000"},
		{"--host", "0.0.0.0", "--port", "9000", "serve", "m"}, {"--port", "9000", "--served-model-name", "a", "m"},
	} {
		c, err := parseFlags(a, noEnv, io.Discard)
		if err != nil || c.Model != "m" || c.Port != 9000 {
			t.Errorf("%q: %+v %v", a, c, err)
		}
	}
	// Defaults match vLLM's: request lines on, prompts not logged, generation config auto.
	c, err = parseFlags([]string{"serve", "m"}, func(k string) string { return map[string]string{"VLLM_API_KEY": "k"}[k] }, io.Discard)
	if err != nil || c.DisableLogRequests || c.EnableLogRequests || c.GenerationConfig != "auto" || c.APIKey != "k" || len(c.Accepted) != 0 {
		t.Fatalf("%+v %v", c, err)
	}
}

// Flags that ask for a mechanism llmserve lacks are refused, saying what is supported.
func TestParseFlagsRefusesWhatIsNotSupported(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tensor-parallel-size", "0"}, "at least 1"},
		{[]string{"-tp", "-2"}, "--tensor-parallel-size -2"},
		{[]string{"--pipeline-parallel-size", "2"}, "only 1"},
		{[]string{"--data_parallel_size", "2"}, "only 1"},
		{[]string{"--distributed-executor-backend", "ray"}, "supported: mp, uni"},
		{[]string{"--cpu-offload-gb", "4"}, "only 0"},
		{[]string{"--no-enable-chunked-prefill"}, "always chunks"},
		{[]string{"--enable-lora"}, "LoRA"},
		{[]string{"--speculative-config", "{}"}, "speculative"},
		{[]string{"--tool-call-parser", "pythonic"}, "supported: hermes, llama3_json, mistral"},
		{[]string{"--reasoning-parser", "granite"}, "supported: qwen3, deepseek_r1"},
		{[]string{"--enable-auto-tool-choice"}, "needs --tool-call-parser"},
		{[]string{"--tokenizer-mode", "mistral"}, "supported: auto, hf"},
		{[]string{"--swap-space", "-1"}, "negative"},
		{[]string{"--no-such-flag"}, "unknown flag --no-such-flag"},
		{[]string{"--uvicorn-log-level", "loud"}, "--uvicorn-log-level"},
		{[]string{"--enable-log-requests", "--disable-log-requests"}, "exclude"},
		{[]string{"--async-scheduling"}, "--async-scheduling: llmserve schedules each step after"},
		{[]string{"--ssl-keyfile", "k.pem"}, "--ssl-keyfile needs --ssl-certfile"},
		{[]string{"--ssl-ca-certs", "ca.pem"}, "need --ssl-certfile"},
		{[]string{"--ssl-certfile", "c.pem", "--ssl-cert-reqs", "3"}, "want 0 (none), 1 (optional) or 2 (required)"},
		{[]string{"--ssl-certfile", "c.pem", "--ssl-cert-reqs", "2"}, "needs --ssl-ca-certs"},
		{[]string{"--allowed-origins", "https://a.example"}, "want a JSON list of strings"},
		{[]string{"--allowed-methods", `"GET"`}, "want a JSON list of strings"},
		{[]string{"--enable-ssl-refresh"}, "unknown flag --enable-ssl-refresh"},
	} {
		_, err := parseFlags(append([]string{"serve", "m"}, c.args...), noEnv, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.args, err, c.want)
		}
	}
	if _, err := parseFlags([]string{"serve", "a", "b"}, noEnv, io.Discard); err == nil {
		t.Error("two models accepted")
	}
	if _, err := parseFlags([]string{"serve"}, noEnv, io.Discard); err == nil || !strings.Contains(err.Error(), "llmserve serve MODEL") {
		t.Errorf("no model: %v", err)
	}
}

// TLS and CORS flags keep vLLM's meaning; --root-path and
// --no-async-scheduling are accepted (noted), --async-scheduling refused.
func TestParseFlagsTLSCORS(t *testing.T) {
	c, err := parseFlags(strings.Fields(`serve m --ssl-keyfile k.pem --ssl-certfile c.pem --ssl-ca-certs ca.pem
		--ssl-cert-reqs 1 --allowed-origins ["https://a.example","https://b.example"] --allowed-methods ["GET","POST"]
		--allowed_headers ["Authorization"] --allow-credentials --root-path /llm --no-async-scheduling`), noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.SSLKeyFile != "k.pem" || c.SSLCertFile != "c.pem" || c.SSLCACerts != "ca.pem" || c.SSLCertReqs != 1 ||
		strings.Join(c.AllowedOrigins, " ") != "https://a.example https://b.example" || strings.Join(c.AllowedMethods, " ") != "GET POST" ||
		strings.Join(c.AllowedHeaders, " ") != "Authorization" || !c.AllowCredentials {
		t.Fatalf("%+v", c)
	}
	if !slices.Equal(c.Accepted, []string{"--no-async-scheduling", "--root-path"}) {
		t.Fatalf("accepted: %v", c.Accepted)
	}
	// vLLM's defaults: any origin, method and header; no credentials; HTTP.
	c, err = parseFlags([]string{"serve", "m", "--async-scheduling=false"}, noEnv, io.Discard)
	if err != nil || !slices.Equal(c.AllowedOrigins, []string{"*"}) || !slices.Equal(c.AllowedMethods, []string{"*"}) ||
		!slices.Equal(c.AllowedHeaders, []string{"*"}) || c.AllowCredentials || c.SSLCertFile != "" ||
		!slices.Equal(c.Accepted, []string{"--async-scheduling"}) {
		t.Fatalf("%+v %v", c, err)
	}
	if cfg, err := tlsConfig(c); cfg != nil || err != nil {
		t.Fatalf("TLS without --ssl-certfile: %v %v", cfg, err)
	}
}

func TestHelpAndVersion(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseFlags([]string{"--help"}, noEnv, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatal(err)
	}
	help := out.String()
	for _, want := range []string{"llmserve serve MODEL", "Examples:", "--load-format dummy", "Model:", "Engine and memory:",
		"Parallelism", "Server:", "Logging:", "--tensor-parallel-size", "--enforce-eager", "--chat-template",
		"--ssl-certfile", "--ssl-cert-reqs", "--allowed-origins", "--allow-credentials", "--root-path"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	for _, name := range model.BuiltinModels() {
		if !strings.Contains(help, name) {
			t.Errorf("--help lacks the built-in name %s", name)
		}
	}
	out.Reset()
	if _, err := parseFlags([]string{"--version"}, noEnv, &out); !errors.Is(err, errVersion) || !strings.HasPrefix(out.String(), "llmserve ") {
		t.Fatalf("%v %q", err, out.String())
	}
}

// The --help examples parse.
func TestHelpExamplesParse(t *testing.T) {
	ex := helpHeader()
	ex = strings.ReplaceAll(ex[strings.Index(ex, "Examples:"):], "\\\n", " ")
	n := 0
	for _, line := range strings.Split(ex, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "llmserve ") {
			continue
		}
		n++
		if _, err := parseFlags(strings.Fields(line)[1:], noEnv, io.Discard); err != nil {
			t.Errorf("%s: %v", line, err)
		}
	}
	if n < 3 {
		t.Fatalf("found %d examples", n)
	}
}

func TestGenerationDefaults(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "generation_config.json"),
		[]byte(`{"do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "eos_token_id": [1, 2]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{}, "0.7 0.8 20 1.05"},                           // auto: the model's
		{[]string{"--generation-config", "vllm"}, "- - - -"},      // none
		{[]string{"--generation-config", dir}, "0.7 0.8 20 1.05"}, // a directory
		{[]string{"--override-generation-config", `{"temperature": 0.1}`}, "0.1 0.8 20 1.05"},
		{[]string{"--generation-config", "vllm", "--override-generation-config", `{"top_k": 5}`}, "- - 5 -"},
	} {
		cfg, err := parseFlags(append([]string{"serve", "m"}, c.args...), noEnv, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		d, _, err := generationDefaults(cfg, dir)
		if err != nil {
			t.Fatal(err)
		}
		s := func(p any) string {
			switch v := p.(type) {
			case *float64:
				if v != nil {
					return fmt.Sprint(*v)
				}
			case *int:
				if v != nil {
					return fmt.Sprint(*v)
				}
			}
			return "-"
		}
		if got := strings.Join([]string{s(d.Temperature), s(d.TopP), s(d.TopK), s(d.RepetitionPenalty)}, " "); got != c.want {
			t.Errorf("%q: %s, want %s", c.args, got, c.want)
		}
	}
	// Built-in configs (no directory) have none; a missing file given explicitly is an error.
	cfg, _ := parseFlags([]string{"serve", "m"}, noEnv, io.Discard)
	if d, _, err := generationDefaults(cfg, ""); err != nil || !d.IsZero() {
		t.Fatal(d, err)
	}
	cfg, _ = parseFlags([]string{"serve", "m", "--generation-config", t.TempDir()}, noEnv, io.Discard)
	if _, _, err := generationDefaults(cfg, dir); err == nil {
		t.Fatal("missing generation_config.json accepted")
	}
}

func TestChatTemplateSource(t *testing.T) {
	f := filepath.Join(t.TempDir(), "t.jinja")
	os.WriteFile(f, []byte("{{ messages }}"), 0o644)
	if s, err := chatTemplateSource(f); err != nil || s != "{{ messages }}" {
		t.Fatal(s, err)
	}
	if s, err := chatTemplateSource("{% for m in messages %}{{ m.content }}{% endfor %}"); err != nil || !strings.HasPrefix(s, "{%") {
		t.Fatal(s, err)
	}
	if _, err := chatTemplateSource("/no/such/template.jinja"); err == nil {
		t.Fatal("missing file accepted")
	}
}

// --compilation-config (-cc, and -O's JSON and dotted forms) and
// --optimization-level (-O0..-O3) are accepted where they ask for CUDA
// graphs as llmserve captures them or for none (then as --enforce-eager),
// and refused where they ask for capture or compilation it lacks.
func TestParseFlagsCompilation(t *testing.T) {
	for _, c := range []struct {
		args     []string
		eager    bool
		accepted []string
	}{
		{nil, false, nil},
		{[]string{"--compilation-config", `{}`}, false, []string{"--compilation-config"}},
		{[]string{"--compilation-config", `{"cudagraph_mode": "NONE"}`}, true, nil},
		{[]string{"-cc", `{"cudagraph_mode":"FULL_DECODE_ONLY"}`}, false, []string{"--compilation-config"}},
		{[]string{"--compilation-config", `{"level": 0}`}, true, nil},
		{[]string{"--compilation_config", `{"mode": "NONE"}`}, true, nil},
		{[]string{"--compilation-config", `{"mode": 3}`}, false, []string{"--compilation-config"}},
		{[]string{"--compilation-config", "0"}, true, nil}, // vLLM's old bare level
		{[]string{"-O", `{"level":0}`}, true, nil},
		{[]string{`-O={"cudagraph_mode":"NONE"}`}, true, nil},
		{[]string{"-O.cudagraph_mode=NONE"}, true, nil},
		{[]string{"-cc.mode=0"}, true, nil},
		{[]string{"--compilation-config.level=3"}, false, []string{"--compilation-config"}},
		// The most specific setting wins: graphs named explicitly over mode 0 and -O0.
		{[]string{"-cc", `{"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}`}, false, []string{"--compilation-config"}},
		{[]string{"-O0", "-cc.cudagraph_mode=FULL_DECODE_ONLY"}, false, []string{"--compilation-config", "--optimization-level"}},
		{[]string{"-O0"}, true, nil},
		{[]string{"-O", "0"}, true, nil},
		{[]string{"-O2"}, false, []string{"--optimization-level"}},
		{[]string{"--optimization-level", "3"}, false, []string{"--optimization-level"}},
		{[]string{"-O3", "--enforce-eager"}, true, []string{"--optimization-level"}}, // --enforce-eager wins, as in vLLM
	} {
		cfg, err := parseFlags(append([]string{"serve", "m"}, c.args...), noEnv, io.Discard)
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		if cfg.EnforceEager != c.eager || !slices.Equal(cfg.Accepted, c.accepted) {
			t.Errorf("%q: eager %v accepted %v, want %v %v", c.args, cfg.EnforceEager, cfg.Accepted, c.eager, c.accepted)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--compilation-config", `{"cudagraph_mode": "PIECEWISE"}`}, "decode steps only"},
		{[]string{"-cc.cudagraph_mode=FULL_AND_PIECEWISE"}, "decode steps only"},
		{[]string{"--compilation-config", `{"cudagraph_capture_sizes": [1, 2, 4]}`}, `"cudagraph_capture_sizes"`},
		{[]string{"-O.pass_config.enable_fusion=true"}, `"pass_config.enable_fusion"`},
		{[]string{"--compilation-config", `{"level": 1}`}, "modes 1 and 2"},
		{[]string{"--compilation-config", `{"mode": "STOCK_TORCH_COMPILE"}`}, "modes 1 and 2"},
		{[]string{"--compilation-config", `[1]`}, "want a JSON object"},
		{[]string{"-O1"}, "--optimization-level 1 (-O1)"},
		{[]string{"-O", "7"}, "supported: 0"},
		// A setting that is overridden must still be one llmserve honours.
		{[]string{"-O1", "-cc.cudagraph_mode=NONE"}, "-O1"},
		{[]string{"-cc", `{"mode": 2, "cudagraph_mode": "NONE"}`}, "modes 1 and 2"},
	} {
		_, err := parseFlags(append([]string{"serve", "m"}, c.args...), noEnv, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "supported") {
			t.Errorf("%q: %v, want an error with %q naming what is supported", c.args, err, c.want)
		}
	}
}

// --return-tokens-as-token-ids sets the server-wide default.
func TestParseFlagsReturnTokensAsTokenIDs(t *testing.T) {
	for args, want := range map[string]bool{"serve m": false, "serve m --return-tokens-as-token-ids": true, "serve m --return_tokens_as_token_ids": true} {
		cfg, err := parseFlags(strings.Fields(args), noEnv, io.Discard)
		if err != nil || cfg.ReturnTokensAsTokenIDs != want {
			t.Errorf("%s: %v %v", args, cfg.ReturnTokensAsTokenIDs, err)
		}
	}
}
