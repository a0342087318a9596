#!/usr/bin/env bash
# Side-by-side CPU benchmark against llama.cpp on the same model shape and
# the same weights: ours from a safetensors checkpoint (cmd/dummyckpt: the
# weights --load-format dummy generates), llama.cpp from GGUFs of that
# checkpoint written with llama.cpp's own gguf-py (BF16, and Q8_0 against our
# int8). Runs alternate (ours, llama.cpp, ours, ...) and every figure is
# reported as each side's median and the median of the pairwise ratios
# ours / llama.cpp, in results/cpu-peer/peer.json and peer.md.
#
# It needs a llama.cpp source tree (LLAMA_CPP_DIR: gguf-py is used from it)
# and a CPU build of it made beforehand (LLAMA_CPP_BIN: a directory holding
# llama-bench and llama-server; default $LLAMA_CPP_DIR/build/bin). Neither is
# part of this repository. Python 3 with numpy writes the GGUFs. The
# environment (LD_LIBRARY_PATH, say, for another libggml-cpu) reaches the
# llama.cpp programs as it is.
#
# Measured (threads = THREADS for both):
#   prefill 128 / 512 tokens and decode, tok/s: our model/llama benchmarks
#     (BenchmarkPrefill, BenchmarkDecode; decode after a 128-token prompt)
#     vs llama-bench -p 128,512 -n DECODE_TOKENS (decode from an empty context);
#     bf16 vs BF16 and int8 vs Q8_0
#   peak RSS of those benchmark processes (model load + the runs)
#   HTTP, both servers up side by side on loopback, /v1/completions streamed
#     through cmd/loadgen: TTFT of a TTFT_PROMPT-token prompt (c=1), decode
#     tok/s at c=1 and aggregate output tok/s at c=4 and c=16 (max_tokens
#     MAX_TOKENS, ignore_eos) against llama-server -np 16
#   peak RSS (VmHWM) of each server after its HTTP runs
#
# Knobs (environment, defaults in brackets):
#   LLAMA_CPP_DIR (required)  LLAMA_CPP_BIN [$LLAMA_CPP_DIR/build/bin]
#   MODEL [Qwen/Qwen2.5-0.5B]  TOKENIZER [<testdata>/tokenizers/qwen3]
#   WORK_DIR [${XDG_CACHE_HOME:-$HOME/.cache}/llmserve-peer]: checkpoint and GGUFs, made once
#   PAIRS [3]  THREADS [2]  DECODE_TOKENS [32]  PREFILL_RUNS [3]  TTFT_PROMPT [2000]  MAX_TOKENS [64]
#   HTTP [1]: 0 skips the HTTP part   INT8 [1]: 0 skips int8 vs Q8_0
#   BENCH [1]: 0 skips the benchmarks and keeps the samples an earlier run wrote
#   OUT_DIR [results/cpu-peer]  PORT [18770] (llama-server on PORT+1)
#   PYTHON [first python3 with numpy]
set -euo pipefail
cd "$(dirname "$0")/.."

: "${LLAMA_CPP_DIR:?set LLAMA_CPP_DIR to a llama.cpp source tree}"
LLAMA_CPP_DIR="$(cd "$LLAMA_CPP_DIR" && pwd)"
LLAMA_CPP_BIN="${LLAMA_CPP_BIN:-$LLAMA_CPP_DIR/build/bin}"
MODEL="${MODEL:-Qwen/Qwen2.5-0.5B}"
TD="${LLMSERVE_TESTDATA:-../shared/testdata}"
TOKENIZER="${TOKENIZER:-$TD/tokenizers/qwen3}"
WORK_DIR="${WORK_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llmserve-peer}"
PAIRS="${PAIRS:-3}"
THREADS="${THREADS:-2}"
DECODE_TOKENS="${DECODE_TOKENS:-32}"
PREFILL_RUNS="${PREFILL_RUNS:-3}"
TTFT_PROMPT="${TTFT_PROMPT:-2000}"
MAX_TOKENS="${MAX_TOKENS:-64}"
HTTP="${HTTP:-1}"
BENCH="${BENCH:-1}"
INT8="${INT8:-1}"
OUT_DIR="${OUT_DIR:-results/cpu-peer}"
PORT="${PORT:-18770}"
LPORT=$((PORT + 1))

for b in llama-bench llama-server; do
  [ -x "$LLAMA_CPP_BIN/$b" ] || { echo "bench-cpu-peer: $LLAMA_CPP_BIN/$b not found: build llama.cpp (CPU) first and set LLAMA_CPP_BIN" >&2; exit 1; }
done
[ -d "$LLAMA_CPP_DIR/gguf-py/gguf" ] || { echo "bench-cpu-peer: $LLAMA_CPP_DIR/gguf-py not found" >&2; exit 1; }
if [ -z "${PYTHON:-}" ]; then
  for p in python3 /usr/bin/python3; do
    if "$p" -c 'import numpy' 2>/dev/null; then PYTHON="$p"; break; fi
  done
fi
[ -n "${PYTHON:-}" ] || { echo "bench-cpu-peer: no python3 with numpy (Debian: apt-get install python3-numpy)" >&2; exit 1; }

tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT_DIR" "$WORK_DIR"
samples="$OUT_DIR/samples.jsonl"
log="$OUT_DIR/runs.log"
if [ "$BENCH" = 1 ]; then
  : >"$samples"
  : >"$log"
else
  # keep the benchmarks' samples; drop an earlier run's HTTP ones
  grep -v -e '"http_' -e '"server_peak_rss"' "$samples" >"$samples.tmp" || true
  mv "$samples.tmp" "$samples"
fi
# rec METRIC SIDE PAIR VALUE UNIT [higher|lower]
rec() {
  printf '{"metric":"%s","side":"%s","pair":%d,"value":%s,"unit":"%s","better":"%s"}\n' \
    "$1" "$2" "$3" "$4" "$5" "${6:-higher}" >>"$samples"
}

echo "== build"
go build -o "$tmp/dummyckpt" ./cmd/dummyckpt
go build -o "$tmp/llmserve" ./cmd/llmserve
go build -o "$tmp/loadgen" ./cmd/loadgen
go test -c -o "$tmp/llama.test" ./model/llama

slug="$(echo "$MODEL" | tr '/' '_')"
ckpt="$WORK_DIR/$slug"
if [ ! -f "$ckpt/model.safetensors" ]; then
  echo "== checkpoint $ckpt"
  "$tmp/dummyckpt" -model "$MODEL" -tokenizer "$TOKENIZER" -out "$ckpt"
fi
for t in bf16 q8_0; do
  g="$WORK_DIR/$slug-$t.gguf"
  if [ ! -f "$g" ] || [ "$g" -ot "$ckpt/model.safetensors" ]; then
    echo "== $g"
    PYTHONPATH="$LLAMA_CPP_DIR/gguf-py" "$PYTHON" scripts/peer/gguf_from_safetensors.py "$ckpt" "$g" --type "$t"
  fi
done

# ours_bench PAIR Q(bf16|int8): decode and prefill tok/s, peak RSS.
ours_bench() {
  local pair=$1 q=$2 suf=$3 out="$tmp/ours.txt"
  : >"$out"
  local rss=0 b n
  # Decode: DECODE_TOKENS steps; prefill: PREFILL_RUNS prompts of each length.
  for b in "Decode/$q:$DECODE_TOKENS" "Prefill/$q/(128|512):$PREFILL_RUNS"; do
    n="${b##*:}"
    LLMSERVE_BENCH_MODEL="$ckpt" LLMSERVE_THREADS="$THREADS" /usr/bin/time -f '%M' -o "$tmp/rss" \
      "$tmp/llama.test" -test.run '^$' -test.bench "^Benchmark${b%:*}\$" -test.benchtime "${n}x" >>"$out" 2>&1 ||
      { cat "$out" >&2; return 1; }
    rss=$(( $(cat "$tmp/rss") > rss ? $(cat "$tmp/rss") : rss ))
  done
  echo "$rss" >"$tmp/rss"
  cat "$out" >>"$log"
  local v
  for b in "Decode/$q:decode" "Prefill/$q/128:prefill128" "Prefill/$q/512:prefill512"; do
    v="$(awk -v n="Benchmark${b%%:*}-" 'index($1, n) == 1 { for (i = 2; i <= NF; i++) if ($i == "tok/s") print $(i-1) }' "$out")"
    [ -n "$v" ] || { echo "bench-cpu-peer: no ${b%%:*} in our benchmark output" >&2; cat "$out" >&2; return 1; }
    rec "${b##*:}_$suf" ours "$pair" "$v" tok/s
  done
  rec "bench_peak_rss_$suf" ours "$pair" "$(($(cat "$tmp/rss") / 1024))" MiB lower
}

# llama_bench PAIR GGUF SUFFIX
llama_bench() {
  local pair=$1 gguf=$2 suf=$3 out="$tmp/llama.json"
  /usr/bin/time -f '%M' -o "$tmp/rss" "$LLAMA_CPP_BIN/llama-bench" -m "$gguf" -t "$THREADS" \
    -p 128,512 -n "$DECODE_TOKENS" -r 1 -o json >"$out" 2>>"$log" || { echo "bench-cpu-peer: llama-bench failed (see $log)" >&2; return 1; }
  cat "$out" >>"$log"
  "$PYTHON" - "$out" "$pair" "$suf" >>"$samples" <<'PY'
import json, sys
out, pair, suf = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for t in json.load(open(out)):
    name = "decode" if t["n_gen"] > 0 else f"prefill{t['n_prompt']}"
    print(json.dumps({"metric": f"{name}_{suf}", "side": "llama.cpp", "pair": pair, "value": t["avg_ts"], "unit": "tok/s", "better": "higher"}))
PY
  rec "bench_peak_rss_$suf" llama.cpp "$pair" "$(($(cat "$tmp/rss") / 1024))" MiB lower
}

[ "$BENCH" = 1 ] && echo "== benchmarks: $PAIRS alternated pairs, $THREADS threads"
for pair in $(seq 1 "$PAIRS"); do
  [ "$BENCH" = 1 ] || break
  echo "-- pair $pair"
  ours_bench "$pair" bf16 bf16
  llama_bench "$pair" "$WORK_DIR/$slug-bf16.gguf" bf16
  if [ "$INT8" = 1 ]; then
    ours_bench "$pair" int8 int8_vs_q8_0
    llama_bench "$pair" "$WORK_DIR/$slug-q8_0.gguf" int8_vs_q8_0
  fi
done

if [ "$HTTP" = 1 ]; then
  slot_ctx=$((TTFT_PROMPT + MAX_TOKENS + 256))
  echo "== servers (16 sequences of up to $slot_ctx tokens each)"
  "$tmp/llmserve" --model "$ckpt" --host 127.0.0.1 --port "$PORT" --max-model-len "$slot_ctx" \
    --max-num-seqs 16 --kv-cache-memory $((16 * slot_ctx * 24 / 1024 + 1))MiB \
    --max-concurrent-requests 64 --served-model-name peer >"$OUT_DIR/ours-server.log" 2>&1 &
  ours_pid=$!
  pids+=("$ours_pid")
  "$LLAMA_CPP_BIN/llama-server" -m "$WORK_DIR/$slug-bf16.gguf" -t "$THREADS" -np 16 -c $((16 * slot_ctx)) \
    --alias peer --host 127.0.0.1 --port "$LPORT" >"$OUT_DIR/llama-server.log" 2>&1 &
  llama_pid=$!
  pids+=("$llama_pid")
  for u in "http://127.0.0.1:$PORT/health" "http://127.0.0.1:$LPORT/health"; do
    ok=""
    for _ in $(seq 1 600); do
      if curl -fsS "$u" >/dev/null 2>&1; then ok=1; break; fi
      kill -0 "$ours_pid" 2>/dev/null && kill -0 "$llama_pid" 2>/dev/null || break
      sleep 0.5
    done
    [ -n "$ok" ] || { tail -n 20 "$OUT_DIR/ours-server.log" "$OUT_DIR/llama-server.log" >&2; echo "bench-cpu-peer: $u not healthy" >&2; exit 1; }
  done
  # lg SIDE PAIR URL: one round of the HTTP workloads.
  lg() {
    local side=$1 pair=$2 url=$3 j="$tmp/lg.json"
    "$tmp/loadgen" --url "$url/v1/completions" --input-len "$TTFT_PROMPT" --output-len 1 --max-tokens 1 \
      --concurrency-levels 1 --requests 3 --warmup 0 --ignore-eos --seed "$pair" --no-metrics --model peer \
      --output "$j" --table "$tmp/lg.md" >>"$log" 2>&1
    rec "http_ttft_${TTFT_PROMPT}_tokens" "$side" "$pair" \
      "$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["levels"][0]["ttft_ms"]["p50"])' "$j")" ms lower
    "$tmp/loadgen" --url "$url/v1/completions" --input-len 32 --max-tokens "$MAX_TOKENS" --output-len "$MAX_TOKENS" \
      --concurrency-levels 1,4,16 --requests 16 --warmup 1 --ignore-eos --seed "$pair" --no-metrics --model peer \
      --output "$j" --table "$tmp/lg.md" >>"$log" 2>&1
    "$PYTHON" - "$j" "$side" "$pair" >>"$samples" <<'PY'
import json, sys
j, side, pair = sys.argv[1], sys.argv[2], int(sys.argv[3])
for l in json.load(open(j))["levels"]:
    c = l["concurrency"]
    name = "http_decode_c1" if c == 1 else f"http_aggregate_c{c}"
    print(json.dumps({"metric": name, "side": side, "pair": pair, "value": l["output_throughput"], "unit": "output tok/s", "better": "higher"}))
    if l["failures"]:
        print(f"{side}: {l['failures']} failed requests at c={c}", file=sys.stderr)
PY
  }
  echo "== HTTP: $PAIRS alternated pairs"
  for pair in $(seq 1 "$PAIRS"); do
    echo "-- pair $pair"
    lg ours "$pair" "http://127.0.0.1:$PORT"
    lg llama.cpp "$pair" "http://127.0.0.1:$LPORT"
  done
  rec server_peak_rss ours 1 "$(($(awk '/VmHWM/ {print $2}' "/proc/$ours_pid/status") / 1024))" MiB lower
  rec server_peak_rss llama.cpp 1 "$(($(awk '/VmHWM/ {print $2}' "/proc/$llama_pid/status") / 1024))" MiB lower
fi

meta="$(printf '{"model":"%s (random bf16 weights, same in both)","threads":%d,"pairs":%d,"llama_cpp":"%s","host":"%s","date":"%s"}' \
  "$MODEL" "$THREADS" "$PAIRS" "$(git -C "$LLAMA_CPP_DIR" describe --always 2>/dev/null || basename "$LLAMA_CPP_DIR")" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') x$(nproc)" "$(date -u +%FT%TZ)")"
"$PYTHON" scripts/peer/summarize.py "$samples" "$OUT_DIR/peer.json" "$OUT_DIR/peer.md" \
  "CPU side by side: llmserve vs llama.cpp" "$meta"
echo "bench-cpu-peer OK: $OUT_DIR/peer.json $OUT_DIR/peer.md"
