package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// vLLM's --compilation-config (-cc; -O with JSON or -O.key=value in
// vLLM before 0.12) configures torch.compile and CUDA graph capture, and
// --optimization-level (-O0 to -O3) sets defaults for both. llmserve has no
// torch.compile: its kernels are compiled ahead (NVRTC), and on CUDA decode
// steps are captured as full CUDA graphs per padded batch size, which is
// vLLM's cudagraph_mode FULL_DECODE_ONLY. So the one thing these flags can
// ask of it is whether to capture graphs: what asks for no graphs maps to
// --enforce-eager, what asks for vLLM's defaults is accepted, and what asks
// for capture we lack (piecewise graphs, chosen capture sizes, compiler
// passes) is refused.

const compilationSupported = `supported: {"cudagraph_mode": "NONE" or "FULL_DECODE_ONLY"}, {"mode": 0 or 3} (or "level"), {}`

// compilationConfigFlag merges every --compilation-config given (a JSON
// object, or vLLM's old bare compilation level) into one object.
type compilationConfigFlag struct{ v *map[string]json.RawMessage }

func (f compilationConfigFlag) String() string {
	if f.v == nil || *f.v == nil {
		return ""
	}
	b, _ := json.Marshal(*f.v)
	return string(b)
}

func (f compilationConfigFlag) Set(s string) error {
	var obj map[string]json.RawMessage
	if _, err := strconv.Atoi(strings.TrimSpace(s)); err == nil {
		obj = map[string]json.RawMessage{"level": json.RawMessage(strings.TrimSpace(s))}
	} else if err := json.Unmarshal([]byte(s), &obj); err != nil || obj == nil {
		return fmt.Errorf("want a JSON object; %s", compilationSupported)
	}
	if *f.v == nil {
		*f.v = map[string]json.RawMessage{}
	}
	maps.Copy(*f.v, obj)
	return nil
}

// dottedCompilationArg turns vLLM's -O.key=value, -cc.key=value and
// --compilation-config.key=value into --compilation-config={"key": value};
// value is JSON when it parses as JSON, else a string (NONE).
func dottedCompilationArg(a string) (string, bool) {
	name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
	var key string
	for _, prefix := range []string{"O.", "cc.", "compilation-config.", "compilation_config."} {
		if k, ok := strings.CutPrefix(name, prefix); ok {
			key = k
		}
	}
	if key == "" || !hasVal {
		return "", false
	}
	v := json.RawMessage(val)
	if !json.Valid(v) {
		v, _ = json.Marshal(val)
	}
	obj, _ := json.Marshal(map[string]json.RawMessage{key: v})
	return "--compilation-config=" + string(obj), true
}

// CUDA graph modes as vLLM names them; llmserve captures decode steps only.
const (
	graphsNone       = "NONE"
	graphsDecodeOnly = "FULL_DECODE_ONLY"
)

// compilationModes are the names of vLLM's CompilationMode and of the older
// CompilationLevel that llmserve accepts, as numbers.
var compilationModes = map[string]int{"NONE": 0, "NO_COMPILATION": 0, "VLLM_COMPILE": 3, "PIECEWISE": 3}

// compilationEager decides, from --compilation-config and
// --optimization-level, whether to run without CUDA graphs. Each setting
// given must be one llmserve can honour; the most specific one decides, as
// in vLLM: cudagraph_mode, then the compilation mode (0 implies no graphs),
// then the optimization level.
func compilationEager(cc map[string]json.RawMessage, level int, levelSet bool) (eager bool, err error) {
	for _, k := range slices.Sorted(maps.Keys(cc)) {
		if k != "cudagraph_mode" && k != "mode" && k != "level" {
			return false, fmt.Errorf("--compilation-config %q: llmserve has no torch.compile; its kernels are compiled ahead and decode steps are captured as CUDA graphs; %s", k, compilationSupported)
		}
	}
	// From least to most specific: the last one given decides.
	if levelSet {
		switch level {
		case 0:
			eager = true
		case 2, 3:
			eager = false
		default:
			return false, fmt.Errorf("--optimization-level %d (-O%d): supported: 0 (no CUDA graphs, as --enforce-eager) and 2 or 3 (vLLM's default; here compiled kernels and CUDA graphs of decode steps); level 1's piecewise CUDA graphs are not captured here", level, level)
		}
	}
	for _, k := range []string{"level", "mode"} {
		raw, ok := cc[k]
		if !ok {
			continue
		}
		switch compilationMode(raw) {
		case 0:
			eager = true
		case 3:
			eager = false
		default:
			return false, fmt.Errorf("--compilation-config %s %s: torch.compile modes 1 and 2 do not exist here; %s (0: no CUDA graphs, as --enforce-eager; 3: vLLM's default, which here is compiled kernels and CUDA graphs of decode steps)", k, raw, compilationSupported)
		}
	}
	if raw, ok := cc["cudagraph_mode"]; ok {
		var mode string
		_ = json.Unmarshal(raw, &mode)
		switch strings.ToUpper(mode) {
		case graphsNone:
			eager = true
		case graphsDecodeOnly:
			eager = false
		default:
			return false, fmt.Errorf("--compilation-config cudagraph_mode %s: llmserve captures CUDA graphs of decode steps only (FULL_DECODE_ONLY), never of prefill or mixed batches; %s", raw, compilationSupported)
		}
	}
	return eager, nil
}

// compilationMode reads a compilation mode or level, a number or one of
// compilationModes' names; -1 when it is neither.
func compilationMode(raw json.RawMessage) int {
	var n int
	if json.Unmarshal(raw, &n) == nil {
		return n
	}
	var name string
	if json.Unmarshal(raw, &name) == nil {
		if n, ok := compilationModes[strings.ToUpper(name)]; ok {
			return n
		}
	}
	return -1
}
