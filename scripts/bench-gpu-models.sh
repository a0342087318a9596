#!/usr/bin/env bash
# The model-layer issue's GPU figures: for each built-in dummy model, a
# server of its own and the decode workload (12-word prompts, 100 output
# tokens, ignore_eos) over HTTP at each concurrency, plus a 1,024-token
# prompt's time to first token at c=1.
#
#   BIN=./llmserve LOADGEN=./loadgen bash scripts/bench-gpu-models.sh
set -euo pipefail
BIN=${BIN:-./llmserve}
LOADGEN=${LOADGEN:-./loadgen}
MODELS=${MODELS:-"Qwen/Qwen2.5-1.5B Qwen/Qwen3-1.7B Qwen/Qwen3-8B Qwen/Qwen3-30B-A3B"}
LEVELS=${LEVELS:-"1 64"}
TOKENIZER=${TOKENIZER:-}
SERVE_ARGS=${SERVE_ARGS:-} # e.g. "--quantization fp8" (the tag gets a suffix)
PORT=${PORT:-8013}
OUT=${OUTDIR:-results/models}
mkdir -p "$OUT"

summary() { # summary FILE LABEL
  python3 -c 'import json,sys
for l in json.load(open(sys.argv[1]))["levels"]:
    print("%-40s c=%-3s output %7.0f tok/s  ttft p50 %7.1f ms p99 %7.1f ms  tpot p50 %6.2f ms  ok %d failed %d" % (sys.argv[2], l.get("concurrency", "?"), l["output_throughput"], l["ttft_ms"]["p50"], l["ttft_ms"]["p99"], l["tpot_ms"]["p50"], l["successes"], l["failures"]))' "$1" "$2"
}

for model in $MODELS; do
  tag=${model//\//_}${SERVE_ARGS:+_${SERVE_ARGS//[ -]/}}
  # shellcheck disable=SC2206
  args=(serve "$model" --load-format dummy --port "$PORT" $SERVE_ARGS)
  [ -n "$TOKENIZER" ] && args+=(--tokenizer "$TOKENIZER")
  "$BIN" "${args[@]}" > "$OUT/$tag-server.log" 2>&1 &
  server=$!
  until curl -sf -o /dev/null "localhost:$PORT/health"; do
    kill -0 $server 2>/dev/null || { echo "$model: server exited"; tail -5 "$OUT/$tag-server.log"; continue 2; }
    sleep 0.2
  done
  bash "$(dirname "$0")/wait-step-kernel.sh" "$PORT" "$model" "$OUT/$tag-server.log"
  for c in $LEVELS; do
    n=$(( c == 1 ? 20 : 4 * c ))
    "$LOADGEN" --url "http://localhost:$PORT" --endpoint completions --concurrency-levels "$c" --requests "$n" \
      --warmup "$c" --input-len 12 --max-tokens 100 --ignore-eos --output "$OUT/$tag-c$c.json" > "$OUT/$tag-c$c.log" 2>&1
    summary "$OUT/$tag-c$c.json" "$model decode"
  done
  "$LOADGEN" --url "http://localhost:$PORT" --endpoint completions --concurrency-levels 1 --requests 10 \
    --warmup 2 --input-len 1024 --max-tokens 8 --ignore-eos --output "$OUT/$tag-prompt1024.json" > "$OUT/$tag-prompt1024.log" 2>&1
  summary "$OUT/$tag-prompt1024.json" "$model 1024-token prompt"
  kill $server; wait $server 2>/dev/null || true
done
