#!/usr/bin/env bash
# Packs what a GPU machine without Go or a network needs into .gpu/ (keep
# .gpu/ in .git/info/exclude): one xz archive of this checkout's test
# binary and server (cuda.test, llmserve, loadgen, dummyckpt), those of
# earlier commits to compare against, and the test data; and, for the
# llama.cpp side by side, a llama.cpp source tree. scripts/gpu-steps.sh
# runs on the machine from the repository root, the device tool carrying
# .gpu.
#
#   scripts/gpu-bundle.sh [PREV_COMMIT [NAME=COMMIT ...]]
#
# PREV_COMMIT's cuda.test and llmserve become cuda.test-prev and
# llmserve-prev; each NAME=COMMIT adds cuda.test-NAME. LLAMA_CPP_DIR (a
# llama.cpp source tree) adds llama-src.tar.xz. Without GitHub, npm's
# node-llama-cpp package carries one as a git bundle:
#   npm pack node-llama-cpp@3.22.1 && tar xzf node-llama-cpp-3.22.1.tgz package/llama/gitRelease.bundle &&
#   git clone package/llama/gitRelease.bundle llama.cpp
# The carried tree must stay under the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
TD="${LLMSERVE_TESTDATA:-../shared/testdata}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"; git worktree prune' EXIT
export CGO_ENABLED=0
go test -c -o "$stage/cuda.test" ./ml/cuda
go build -o "$stage/llmserve" ./cmd/llmserve
go build -o "$stage/loadgen" ./cmd/loadgen
go build -o "$stage/dummyckpt" ./cmd/dummyckpt
build_at() { # build_at COMMIT SUFFIX [server]
  local wt="$stage/wt-$2"
  git worktree add -q --detach "$wt" "$1"
  (cd "$wt" && go test -c -o "$stage/cuda.test-$2" ./ml/cuda)
  if [ "${3:-}" = server ]; then (cd "$wt" && go build -o "$stage/llmserve-$2" ./cmd/llmserve); fi
  git worktree remove --force "$wt"
}
if [ $# -gt 0 ]; then
  build_at "$1" prev server
  shift
fi
for spec in "$@"; do build_at "${spec#*=}" "${spec%%=*}"; done
cp -r "$TD" "$stage/testdata"
mkdir -p .gpu
(cd "$stage" && tar cJf - --exclude='wt-*' .) >.gpu/bundle.tar.xz
if [ -n "${LLAMA_CPP_DIR:-}" ]; then
  tar cJf .gpu/llama-src.tar.xz -C "$LLAMA_CPP_DIR" --exclude=.git --exclude=./models --exclude=./docs \
    --exclude=./media --exclude=./app --exclude=./examples --exclude=./tests --exclude=./benches --exclude=./pocs .
fi
cp scripts/gpu-steps.sh .gpu/steps.sh
du -sh .gpu/*
