#!/usr/bin/env bash
# CPU benchmark end to end: build the server, load generator and plotter;
# start llmserve on a model; sweep concurrency with loadgen; write
# results/<label>.json and results/<label>_table.md and plots/; stop the server.
#
# Every knob is an environment variable (defaults in brackets):
#   MODEL [Qwen/Qwen2.5-0.5B]   LOAD_FORMAT [dummy]   TOKENIZER [<testdata>/tokenizers/qwen3]
#   SERVER_ARGS [--max-model-len 1024 --max-num-seqs 16 --kv-cache-memory 512MiB --max-concurrent-requests 64]
#   LEVELS [1,2,4,8,16]   REQUESTS [16]   MAX_TOKENS [32]   ENDPOINT [generate]
#   PROMPT [the reference's]   INPUT_LEN/OUTPUT_LEN [unset: fixed PROMPT; e.g. 64:128 for random prompts]
#   IGNORE_EOS [true]   WARMUP [2]   LOADGEN_ARGS [extra loadgen flags]
#   LABEL [cpu]   RESULTS_DIR [results]   PLOTS_DIR [plots]   PORT [18765]
#   SERVER_URL [unset: start a server; set: benchmark that running server instead]
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${MODEL:-Qwen/Qwen2.5-0.5B}"
LOAD_FORMAT="${LOAD_FORMAT:-dummy}"
TD="${LLMSERVE_TESTDATA:-../shared/testdata}"
TOKENIZER="${TOKENIZER-$TD/tokenizers/qwen3}"
SERVER_ARGS="${SERVER_ARGS:---max-model-len 1024 --max-num-seqs 16 --kv-cache-memory 512MiB --max-concurrent-requests 64}"
LEVELS="${LEVELS:-1,2,4,8,16,32}"
REQUESTS="${REQUESTS:-32}"
MAX_TOKENS="${MAX_TOKENS:-32}"
ENDPOINT="${ENDPOINT:-generate}"
PROMPT="${PROMPT:-Explain the theory of relativity in simple terms.}"
IGNORE_EOS="${IGNORE_EOS:-true}"
WARMUP="${WARMUP:-2}"
LABEL="${LABEL:-cpu}"
RESULTS_DIR="${RESULTS_DIR:-results}"
PLOTS_DIR="${PLOTS_DIR:-plots}"
PORT="${PORT:-18765}"

tmp="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    # Graceful drain first; then make sure it is gone.
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== build"
go build -o "$tmp/loadgen" ./cmd/loadgen
go build -o "$tmp/plotresults" ./cmd/plotresults
mkdir -p "$RESULTS_DIR" "$PLOTS_DIR"

if [ -z "${SERVER_URL:-}" ]; then
  go build -o "$tmp/llmserve" ./cmd/llmserve
  base="http://127.0.0.1:$PORT"
  tok_args=()
  if [ -n "$TOKENIZER" ]; then
    [ -e "$TOKENIZER" ] || { echo "bench-cpu: tokenizer $TOKENIZER not found (set TOKENIZER or LLMSERVE_TESTDATA)" >&2; exit 1; }
    tok_args=(--tokenizer "$TOKENIZER")
  fi
  log="$RESULTS_DIR/$LABEL-server.log"
  echo "== start llmserve ($MODEL, --load-format $LOAD_FORMAT $SERVER_ARGS), log in $log"
  # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
  "$tmp/llmserve" --model "$MODEL" --load-format "$LOAD_FORMAT" "${tok_args[@]}" \
    --host 127.0.0.1 --port "$PORT" $SERVER_ARGS >"$log" 2>&1 &
  pid=$!
  ready=""
  for _ in $(seq 1 1200); do # up to 10 minutes: real weights may need a download
    if curl -fsS "$base/health" >/dev/null 2>&1; then ready=1; break; fi
    if ! kill -0 "$pid" 2>/dev/null; then tail -n 40 "$log" >&2; echo "bench-cpu: server exited" >&2; exit 1; fi
    sleep 0.5
  done
  [ -n "$ready" ] || { tail -n 40 "$log" >&2; echo "bench-cpu: server not healthy in time" >&2; exit 1; }
  curl -fsS "$base/health"; echo
else
  base="${SERVER_URL%/}"
  SERVER_ARGS="(external server)"
fi

case "$ENDPOINT" in
  generate) url="$base/generate" ;;
  completions) url="$base/v1/completions" ;;
  chat) url="$base/v1/chat/completions" ;;
  *) echo "bench-cpu: ENDPOINT must be generate, completions or chat" >&2; exit 1 ;;
esac
workload=(--prompt "$PROMPT" --max-tokens "$MAX_TOKENS")
if [ -n "${INPUT_LEN:-}" ]; then
  workload=(--input-len "$INPUT_LEN" --output-len "${OUTPUT_LEN:-$MAX_TOKENS}" --max-tokens "$MAX_TOKENS")
fi

echo "== sweep $LEVELS x $REQUESTS requests"
# shellcheck disable=SC2086 # LOADGEN_ARGS is a list of flags
"$tmp/loadgen" --url "$url" "${workload[@]}" --concurrency-levels "$LEVELS" --requests "$REQUESTS" \
  --ignore-eos="$IGNORE_EOS" --warmup "$WARMUP" --timeout 10m \
  --output "$RESULTS_DIR/$LABEL.json" --table "$RESULTS_DIR/${LABEL}_table.md" \
  --notes "server_model=$MODEL,load_format=$LOAD_FORMAT,server_args=${SERVER_ARGS//,/;}" ${LOADGEN_ARGS:-}

echo "== plots"
"$tmp/plotresults" --results "$RESULTS_DIR/$LABEL.json" --labels "$LABEL" --output-dir "$PLOTS_DIR"
cat "$RESULTS_DIR/${LABEL}_table.md"
echo "bench-cpu OK: $RESULTS_DIR/$LABEL.json $RESULTS_DIR/${LABEL}_table.md $PLOTS_DIR/"
