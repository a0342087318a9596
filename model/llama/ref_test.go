package llama

import (
	"fmt"
	"math"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/ml/mltest"
	"github.com/llmserve/llmserve/model"
	"github.com/llmserve/llmserve/weights"
)

// refModel is a naive float64 forward pass written straight from the
// transformers modeling code, independent of the ml backend: the oracle
// the fast path is checked against beyond the golden files.
type refModel struct {
	cfg     *model.Config
	t       map[string][]float64
	dtype   ml.DType // the checkpoint's, for RoPE frequencies as transformers rounds them
	kvDType ml.DType // keys and values are rounded to it, as a KV cache stores them
}

func loadRef(t testing.TB, dir string) *refModel {
	t.Helper()
	cfg, err := model.ReadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	src, err := weights.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dt, err := model.ParseDType(cfg.CheckpointDType())
	if err != nil {
		t.Fatal(err)
	}
	r := &refModel{cfg: cfg, t: map[string][]float64{}, dtype: dt}
	for _, name := range src.Names() {
		x, err := src.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		f := x.ToF32()
		v := make([]float64, len(f))
		for i := range f {
			v[i] = float64(f[i])
		}
		r.t[name] = v
	}
	return r
}

func (r *refModel) w(name string) []float64 {
	v, ok := r.t[name]
	if !ok {
		panic("ref: missing " + name)
	}
	return v
}

// linear returns x[T,K]·w[N,K]ᵀ + b.
func linear(x []float64, T, K int, w, b []float64) []float64 {
	N := len(w) / K
	out := make([]float64, T*N)
	for t := range T {
		for n := range N {
			var s float64
			for k := range K {
				s += x[t*K+k] * w[n*K+k]
			}
			if b != nil {
				s += b[n]
			}
			out[t*N+n] = s
		}
	}
	return out
}

func rmsnorm(x []float64, T, D int, w []float64, eps float64) []float64 {
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

// forward returns the logits of every position of tokens (one sequence
// from position 0).
func (r *refModel) forward(tokens []int32) [][]float64 {
	c := r.cfg
	T, H, I, V := len(tokens), c.HiddenSize, c.IntermediateSize, c.VocabSize
	nh, nkv, hd := c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim
	eps := c.RMSNormEps
	qkvBias := c.Arch() == "Qwen2ForCausalLM" || c.AttentionBias
	inv := c.InvFreq()

	emb := r.w("model.embed_tokens.weight")
	h := make([]float64, T*H)
	for t, tok := range tokens {
		copy(h[t*H:], emb[int(tok)*H:int(tok+1)*H])
	}
	rope := func(x []float64, heads int) {
		half := hd / 2
		for t := range T {
			for hh := range heads {
				base := (t*heads + hh) * hd
				for i := range half {
					a := float64(t) * float64(inv[i])
					cs, sn := math.Cos(a), math.Sin(a)
					x1, x2 := x[base+i], x[base+half+i]
					x[base+i] = x1*cs - x2*sn
					x[base+half+i] = x2*cs + x1*sn
				}
			}
		}
	}
	opt := func(name string) []float64 {
		if v, ok := r.t[name]; ok {
			return v
		}
		return nil
	}
	for l := range c.NumHiddenLayers {
		p := fmt.Sprintf("model.layers.%d.", l)
		xn := rmsnorm(h, T, H, r.w(p+"input_layernorm.weight"), eps)
		var qb, kb, vb []float64
		if qkvBias {
			qb, kb, vb = r.w(p+"self_attn.q_proj.bias"), r.w(p+"self_attn.k_proj.bias"), r.w(p+"self_attn.v_proj.bias")
		}
		q := linear(xn, T, H, r.w(p+"self_attn.q_proj.weight"), qb)
		k := linear(xn, T, H, r.w(p+"self_attn.k_proj.weight"), kb)
		v := linear(xn, T, H, r.w(p+"self_attn.v_proj.weight"), vb)
		rope(q, nh)
		rope(k, nkv)
		if r.kvDType != ml.F32 {
			for i := range k {
				k[i] = float64(mltest.Round(r.kvDType, float32(k[i])))
				v[i] = float64(mltest.Round(r.kvDType, float32(v[i])))
			}
		}
		att := make([]float64, T*nh*hd)
		scale := 1 / math.Sqrt(float64(hd))
		for t := range T {
			for hh := range nh {
				g := hh / (nh / nkv)
				sc := make([]float64, t+1)
				mx := math.Inf(-1)
				for j := 0; j <= t; j++ {
					var s float64
					for d := range hd {
						s += q[(t*nh+hh)*hd+d] * k[(j*nkv+g)*hd+d]
					}
					sc[j] = s * scale
					mx = math.Max(mx, sc[j])
				}
				var sum float64
				for j := range sc {
					sc[j] = math.Exp(sc[j] - mx)
					sum += sc[j]
				}
				for j := range sc {
					for d := range hd {
						att[(t*nh+hh)*hd+d] += sc[j] / sum * v[(j*nkv+g)*hd+d]
					}
				}
			}
		}
		o := linear(att, T, nh*hd, r.w(p+"self_attn.o_proj.weight"), opt(p+"self_attn.o_proj.bias"))
		for i := range h {
			h[i] += o[i]
		}
		xn = rmsnorm(h, T, H, r.w(p+"post_attention_layernorm.weight"), eps)
		gate := linear(xn, T, H, r.w(p+"mlp.gate_proj.weight"), opt(p+"mlp.gate_proj.bias"))
		up := linear(xn, T, H, r.w(p+"mlp.up_proj.weight"), opt(p+"mlp.up_proj.bias"))
		for i := range gate {
			gate[i] = gate[i] / (1 + math.Exp(-gate[i])) * up[i]
		}
		d := linear(gate, T, I, r.w(p+"mlp.down_proj.weight"), opt(p+"mlp.down_proj.bias"))
		for i := range h {
			h[i] += d[i]
		}
	}
	xn := rmsnorm(h, T, H, r.w("model.norm.weight"), eps)
	head := opt("lm_head.weight")
	if c.TieWordEmbeddings || head == nil {
		head = emb
	}
	lg := linear(xn, T, H, head, nil)
	out := make([][]float64, T)
	for t := range out {
		out[t] = lg[t*V : (t+1)*V]
	}
	return out
}
