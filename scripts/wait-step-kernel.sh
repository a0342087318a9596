#!/usr/bin/env bash
# Waits until a GPU server's one-launch decode-step kernel is in use, so
# that a benchmark does not time the layer-by-layer path that serves while
# that kernel compiles in the background (minutes on a cold kernel cache).
# Sends short completions until the server's log says the kernel loaded.
#
#   scripts/wait-step-kernel.sh PORT MODEL SERVER_LOG [TIMEOUT_SECONDS]
set -uo pipefail
port=$1 model=$2 log=$3 timeout=${4:-120}
deadline=$((SECONDS + timeout))
until grep -q 'decode-step kernel loaded' "$log"; do
  if [ $SECONDS -ge $deadline ]; then
    echo "wait-step-kernel: no decode-step kernel after ${timeout}s; timing the layer-by-layer path" >&2
    exit 0
  fi
  curl -sf -o /dev/null "localhost:$port/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$model\", \"prompt\": \"warm up\", \"max_tokens\": 4}"
  sleep 1
done
