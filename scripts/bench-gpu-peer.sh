#!/usr/bin/env bash
# Side by side with llama.cpp's CUDA build on one GPU, on the same model
# shape and the same weights. Our side reads a safetensors checkpoint
# (cmd/dummyckpt: the weights --load-format dummy generates), llama.cpp reads
# a BF16 GGUF of it written with llama.cpp's own gguf-py
# (scripts/peer/gguf_from_safetensors.py). The two sides alternate PAIRS
# times:
#   llama.cpp  llama-bench -ngl 99 -fa 1 -p PROMPT -n GEN -r 3: tg (decode
#              tok/s from an empty context) and pp (prompt tok/s)
#   llmserve   the server on the checkpoint over HTTP (cmd/loadgen): c=1
#              decode tok/s (12-token prompts, GEN tokens out, ignore_eos),
#              and a PROMPT-word prompt's time to first token, as prompt tok/s
#              (its tokens as the server counted them)
# The results go to OUT_DIR/peer.md and OUT_DIR/samples.jsonl, with the logs
# beside them.
#
# It runs where the GPU is, without Go or a network: BIN, LOADGEN and
# DUMMYCKPT are binaries built beforehand (go build ./cmd/llmserve,
# ./cmd/loadgen, ./cmd/dummyckpt). LLAMA_CPP_DIR is a llama.cpp source tree.
# Without LLAMA_CPP_BIN/llama-bench, the script builds it first for this
# GPU: CUDA on, flash attention for f16/bf16 only (llama.cpp's default), no
# server, UI, NCCL or downloads. That takes minutes; BUILD_ONLY=1 stops after
# it, so that a device call of limited length can build and the next one
# measure.
#
# Knobs (environment, defaults in brackets):
#   LLAMA_CPP_DIR (required)  LLAMA_CPP_BIN [$LLAMA_CPP_DIR/build-cuda/bin]
#   BIN [./llmserve]  LOADGEN [./loadgen]  DUMMYCKPT [./dummyckpt]
#   MODEL [Qwen/Qwen2.5-1.5B]  TOKENIZER [<testdata>/tokenizers/qwen3]
#   WORK_DIR [${TMPDIR:-/tmp}/llmserve-gpu-peer]: checkpoint and GGUF, made once
#   PAIRS [2]  PROMPT [512]  GEN [128]  OUT_DIR [results/gpu-peer]  PORT [18780]
#   PYTHON [first python3 with numpy]  BUILD_ONLY [0]  SERVE_ARGS: more server flags
set -euo pipefail
cd "$(dirname "$0")/.."

: "${LLAMA_CPP_DIR:?set LLAMA_CPP_DIR to a llama.cpp source tree}"
LLAMA_CPP_DIR="$(cd "$LLAMA_CPP_DIR" && pwd)"
LLAMA_CPP_BIN="${LLAMA_CPP_BIN:-$LLAMA_CPP_DIR/build-cuda/bin}"
BIN="${BIN:-./llmserve}"
LOADGEN="${LOADGEN:-./loadgen}"
DUMMYCKPT="${DUMMYCKPT:-./dummyckpt}"
MODEL="${MODEL:-Qwen/Qwen2.5-1.5B}"
TD="${LLMSERVE_TESTDATA:-../shared/testdata}"
TOKENIZER="${TOKENIZER:-$TD/tokenizers/qwen3}"
WORK_DIR="${WORK_DIR:-${TMPDIR:-/tmp}/llmserve-gpu-peer}"
PAIRS="${PAIRS:-2}"
PROMPT="${PROMPT:-512}"
GEN="${GEN:-128}"
OUT_DIR="${OUT_DIR:-results/gpu-peer}"
PORT="${PORT:-18780}"
BUILD_ONLY="${BUILD_ONLY:-0}"
SERVE_ARGS="${SERVE_ARGS:-}"
mkdir -p "$OUT_DIR" "$WORK_DIR"
log="$OUT_DIR/run.log"
: >"$log"

if [ ! -x "$LLAMA_CPP_BIN/llama-bench" ]; then
  build="$(dirname "$LLAMA_CPP_BIN")"
  echo "== building llama-bench (CUDA) in $build"
  t0=$(date +%s)
  gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S "$LLAMA_CPP_DIR" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=native -DGGML_CUDA_NCCL=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF >>"$log" 2>&1 || { echo "bench-gpu-peer: cmake failed (see $log)" >&2; tail -20 "$log" >&2; exit 1; }
  cmake --build "$build" --target llama-bench -j "$(nproc)" >>"$log" 2>&1 ||
    { echo "bench-gpu-peer: build failed (see $log)" >&2; tail -20 "$log" >&2; exit 1; }
  echo "built in $(($(date +%s) - t0)) s"
fi
[ "$BUILD_ONLY" = 1 ] && exit 0

if [ -z "${PYTHON:-}" ]; then
  for p in python3 /usr/bin/python3; do
    if "$p" -c 'import numpy' 2>/dev/null; then PYTHON="$p"; break; fi
  done
fi
[ -n "${PYTHON:-}" ] || { echo "bench-gpu-peer: no python3 with numpy" >&2; exit 1; }

slug="$(echo "$MODEL" | tr '/' '_')"
ckpt="$WORK_DIR/$slug"
gguf="$WORK_DIR/$slug-bf16.gguf"
if [ ! -f "$ckpt/model.safetensors" ]; then
  echo "== checkpoint $ckpt"
  "$DUMMYCKPT" -model "$MODEL" -tokenizer "$TOKENIZER" -out "$ckpt" >>"$log" 2>&1
fi
if [ ! -f "$gguf" ] || [ "$gguf" -ot "$ckpt/model.safetensors" ]; then
  echo "== $gguf"
  PYTHONPATH="$LLAMA_CPP_DIR/gguf-py" "$PYTHON" scripts/peer/gguf_from_safetensors.py "$ckpt" "$gguf" --type bf16 >>"$log" 2>&1
fi

samples="$OUT_DIR/samples.jsonl"
: >"$samples"
rec() { # rec METRIC SIDE PAIR VALUE UNIT
  printf '{"metric":"%s","side":"%s","pair":%d,"value":%s,"unit":"%s"}\n' "$1" "$2" "$3" "$4" "$5" >>"$samples"
}

llama() { # llama PAIR
  local out="$OUT_DIR/llama-bench-$1.json"
  "$LLAMA_CPP_BIN/llama-bench" -m "$gguf" -ngl 99 -fa 1 -p "$PROMPT" -n "$GEN" -r 3 -o json >"$out" 2>>"$log" ||
    { echo "bench-gpu-peer: llama-bench failed (see $log)" >&2; return 1; }
  "$PYTHON" - "$out" "$1" >>"$samples" <<'PY'
import json, sys
for t in json.load(open(sys.argv[1])):
    name = "decode" if t["n_gen"] > 0 else "prompt"
    print(json.dumps({"metric": name, "side": "llama.cpp", "pair": int(sys.argv[2]), "value": t["avg_ts"], "unit": "tok/s"}))
PY
}

ours() { # ours PAIR
  # shellcheck disable=SC2086
  "$BIN" serve "$ckpt" --port "$PORT" $SERVE_ARGS >"$OUT_DIR/server-$1.log" 2>&1 &
  local pid=$!
  until curl -sf -o /dev/null "localhost:$PORT/health"; do
    kill -0 $pid 2>/dev/null || { echo "bench-gpu-peer: our server exited (see $OUT_DIR/server-$1.log)" >&2; return 1; }
    sleep 0.2
  done
  "$LOADGEN" --url "http://localhost:$PORT" --endpoint completions --ignore-eos --concurrency-levels 1 --requests 20 \
    --warmup 2 --input-len 12 --max-tokens "$GEN" --output "$OUT_DIR/ours-decode-$1.json" >>"$log" 2>&1
  "$LOADGEN" --url "http://localhost:$PORT" --endpoint completions --ignore-eos --concurrency-levels 1 --requests 6 \
    --warmup 1 --input-len "$PROMPT" --max-tokens 1 --output "$OUT_DIR/ours-prompt-$1.json" >>"$log" 2>&1
  kill -TERM $pid 2>/dev/null
  wait $pid 2>/dev/null || true
  "$PYTHON" - "$OUT_DIR/ours-decode-$1.json" "$OUT_DIR/ours-prompt-$1.json" "$1" "$PROMPT" >>"$samples" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["levels"][0]
p = json.load(open(sys.argv[2]))["levels"][0]
pair = int(sys.argv[3])
# loadgen's prompts are PROMPT words: the tokens are what the server counted.
n = p["total_input_tokens"] / max(p["successes"], 1)
print(json.dumps({"metric": "decode", "side": "llmserve", "pair": pair, "value": d["output_throughput"], "unit": "tok/s"}))
print(json.dumps({"metric": "prompt", "side": "llmserve", "pair": pair, "value": n / (p["ttft_ms"]["p50"] / 1e3), "unit": "tok/s"}))
print(json.dumps({"metric": "prompt_tokens", "side": "llmserve", "pair": pair, "value": n, "unit": "tokens"}))
PY
}

for pair in $(seq 1 "$PAIRS"); do
  echo "-- pair $pair"
  ours "$pair"
  llama "$pair"
done

"$PYTHON" - "$samples" "$MODEL" "$PROMPT" "$GEN" >"$OUT_DIR/peer.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
model, prompt, gen = sys.argv[2:5]
def med(metric, side):
    v = [r["value"] for r in rows if r["metric"] == metric and r["side"] == side]
    return statistics.median(v) if v else float("nan")
print(f"{model}, bf16, one GPU; medians of the alternated runs\n")
print("| | llmserve | llama.cpp | llmserve / llama.cpp |")
print("|---|---|---|---|")
for metric, label in (("decode", f"decode tok/s (ours: HTTP c=1, {gen} out; llama-bench tg{gen})"),
                      ("prompt", f"prompt tok/s (ours: a {prompt}-word prompt of {med('prompt_tokens', 'llmserve'):.0f} tokens over TTFT, HTTP; llama-bench pp{prompt})")):
    a, b = med(metric, "llmserve"), med(metric, "llama.cpp")
    print(f"| {label} | {a:,.0f} | {b:,.0f} | {a / b:.2f} |")
PY
cat "$OUT_DIR/peer.md"
