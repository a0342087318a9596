package model

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/ml"
)

func writeConfig(t *testing.T, json string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(json), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestReadConfigDefaults(t *testing.T) {
	dir := writeConfig(t, `{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":64,
		"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":8,"eos_token_id":[3,4]}`)
	c, err := ReadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.HeadDim != 8 || c.NumKeyValueHeads != 8 || c.RopeTheta != 10000 || c.RMSNormEps != 1e-6 {
		t.Errorf("defaults: head_dim %d kv %d theta %v eps %v", c.HeadDim, c.NumKeyValueHeads, c.RopeTheta, c.RMSNormEps)
	}
	if got := c.EOSTokenIDs(); !slices.Equal(got, []int{3, 4}) {
		t.Errorf("EOSTokenIDs = %v", got)
	}
	if c.CheckpointDType() != "float32" || c.RopeType() != "default" {
		t.Errorf("dtype %q rope %q", c.CheckpointDType(), c.RopeType())
	}
}

// transformers v5 writes rope_parameters instead of rope_theta/rope_scaling.
func TestReadConfigRopeParameters(t *testing.T) {
	dir := writeConfig(t, `{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":64,
		"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,
		"dtype":"bfloat16","eos_token_id":2,
		"rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,
		"high_freq_factor":4.0,"original_max_position_embeddings":256}}`)
	c, err := ReadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.RopeTheta != 500000 || c.RopeType() != "llama3" || c.RopeScaling.Factor != 32 {
		t.Fatalf("rope: theta %v type %q scaling %+v", c.RopeTheta, c.RopeType(), c.RopeScaling)
	}
	if c.CheckpointDType() != "bfloat16" || !slices.Equal(c.EOSTokenIDs(), []int{2}) {
		t.Errorf("dtype %q eos %v", c.CheckpointDType(), c.EOSTokenIDs())
	}
	// llama3 scaling, by hand for head_dim 16: wavelengths 2π/inv against
	// 256/4=64 (high) and 256/1=256 (low).
	inv := c.InvFreq()
	for i, got := range inv {
		f := 1 / math.Pow(500000, float64(2*i)/16)
		wl := 2 * math.Pi / f
		want := f
		switch {
		case wl > 256:
			want = f / 32
		case wl >= 64:
			s := (256/wl - 1) / 3
			want = (1-s)*f/32 + s*f
		}
		if math.Abs(float64(got)-want) > 1e-6*want {
			t.Errorf("inv_freq[%d] = %v, want %v", i, got, want)
		}
	}
}

func TestReadConfigErrors(t *testing.T) {
	for name, json := range map[string]string{
		"NotJSON":      `{`,
		"NoArch":       `{"vocab_size":10,"hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4}`,
		"ZeroLayers":   `{"architectures":["X"],"vocab_size":10,"hidden_size":64,"intermediate_size":1,"num_hidden_layers":0,"num_attention_heads":4}`,
		"HeadsNotKV":   `{"architectures":["X"],"vocab_size":10,"hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":3}`,
		"UnknownRope":  `{"architectures":["X"],"vocab_size":10,"hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"rope_scaling":{"type":"yarn","factor":4}}`,
		"UnknownAct":   `{"architectures":["X"],"vocab_size":10,"hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"hidden_act":"gelu"}`,
		"HiddenByHead": `{"architectures":["X"],"vocab_size":10,"hidden_size":65,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4}`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ReadConfig(writeConfig(t, json)); !errors.Is(err, ErrBadConfig) {
				t.Errorf("error %v, want ErrBadConfig", err)
			}
		})
	}
	if _, err := ReadConfig(t.TempDir()); !errors.Is(err, ErrBadConfig) {
		t.Errorf("missing config.json: %v", err)
	}
}

func TestBuiltinConfigs(t *testing.T) {
	want := map[string][4]int{ // hidden, layers, heads/kv, head_dim
		"Qwen/Qwen2.5-0.5B":                  {896, 24, 14 / 2, 64},
		"Qwen/Qwen2.5-1.5B-Instruct":         {1536, 28, 12 / 2, 128},
		"Qwen/Qwen2.5-7B":                    {3584, 28, 28 / 4, 128},
		"meta-llama/Llama-3.2-1B":            {2048, 16, 32 / 8, 64},
		"meta-llama/Llama-3.2-3B":            {3072, 28, 24 / 8, 128},
		"meta-llama/Llama-3.1-8B-Instruct":   {4096, 32, 32 / 8, 128},
		"Qwen/Qwen3-0.6B":                    {1024, 28, 16 / 8, 128},
		"Qwen/Qwen3-1.7B":                    {2048, 28, 16 / 8, 128},
		"Qwen/Qwen3-4B":                      {2560, 36, 32 / 8, 128},
		"Qwen/Qwen3-8B":                      {4096, 36, 32 / 8, 128},
		"Qwen/Qwen3-14B":                     {5120, 40, 40 / 8, 128},
		"Qwen/Qwen3-32B":                     {5120, 64, 64 / 8, 128},
		"Qwen/Qwen3-30B-A3B":                 {2048, 48, 32 / 4, 128},
		"mistralai/Mistral-7B-Instruct-v0.3": {4096, 32, 32 / 8, 128},
	}
	for name, w := range want {
		c, ok := BuiltinConfig(name)
		if !ok {
			t.Errorf("%s: not built in", name)
			continue
		}
		got := [4]int{c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads / c.NumKeyValueHeads, c.HeadDim}
		if got != w {
			t.Errorf("%s: %v, want %v", name, got, w)
		}
	}
	if c, ok := BuiltinConfig("qwen/qwen2.5-0.5b-instruct"); !ok || !slices.Equal(c.EOSTokenIDs(), []int{151645}) {
		t.Errorf("case-insensitive lookup / instruct EOS: %v %v", ok, c)
	}
	if c, _ := BuiltinConfig("meta-llama/Llama-3.1-8B"); c.RopeType() != "llama3" || c.RopeScaling.Factor != 8 || c.TieWordEmbeddings {
		t.Errorf("Llama-3.1-8B: rope %q factor %v tie %v", c.RopeType(), c.RopeScaling.Factor, c.TieWordEmbeddings)
	}
	moe, _ := BuiltinConfig("Qwen/Qwen3-30B-A3B")
	if moe.Experts() != 128 || moe.NumExpertsPerTok != 8 || moe.MoEIntermediateSize != 768 || !moe.NormTopKProb ||
		!moe.SparseLayer(0) || !moe.SparseLayer(47) || moe.LayerWindow(47) != 0 {
		t.Errorf("Qwen3-30B-A3B: %d experts, top %d, intermediate %d, norm %v", moe.Experts(), moe.NumExpertsPerTok,
			moe.MoEIntermediateSize, moe.NormTopKProb)
	}
	if c, _ := BuiltinConfig("Qwen/Qwen3-8B"); c.TieWordEmbeddings || c.Arch() != "Qwen3ForCausalLM" || c.LayerWindow(35) != 0 {
		t.Errorf("Qwen3-8B: tie %v arch %s", c.TieWordEmbeddings, c.Arch())
	}
	if c, _ := BuiltinConfig("mistralai/Mistral-7B-v0.1"); c.LayerWindow(0) != 4096 || c.LayerWindow(31) != 4096 {
		t.Errorf("Mistral-7B-v0.1: window %d, want 4096 on every layer", c.LayerWindow(0))
	}
	if c, _ := BuiltinConfig("mistralai/Mistral-7B-Instruct-v0.3"); c.LayerWindow(0) != 0 || c.VocabSize != 32768 {
		t.Errorf("Mistral-7B-Instruct-v0.3: window %d vocab %d, want full attention and 32768", c.LayerWindow(0), c.VocabSize)
	}
	// Copies: editing one does not change the next.
	a, _ := BuiltinConfig("Qwen/Qwen2.5-0.5B")
	a.HiddenSize = 1
	if b, _ := BuiltinConfig("Qwen/Qwen2.5-0.5B"); b.HiddenSize != 896 {
		t.Error("BuiltinConfig returned shared state")
	}
	if _, ok := BuiltinConfig("Qwen/Qwen9"); ok {
		t.Error("unknown name found")
	}
}

// registerForTest registers arch until the test ends, so that the test
// runs again under -count.
func registerForTest(t *testing.T, arch string, f Factory) {
	Register(arch, f)
	t.Cleanup(func() {
		registry.Lock()
		delete(registry.m, arch)
		registry.Unlock()
	})
}

func TestRegisterPanicsOnDuplicate(t *testing.T) {
	f := func(*Config, *Weights) (Model, error) { return nil, errors.New("fake") }
	registerForTest(t, "TestDupForCausalLM", f)
	defer func() {
		if recover() == nil {
			t.Error("duplicate Register did not panic")
		}
	}()
	Register("TestDupForCausalLM", f)
}

func TestResolveOptions(t *testing.T) {
	c, _ := BuiltinConfig("Qwen/Qwen2.5-0.5B")
	for _, tc := range []struct {
		o                  LoadOptions
		compute, store, kv ml.DType
		format             string
	}{
		{LoadOptions{}, ml.BF16, ml.BF16, ml.BF16, "safetensors"},
		{LoadOptions{DType: "float32", LoadFormat: "dummy"}, ml.F32, ml.F32, ml.F32, "dummy"},
		{LoadOptions{DType: "half", Quantization: "int8"}, ml.F16, ml.I8, ml.F16, "safetensors"},
		{LoadOptions{Quantization: "INT8", KVCacheDType: "float32", LoadFormat: "auto"}, ml.BF16, ml.I8, ml.F32, "safetensors"},
	} {
		r, err := resolveOptions(c, tc.o)
		if err != nil {
			t.Errorf("%+v: %v", tc.o, err)
			continue
		}
		if r.compute != tc.compute || r.store != tc.store || r.kv != tc.kv || r.format != tc.format {
			t.Errorf("%+v: got %v/%v/%v/%s", tc.o, r.compute, r.store, r.kv, r.format)
		}
	}
	for _, o := range []LoadOptions{{DType: "fp8"}, {Quantization: "gptq"}, {LoadFormat: "gguf"}, {KVCacheDType: "int4"}} {
		_, err := resolveOptions(c, o)
		if !errors.Is(err, ErrBadOption) || !strings.Contains(err.Error(), "supported") {
			t.Errorf("%+v: %v", o, err)
		}
	}
}

func TestLoadUnknownArchNamesSupported(t *testing.T) {
	registerForTest(t, "TestKnownForCausalLM", func(*Config, *Weights) (Model, error) { return nil, errors.New("fake") })
	dir := writeConfig(t, `{"architectures":["GPT2LMHeadModel"],"vocab_size":10,"hidden_size":64,
		"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":8}`)
	_, err := Load(dir, LoadOptions{LoadFormat: "dummy"})
	if !errors.Is(err, ErrUnsupportedArch) || !strings.Contains(err.Error(), "TestKnownForCausalLM") ||
		!strings.Contains(err.Error(), "GPT2LMHeadModel") {
		t.Errorf("error %v", err)
	}
}

// TestLayerWindowAndSparse: sliding windows and sparse layers as
// transformers derives them from a config.
func TestLayerWindowAndSparse(t *testing.T) {
	for _, c := range []struct {
		json string
		want []int // window per layer (4 layers)
	}{
		{`"model_type":"mistral","sliding_window":8`, []int{8, 8, 8, 8}},
		{`"model_type":"mistral","sliding_window":null`, []int{0, 0, 0, 0}},
		{`"model_type":"qwen2","sliding_window":8,"use_sliding_window":false`, []int{0, 0, 0, 0}},
		{`"model_type":"qwen2","sliding_window":8,"use_sliding_window":true,"max_window_layers":2`, []int{0, 0, 8, 8}},
		{`"model_type":"qwen3","sliding_window":8,"use_sliding_window":true,
			"layer_types":["sliding_attention","full_attention","sliding_attention","full_attention"]`, []int{8, 0, 8, 0}},
	} {
		cfg, err := ParseConfig([]byte(`{"architectures":["X"],"vocab_size":10,"hidden_size":64,"intermediate_size":128,
			"num_hidden_layers":4,"num_attention_heads":8,` + c.json + `}`))
		if err != nil {
			t.Fatal(err)
		}
		for i, w := range c.want {
			if got := cfg.LayerWindow(i); got != w {
				t.Errorf("%s: layer %d window %d, want %d", c.json, i, got, w)
			}
		}
	}
	cfg, err := ParseConfig([]byte(`{"architectures":["X"],"vocab_size":10,"hidden_size":64,"intermediate_size":128,
		"num_hidden_layers":6,"num_attention_heads":8,"num_experts":4,"num_experts_per_tok":2,"moe_intermediate_size":16,
		"decoder_sparse_step":2,"mlp_only_layers":[3]}`))
	if err != nil {
		t.Fatal(err)
	}
	var sparse []bool
	for i := range 6 {
		sparse = append(sparse, cfg.SparseLayer(i))
	}
	if want := []bool{false, true, false, false, false, true}; !slices.Equal(sparse, want) {
		t.Errorf("sparse layers %v, want %v", sparse, want)
	}
	if _, err := ParseConfig([]byte(`{"architectures":["X"],"vocab_size":10,"hidden_size":64,"intermediate_size":128,
		"num_hidden_layers":6,"num_attention_heads":8,"num_experts":4,"num_experts_per_tok":5,"moe_intermediate_size":16}`)); !errors.Is(err, ErrBadConfig) {
		t.Errorf("top-5 of 4 experts: %v, want ErrBadConfig", err)
	}
}
