#!/usr/bin/env bash
# Builds cudaemu into $1 (default .cudaemu): libcudaemu.so under every
# name ml/cuda loads (libcuda.so.1, libnvrtc.so, libcublas.so,
# libnccl.so.2), cudaemu-cc and the kernel headers beside it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../.cudaemu}
mkdir -p "$out/lib64"
cxx=${CUDAEMU_CXX:-$(command -v clang++ || command -v clang++-15 || command -v g++)}
# The emulator's sources version its "NVRTC", so kernels compiled by an
# older emulator are not taken from the kernel cache.
build=$(cat "$here"/runtime.cc "$here"/emu_kernel.h "$here"/emu_rt.h "$here"/cc/main.go | cksum | cut -d' ' -f1)
"$cxx" -std=c++20 -O2 -g -fPIC -shared -DCUDAEMU_BUILD=$((build % 100000)) -Wall -Wl,-soname,libcudaemu.so -o "$out/lib64/libcudaemu.so" "$here/runtime.cc" -lpthread -ldl
for n in libcuda.so.1 libcuda.so libnvrtc.so libcublas.so libnccl.so.2 libnccl.so; do
  ln -sf libcudaemu.so "$out/lib64/$n"
done
(cd "$here/../.." && CGO_ENABLED=0 go build -o "$out/lib64/cudaemu-cc" ./tools/cudaemu/cc)
cp "$here/emu_kernel.h" "$here/emu_rt.h" "$out/lib64/"
echo "$out"
