#!/usr/bin/env bash
# The long-context issue's GPU figures, against one server (Qwen2.5-1.5B
# shape, dummy weights), over HTTP:
#   decode12   12-word prompts, 100 output tokens, c=1 (TPOT at a short context)
#   long8k     8,000-word prompts, 64 output tokens, c=1 (TTFT, TPOT at 8k)
#   p1024-c64  1,024-word prompts, 128 output tokens, c=64 (TTFT p99, total tok/s)
#   mix-c64    prompts of 64-4,096 words, 32-512 output tokens, c=64
#
#   BIN=./llmserve LOADGEN=./loadgen bash scripts/bench-gpu-long.sh
#
# SERVER_FLAGS adds server flags (e.g. --max-num-batched-tokens 8192);
# ONLY limits the workloads run (e.g. ONLY="decode12 long8k").
set -euo pipefail
BIN=${BIN:-./llmserve}
LOADGEN=${LOADGEN:-./loadgen}
MODEL=${MODEL:-Qwen/Qwen2.5-1.5B}
TOKENIZER=${TOKENIZER:-}
SERVER_FLAGS=${SERVER_FLAGS:-}
ONLY=${ONLY:-"decode12 long8k p1024-c64 mix-c64"}
PORT=${PORT:-8014}
OUT=${OUTDIR:-results/long}
mkdir -p "$OUT"

args=(serve "$MODEL" --load-format dummy --port "$PORT")
[ -n "$TOKENIZER" ] && args+=(--tokenizer "$TOKENIZER")
# shellcheck disable=SC2206
args+=($SERVER_FLAGS)
"$BIN" "${args[@]}" > "$OUT/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
until curl -sf -o /dev/null "localhost:$PORT/health"; do
  kill -0 $server 2>/dev/null || { echo "server exited"; tail -20 "$OUT/server.log"; exit 1; }
  sleep 0.2
done
bash "$(dirname "$0")/wait-step-kernel.sh" "$PORT" "$MODEL" "$OUT/server.log"

run() { # run NAME [loadgen flags...]
  local name=$1
  shift
  "$LOADGEN" --url "http://localhost:$PORT" --endpoint completions --ignore-eos --output "$OUT/$name.json" "$@" \
    > "$OUT/$name.log" 2>&1
  python3 -c 'import json,sys
for l in json.load(open(sys.argv[1]))["levels"]:
    print("%-10s c=%-3s ttft p50 %8.1f p99 %8.1f ms  tpot p50 %6.2f ms  output %7.0f tok/s  total %8.0f tok/s  ok %d failed %d" % (sys.argv[2], l.get("concurrency", "?"), l["ttft_ms"]["p50"], l["ttft_ms"]["p99"], l["tpot_ms"]["p50"], l["output_throughput"], l["total_token_throughput"], l["successes"], l["failures"]))' "$OUT/$name.json" "$name"
}
for w in $ONLY; do
  case $w in
  decode12) run decode12 --concurrency-levels 1 --requests 20 --warmup 2 --input-len 12 --max-tokens 100 ;;
  long8k) run long8k --concurrency-levels 1 --requests 6 --warmup 1 --input-len 8000 --max-tokens 64 ;;
  p1024-c64) run p1024-c64 --concurrency-levels 64 --requests 256 --warmup 64 --input-len 1024 --max-tokens 128 ;;
  mix-c64) run mix-c64 --concurrency-levels 64 --requests 256 --warmup 64 --input-len 64:4096 --output-len 32:512 --seed 7 ;;
  *) echo "unknown workload $w"; exit 1 ;;
  esac
done
