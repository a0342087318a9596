#!/usr/bin/env bash
# End-to-end smoke test: a real server on a dummy-weight Qwen2.5-0.5B with the
# real Qwen tokenizer from the test data, every endpoint once with curl, the
# load generator for a few requests, and the plots; then a graceful SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
TD="${LLMSERVE_TESTDATA:-../shared/testdata}"
if [ ! -d "$TD/tokenizers/qwen3" ]; then
  if [ -n "${CI:-}" ]; then echo "smoke: test data not found at $TD" >&2; exit 1; fi
  echo "smoke: test data not found at $TD, skipping"; exit 0
fi
tmp="$(mktemp -d)"
port="${SMOKE_PORT:-18089}"
base="http://127.0.0.1:$port"
go build -o "$tmp/llmserve" ./cmd/llmserve
go build -o "$tmp/loadgen" ./cmd/loadgen
go build -o "$tmp/plotresults" ./cmd/plotresults

"$tmp/llmserve" --model Qwen/Qwen2.5-0.5B --load-format dummy --tokenizer "$TD/tokenizers/qwen3" \
  --host 127.0.0.1 --port "$port" --max-model-len 512 --max-num-seqs 8 --kv-cache-memory 256MiB \
  --max-concurrent-requests 16 >"$tmp/server.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

for i in $(seq 1 240); do
  if curl -fsS "$base/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$tmp/server.log"; echo "smoke: server exited" >&2; exit 1; fi
  sleep 0.5
done
curl -fsS "$base/health"; echo
check() { # name, then curl args; fails on non-2xx
  echo "== $1"; shift
  curl -fsS --max-time 120 "$@" | head -c 600; echo
}
check health "$base/health"
check models "$base/v1/models"
check generate "$base/generate" -H 'Content-Type: application/json' -d '{"prompt":"Hello","max_tokens":4}'
check generate-stream -N "$base/generate" -H 'Content-Type: application/json' -d '{"prompt":"Hello","max_tokens":4,"stream":true}'
check completions "$base/v1/completions" -H 'Content-Type: application/json' -d '{"model":"Qwen/Qwen2.5-0.5B","prompt":"Hello","max_tokens":4}'
check chat "$base/v1/chat/completions" -H 'Content-Type: application/json' -d '{"model":"Qwen/Qwen2.5-0.5B","messages":[{"role":"user","content":"Hi"}],"max_tokens":4}'
check tokenize "$base/tokenize" -H 'Content-Type: application/json' -d '{"prompt":"Hello world"}'
echo "== metrics"
curl -fsS "$base/metrics" | grep -E '^vllm:(num_requests_running|generation_tokens_total)' | head -5
code="$(curl -s -o /dev/null -w '%{http_code}' "$base/generate" -H 'Content-Type: application/json' -d '{"prompt":"x","max_tokens":0}')"
[ "$code" = 400 ] || { echo "smoke: max_tokens=0 gave $code, want 400" >&2; exit 1; }

echo "== loadgen"
"$tmp/loadgen" --url "$base/generate" --prompt "Explain the theory of relativity." --max-tokens 8 \
  --concurrency-levels 1,2 --requests 4 --output "$tmp/results.json"
"$tmp/plotresults" --results "$tmp/results.json" --output-dir "$tmp/plots"
ls "$tmp/plots"/*.png >/dev/null

echo "== graceful shutdown"
kill -TERM "$pid"
wait "$pid"
echo "smoke OK"
