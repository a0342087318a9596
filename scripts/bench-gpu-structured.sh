#!/usr/bin/env bash
# Output throughput at one concurrency with and without a JSON schema on
# every request, against one server, the runs alternated (the structured
# outputs issue's "c=64 with a json_schema at >= 90% of unconstrained").
#
#   BIN=./llmserve LOADGEN=./loadgen bash scripts/bench-gpu-structured.sh
#
# The schema (scripts/schemas/order.json) asks for at least 40 items, so a
# constrained request, like an unconstrained one from random weights,
# generates its whole max_tokens: both runs then time the same token counts.
set -euo pipefail
BIN=${BIN:-./llmserve}
LOADGEN=${LOADGEN:-./loadgen}
MODEL=${MODEL:-Qwen/Qwen2.5-1.5B}
TOKENIZER=${TOKENIZER:-}
SCHEMA=${SCHEMA:-scripts/schemas/order.json}
C=${C:-64}
REQUESTS=${REQUESTS:-512}
MAX_TOKENS=${MAX_TOKENS:-256}
PAIRS=${PAIRS:-2}
PORT=${PORT:-8012}
OUT=${OUTDIR:-results/structured}
mkdir -p "$OUT"

args=(serve "$MODEL" --load-format dummy --port "$PORT")
[ -n "$TOKENIZER" ] && args+=(--tokenizer "$TOKENIZER")
"$BIN" "${args[@]}" > "$OUT/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
until curl -sf -o /dev/null "localhost:$PORT/health"; do
  kill -0 $server 2>/dev/null || { echo "server exited"; tail -20 "$OUT/server.log"; exit 1; }
  sleep 0.2
done

run() { # run NAME [loadgen flags...]
  local name=$1
  shift
  "$LOADGEN" --url "http://localhost:$PORT" --endpoint completions --concurrency-levels "$C" \
    --requests "$REQUESTS" --warmup "$C" --input-len 64 --max-tokens "$MAX_TOKENS" \
    --output "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
  python3 -c 'import json,sys; l=json.load(open(sys.argv[1]))["levels"][0]; print("%-12s output %.0f tok/s, %d ok, %d failed, %d tokens" % (sys.argv[2], l["output_throughput"], l["successes"], l["failures"], l["total_output_tokens"]))' "$OUT/$name.json" "$name"
}
for i in $(seq 1 "$PAIRS"); do
  run "plain-$i"
  run "schema-$i" --json-schema "$SCHEMA"
done
