#!/usr/bin/env python3
"""Write a GGUF of a Qwen2/Llama-shaped Hugging Face checkpoint directory
(config.json, model.safetensors, tokenizer.json[, tokenizer_config.json]),
with the gguf-py package of a llama.cpp source tree on PYTHONPATH.

The tensors are taken as they are: bf16 matrices stay BF16 (--type bf16) or
are quantized to Q8_0 (--type q8_0, 32-value blocks with one f16 scale, as
llama.cpp's converter does); norms and biases are stored as F32. Needs numpy
only (no torch): the safetensors file is read with numpy.memmap.

    PYTHONPATH=$LLAMA_CPP_DIR/gguf-py python3 gguf_from_safetensors.py DIR OUT.gguf --type bf16
"""
import argparse
import json
import os
import sys

import numpy as np
import gguf


def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        hdr = json.loads(f.read(n))
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    base = 8 + n
    out = {}
    for name, e in hdr.items():
        if name == "__metadata__":
            continue
        lo, hi = e["data_offsets"]
        out[name] = (e["dtype"], e["shape"], mm[base + lo:base + hi])
    return out


def to_f32(dtype, raw, shape):
    if dtype == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if dtype == "F16":
        return raw.view(np.float16).astype(np.float32).reshape(shape)
    if dtype == "F32":
        return raw.view(np.float32).reshape(shape)
    raise SystemExit(f"unsupported dtype {dtype}")


def gguf_name(hf):
    """Hugging Face Llama/Qwen2 tensor names -> llama.cpp's."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")  # model.layers.N.<...>
    if parts[:2] != ["model", "layers"]:
        raise SystemExit(f"unexpected tensor {hf}")
    n, rest = parts[2], ".".join(parts[3:])
    m = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
         "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
         "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
         "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
         "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
         "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    if rest not in m:
        raise SystemExit(f"unexpected tensor {hf}")
    return f"blk.{n}.{m[rest]}"


def add_vocab(w, d, cfg):
    with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    vocab = dict(tj["model"]["vocab"])
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    for i, t in added.items():
        vocab[t["content"]] = i
    size = max(cfg["vocab_size"], max(vocab.values()) + 1)
    rev = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(size):
        if i not in rev:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(rev[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(rev[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if cfg.get("model_type", "").startswith("qwen") else "llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    # merges, bos/eos/pad ids and the chat template, read as llama.cpp's converter reads them
    sv = gguf.SpecialVocab(d, load_merges=True, n_vocab=len(tokens))
    sv.add_to_gguf(w)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("out")
    ap.add_argument("--type", choices=["bf16", "q8_0"], default="bf16")
    a = ap.parse_args()
    with open(os.path.join(a.dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    arch = {"qwen2": "qwen2", "llama": "llama"}.get(cfg.get("model_type"))
    if arch is None:
        raise SystemExit(f"model_type {cfg.get('model_type')!r}: only qwen2 and llama")
    tensors = read_safetensors(os.path.join(a.dir, "model.safetensors"))

    w = gguf.GGUFWriter(a.out, arch)
    w.add_name(os.path.basename(os.path.normpath(a.dir)))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    qt = gguf.GGMLQuantizationType.BF16 if a.type == "bf16" else gguf.GGMLQuantizationType.Q8_0
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if a.type == "bf16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(w, a.dir, cfg)

    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        gname = gguf_name(name)
        if len(shape) == 1:  # norms and biases: F32
            w.add_tensor(gname, np.ascontiguousarray(to_f32(dtype, raw, shape)))
        elif qt == gguf.GGMLQuantizationType.BF16 and dtype == "BF16":
            w.add_tensor(gname, np.asarray(raw).reshape(shape[0], shape[1] * 2), raw_dtype=qt)
        else:
            q = gguf.quants.quantize(to_f32(dtype, raw, shape), qt)
            w.add_tensor(gname, q, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 1e9:.3f} GB, {a.type})", file=sys.stderr)


if __name__ == "__main__":
    main()
