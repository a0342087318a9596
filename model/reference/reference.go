// Package reference is a naive float64 forward pass of the decoder-only
// architectures, written straight from the transformers modeling code and
// independent of the ml backends: the oracle that fast paths are checked
// against beyond the golden files (long contexts, batches the goldens do
// not cover). It is slow by design and used only by tests.
package reference

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/mltest"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/weights"
)

// Model holds a checkpoint's config and every tensor upcast to float64.
type Model struct {
	Config *model.Config
	// KVDType rounds keys and values as a KV cache of that dtype stores
	// them (F32, the default, leaves them as computed).
	KVDType ml.DType
	tensors map[string][]float64
	cols    map[string]int // the last dimension of each tensor
}

// Load reads a Hugging Face checkpoint directory (config.json and
// safetensors).
func Load(dir string) (*Model, error) {
	cfg, err := model.ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	src, err := weights.Open(dir)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	r := &Model{Config: cfg, tensors: map[string][]float64{}, cols: map[string]int{}}
	var fp8 []string
	for _, name := range src.Names() {
		x, err := src.Tensor(name)
		if err != nil {
			return nil, err
		}
		f := x.ToF32()
		v := make([]float64, len(f))
		for i := range f {
			v[i] = float64(f[i])
		}
		r.tensors[name] = v
		if len(x.Shape) > 0 {
			r.cols[name] = x.Shape[len(x.Shape)-1]
		}
		if x.DType == ml.F8 {
			fp8 = append(fp8, name)
		}
	}
	// An FP8 checkpoint's weights are codes times <name>_scale (one
	// scale, or one per row) or <name>_scale_inv (one per block of the
	// config's weight_block_size).
	for _, name := range fp8 {
		v, cols := r.tensors[name], r.cols[name]
		rows := len(v) / cols
		var scaleAt func(i int) float64
		if scales, ok := r.tensors[name+"_scale"]; ok && (len(scales) == 1 || len(scales) == rows) {
			scaleAt = func(i int) float64 { return scales[min(i/cols, len(scales)-1)] }
		} else if scales, ok := r.tensors[name+"_scale_inv"]; ok && cfg.QuantizationConfig != nil && len(cfg.QuantizationConfig.WeightBlockSize) == 2 {
			bs := cfg.QuantizationConfig.WeightBlockSize
			bc := (cols + bs[1] - 1) / bs[1]
			scaleAt = func(i int) float64 { return scales[i/cols/bs[0]*bc+i%cols/bs[1]] }
		} else {
			return nil, fmt.Errorf("reference: FP8 tensor %q has no usable scale", name)
		}
		for i := range v {
			v[i] *= scaleAt(i)
		}
	}
	return r, nil
}

// QuantizeWeights replaces the weights that --quantization stores
// quantized (every projection of attention, the MLPs and the experts, the
// lm_head, and the embedding when it is tied; not the router, the norms or
// the biases) by quantize(w, rows, cols), the values the quantized storage
// holds, so that Forward computes what a quantized model should.
func (r *Model) QuantizeWeights(quantize func(w []float32, rows, cols int) []float32) {
	for name, v := range r.tensors {
		quantized := strings.HasSuffix(name, "_proj.weight") || name == "lm_head.weight" ||
			name == "model.embed_tokens.weight" && r.Config.TieWordEmbeddings
		if !quantized {
			continue
		}
		cols := r.cols[name]
		w := make([]float32, len(v))
		for i, x := range v {
			w[i] = float32(x)
		}
		for i, x := range quantize(w, len(v)/cols, cols) {
			v[i] = float64(x)
		}
	}
}

func (r *Model) w(name string) []float64 {
	v, ok := r.tensors[name]
	if !ok {
		panic("reference: missing tensor " + name)
	}
	return v
}

// opt is a tensor the checkpoint may lack (biases), nil then.
func (r *Model) opt(name string) []float64 { return r.tensors[name] }

// Linear returns x[T,K]·w[N,K]ᵀ + b (b may be nil).
func Linear(x []float64, T, K int, w, b []float64) []float64 {
	N := len(w) / K
	out := make([]float64, T*N)
	for t := range T {
		xr := x[t*K : (t+1)*K]
		for n := range N {
			wr := w[n*K : (n+1)*K]
			var s float64
			for k, xv := range xr {
				s += xv * wr[k]
			}
			if b != nil {
				s += b[n]
			}
			out[t*N+n] = s
		}
	}
	return out
}

// RMSNorm normalizes each of the T rows of D values and scales by w.
func RMSNorm(x []float64, T, D int, w []float64, eps float64) []float64 {
	out := make([]float64, len(x))
	for t := range T {
		var ss float64
		for _, v := range x[t*D : (t+1)*D] {
			ss += v * v
		}
		inv := 1 / math.Sqrt(ss/float64(D)+eps)
		for d := range D {
			out[t*D+d] = x[t*D+d] * inv * w[d]
		}
	}
	return out
}

// Forward returns the logits of every position of tokens (one sequence
// from position 0).
func (r *Model) Forward(tokens []int32) [][]float64 {
	c := r.Config
	T, H, I, V := len(tokens), c.HiddenSize, c.IntermediateSize, c.VocabSize
	nh, nkv, hd := c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim
	eps := c.RMSNormEps
	qkvBias := c.Arch() == "Qwen2ForCausalLM" || c.AttentionBias
	// transformers keeps inv_freq in float32 whatever the model's dtype and
	// forms the angles in float32; the angle here is formed in float64 from
	// the same float32 frequencies (the CPU backend does the same).
	inv := c.InvFreq()

	emb := r.w("model.embed_tokens.weight")
	h := make([]float64, T*H)
	for t, tok := range tokens {
		copy(h[t*H:], emb[int(tok)*H:int(tok+1)*H])
	}
	half := hd / 2
	cos, sin := make([]float64, T*half), make([]float64, T*half)
	for t := range T {
		for i := range half {
			cos[t*half+i], sin[t*half+i] = math.Cos(float64(t)*float64(inv[i])), math.Sin(float64(t)*float64(inv[i]))
		}
	}
	rope := func(x []float64, heads int) {
		for t := range T {
			cs, sn := cos[t*half:(t+1)*half], sin[t*half:(t+1)*half]
			for hh := range heads {
				base := (t*heads + hh) * hd
				for i := range half {
					x1, x2 := x[base+i], x[base+half+i]
					x[base+i] = x1*cs[i] - x2*sn[i]
					x[base+half+i] = x2*cs[i] + x1*sn[i]
				}
			}
		}
	}
	scale := 1 / math.Sqrt(float64(hd))
	for l := range c.NumHiddenLayers {
		p := fmt.Sprintf("model.layers.%d.", l)
		xn := RMSNorm(h, T, H, r.w(p+"input_layernorm.weight"), eps)
		var qb, kb, vb []float64
		if qkvBias {
			qb, kb, vb = r.w(p+"self_attn.q_proj.bias"), r.w(p+"self_attn.k_proj.bias"), r.w(p+"self_attn.v_proj.bias")
		}
		q := Linear(xn, T, H, r.w(p+"self_attn.q_proj.weight"), qb)
		k := Linear(xn, T, H, r.w(p+"self_attn.k_proj.weight"), kb)
		v := Linear(xn, T, H, r.w(p+"self_attn.v_proj.weight"), vb)
		// Qwen3: RMSNorm over each head of q and k, before RoPE.
		if qn := r.opt(p + "self_attn.q_norm.weight"); qn != nil {
			q = RMSNorm(q, T*nh, hd, qn, eps)
			k = RMSNorm(k, T*nkv, hd, r.w(p+"self_attn.k_norm.weight"), eps)
		}
		rope(q, nh)
		rope(k, nkv)
		if r.KVDType != ml.F32 {
			for i := range k {
				k[i] = float64(mltest.Round(r.KVDType, float32(k[i])))
				v[i] = float64(mltest.Round(r.KVDType, float32(v[i])))
			}
		}
		att := make([]float64, T*nh*hd)
		sc := make([]float64, T)
		window := c.LayerWindow(l) // keys j with t-j < window
		for t := range T {
			j0 := 0
			if window > 0 {
				j0 = max(0, t-window+1)
			}
			for hh := range nh {
				g := hh / (nh / nkv)
				qr := q[(t*nh+hh)*hd : (t*nh+hh+1)*hd]
				mx := math.Inf(-1)
				for j := j0; j <= t; j++ {
					kr := k[(j*nkv+g)*hd : (j*nkv+g+1)*hd]
					var s float64
					for d, qv := range qr {
						s += qv * kr[d]
					}
					sc[j] = s * scale
					mx = math.Max(mx, sc[j])
				}
				var sum float64
				for j := j0; j <= t; j++ {
					sc[j] = math.Exp(sc[j] - mx)
					sum += sc[j]
				}
				out := att[(t*nh+hh)*hd : (t*nh+hh+1)*hd]
				for j := j0; j <= t; j++ {
					wgt := sc[j] / sum
					vr := v[(j*nkv+g)*hd : (j*nkv+g+1)*hd]
					for d, vv := range vr {
						out[d] += wgt * vv
					}
				}
			}
		}
		o := Linear(att, T, nh*hd, r.w(p+"self_attn.o_proj.weight"), r.opt(p+"self_attn.o_proj.bias"))
		for i := range h {
			h[i] += o[i]
		}
		xn = RMSNorm(h, T, H, r.w(p+"post_attention_layernorm.weight"), eps)
		var d []float64
		if c.SparseLayer(l) {
			d = r.moe(p+"mlp.", xn, T)
		} else {
			d = r.mlp(p+"mlp.", xn, T, I)
		}
		for i := range h {
			h[i] += d[i]
		}
	}
	xn := RMSNorm(h, T, H, r.w("model.norm.weight"), eps)
	head := r.opt("lm_head.weight")
	if c.TieWordEmbeddings || head == nil {
		head = emb
	}
	lg := Linear(xn, T, H, head, nil)
	out := make([][]float64, T)
	for t := range out {
		out[t] = lg[t*V : (t+1)*V]
	}
	return out
}

// Rewrite copies the checkpoint in src to dst with every floating-point
// tensor converted to dt (rounded to nearest even) and config.json
// declaring dt and maxPositions positions: the long-context tests run the
// tiny checkpoints as bf16 models at 4,096 tokens.
func Rewrite(src, dst string, dt ml.DType, maxPositions int) error {
	raw, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	delete(cfg, "torch_dtype")
	cfg["dtype"] = dt.String()
	cfg["max_position_embeddings"] = maxPositions
	if raw, err = json.MarshalIndent(cfg, "", "  "); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dst, "config.json"), raw, 0o644); err != nil {
		return err
	}
	in, err := weights.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	var out []*weights.Tensor
	for _, name := range in.Names() {
		x, err := in.Tensor(name)
		if err != nil {
			return err
		}
		f := x.ToF32()
		data := make([]byte, len(f)*dt.Size())
		weights.ConvertFromF32(data, f, dt)
		out = append(out, &weights.Tensor{Name: name, DType: dt, Shape: x.Shape, Data: data})
	}
	return weights.WriteFile(filepath.Join(dst, "model.safetensors"), out, map[string]string{"format": "pt"})
}

// LogprobDiff is the largest difference between the log-softmax of got and
// of want: logprobs, what a client sees, are blind to a shift of all
// logits.
func LogprobDiff(got []float32, want []float64) float64 {
	g := make([]float64, len(got))
	for i, v := range got {
		g[i] = float64(v)
	}
	lg, lw := logSumExp(g), logSumExp(want)
	worst := 0.0
	for i := range g {
		if d := math.Abs((g[i] - lg) - (want[i] - lw)); d > worst || d != d {
			worst = d
		}
	}
	return worst
}

func logSumExp(x []float64) float64 {
	mx := math.Inf(-1)
	for _, v := range x {
		mx = math.Max(mx, v)
	}
	var s float64
	for _, v := range x {
		s += math.Exp(v - mx)
	}
	return mx + math.Log(s)
}

// mlp is the dense SiLU-gated MLP with weights under prefix (gate_proj,
// up_proj, down_proj, biases where present) of intermediate size I.
func (r *Model) mlp(prefix string, xn []float64, T, I int) []float64 {
	H := r.Config.HiddenSize
	gate := Linear(xn, T, H, r.w(prefix+"gate_proj.weight"), r.opt(prefix+"gate_proj.bias"))
	up := Linear(xn, T, H, r.w(prefix+"up_proj.weight"), r.opt(prefix+"up_proj.bias"))
	for i := range gate {
		gate[i] = gate[i] / (1 + math.Exp(-gate[i])) * up[i]
	}
	return Linear(gate, T, I, r.w(prefix+"down_proj.weight"), r.opt(prefix+"down_proj.bias"))
}

// moe is Qwen3-MoE's sparse block (transformers' Qwen3MoeSparseMoeBlock):
// router logits gate·x, softmax over all experts, the top num_experts_per_tok
// (renormalized to sum 1 with norm_topk_prob), and the weighted sum of those
// experts' MLPs. transformers takes the softmax in float32 even for a
// float64 model; here it is float64 (the difference is ~1e-7 relative).
func (r *Model) moe(prefix string, xn []float64, T int) []float64 {
	c := r.Config
	H, E, k, I := c.HiddenSize, c.Experts(), c.NumExpertsPerTok, c.MoEIntermediateSize
	logits := Linear(xn, T, H, r.w(prefix+"gate.weight"), nil)
	out := make([]float64, T*H)
	for t := range T {
		row := logits[t*E : (t+1)*E]
		mx := math.Inf(-1)
		for _, v := range row {
			mx = math.Max(mx, v)
		}
		p := make([]float64, E)
		var sum float64
		for i, v := range row {
			p[i] = math.Exp(v - mx)
			sum += p[i]
		}
		for i := range p {
			p[i] /= sum
		}
		taken := make([]bool, E)
		var ids []int
		var ws []float64
		var tot float64
		for range k {
			best := -1
			for i := range p {
				if !taken[i] && (best < 0 || p[i] > p[best]) {
					best = i
				}
			}
			taken[best] = true
			ids = append(ids, best)
			ws = append(ws, p[best])
			tot += p[best]
		}
		x := xn[t*H : (t+1)*H]
		for j, e := range ids {
			wgt := ws[j]
			if c.NormTopKProb {
				wgt /= tot
			}
			y := r.mlp(fmt.Sprintf("%sexperts.%d.", prefix, e), x, 1, I)
			for i := range y {
				out[t*H+i] += wgt * y[i]
			}
		}
	}
	return out
}
