"""Stock Hugging Face transformers generate() baseline for the H100 results:
Qwen2.5-1.5B's config with random bf16 weights (no download), 12-token
prompts, 100 greedy output tokens (min_new_tokens forces ignore-eos), one
batch per concurrency level. Usage: python3 transformers_baseline.py out.json
"""
import json, sys, time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072,
                  rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)
torch.manual_seed(0)
with torch.device("cuda"):
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
model.eval()
gen = dict(max_new_tokens=100, min_new_tokens=100, do_sample=False, pad_token_id=0, eos_token_id=None)
results = []
batches = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1, 2, 4, 8, 16, 32, 64, 128, 256]
for bs in batches:
    ids = torch.randint(100, 150000, (bs, 12), device="cuda")
    mask = torch.ones_like(ids)
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, **{**gen, "max_new_tokens": 4, "min_new_tokens": 4})
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, **gen)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
    n = (out.shape[1] - ids.shape[1]) * bs
    r = dict(concurrency=bs, seconds=round(dt, 3), output_tokens=n, output_tok_per_s=round(n / dt, 1))
    print(json.dumps(r), flush=True)
    results.append(r)
import transformers
json.dump(dict(engine="transformers " + transformers.__version__ + " generate() torch " + torch.__version__,
               device=torch.cuda.get_device_name(), results=results), open(sys.argv[1], "w"), indent=1)
