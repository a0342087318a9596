#!/usr/bin/env bash
# Runs a command (default: go test ./ml/cuda) with cudaemu standing in for
# the CUDA driver, NVRTC, cuBLAS and NCCL: the CUDA backend's kernels run
# on the CPU. Checks what they compute, not their speed.
#
#   tools/cudaemu/run.sh                          # the ml/cuda suite
#   tools/cudaemu/run.sh go test -run Flash ./ml/cuda
#   CUDAEMU_DEVICES=2 tools/cudaemu/run.sh go test -run NCCL ./ml/cuda
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
emu=${CUDAEMU_DIR:-$root/.cudaemu}
"$root/tools/cudaemu/build.sh" "$emu" >/dev/null
export CUDA_HOME=$emu LD_LIBRARY_PATH=$emu/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# Compiled units are cached like NVRTC's, apart from real ones.
export XDG_CACHE_HOME=${CUDAEMU_CACHE:-$emu/cache}
export LLMSERVE_REQUIRE_GPU=1
cd "$root"
if [ $# -eq 0 ]; then
  set -- go test -count=1 -timeout 60m ./ml/cuda
fi
exec "$@"
