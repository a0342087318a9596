#!/usr/bin/env bash
# Verifies a build on a GPU machine in three parts (each fits one 10-minute
# device call): part 1 runs the CUDA test binary, the prefill attention
# benchmark and the cold start of each server binary; part 2 the HTTP
# benchmarks (long context, the 12-token decode beside a baseline binary,
# the Qwen3 models); part 3 Llama-3.1-8B in bf16 and fp8 (issue 22's FP8
# figures). Results go under OUTDIR, packed into one archive.
#
#   TEST_BIN=.gpu/cuda.test BIN=.gpu/llmserve BASE_BIN=.gpu/llmserve-main \
#   LOADGEN=.gpu/loadgen LLMSERVE_TESTDATA=.gpu/testdata OUTDIR=$OUT \
#   bash scripts/gpu-verify.sh 1   # then 2, 3
#
# Part 5 runs the long-context workloads with the defaults and with
# --gemm-activations split (the default before d2bc5aa). PREV_BIN (part 2): an earlier
# server binary whose long-context workloads run beside this build's, with
# PREV_FLAGS (e.g. --max-num-batched-tokens 8192, today's default on an
# H100 or H200, which older builds did not choose).
#
# Part 4 (BASE_TEST_BIN: the baseline's cuda.test) checks the one-token
# decode regression's fix: ptxas's spill report of the step kernels from
# the device's NVRTC, the step kernel's phases in both builds, and c=1 at
# two --max-model-len; with PREV_TEST_BIN (an earlier build's cuda.test)
# also its step phases and the prefill attention of both.
#
# Part 6 (FP8 and mixture-of-experts products): the dense FP8 and grouped
# expert matmul benchmarks, Llama-3.1-8B fp8 from this build and from
# PREV_BIN beside this build's bf16 (LLAMA_BF16=0 leaves it out), and
# Qwen3-30B-A3B.
#
# Part 7 (kernel benchmarks): prefill attention from this build and
# PREV_TEST_BIN alternated, the grouped expert products in each of this
# build's forms, the dense FP8 product's two tile forms, the MoE decode
# step's phases. Part 8: the long-context workloads from this build and
# PREV_BIN. Part 9: Qwen3-30B-A3B and Llama-3.1-8B fp8 from this build.
set -uo pipefail
part=${1:?part 1 to 9}
TEST_BIN=${TEST_BIN:-.gpu/cuda.test}
BIN=${BIN:-.gpu/llmserve}
BASE_BIN=${BASE_BIN:-}
BASE_TEST_BIN=${BASE_TEST_BIN:-.gpu/cuda.test-base}
LOADGEN=${LOADGEN:-.gpu/loadgen}
OUT=${OUTDIR:-results/gpu-verify}
export LLMSERVE_TESTDATA=${LLMSERVE_TESTDATA:-$PWD/.gpu/testdata} LLMSERVE_REQUIRE_GPU=1
TOKENIZER=${TOKENIZER:-$LLMSERVE_TESTDATA/tokenizers/qwen3}
mkdir -p "$OUT/part$part"
o="$(cd "$OUT/part$part" && pwd)"
bins=("$BIN")
[ -n "$BASE_BIN" ] && bins=("$BASE_BIN" "$BIN")
test_bin="$(cd "$(dirname "$TEST_BIN")" && pwd)/$(basename "$TEST_BIN")"

# attention_ab PREV_TEST: the prefill attention benchmark from PREV_TEST and
# this build's test binary, alternated, twice.
attention_ab() {
  for round in 1 2; do
    for tb in "$1" "$test_bin"; do
      echo "== $(basename "$tb") attention round $round"
      (cd ml/cuda && timeout 60 "$tb" -test.run XXX -test.bench AttentionPrefill -test.benchtime 20x 2>&1 |
        grep -E "^Benchmark|FAIL|panic" | tee -a "$o/attention-ab.log")
    done
  done
}

if [ "$part" = 1 ]; then
  nvidia-smi --query-gpu=name,memory.used --format=csv
  (cd ml/cuda && timeout 330 "$test_bin" -test.v -test.timeout 320s > "$o/cuda.log" 2>&1; echo "cuda tests rc=$?")
  grep -E "^(--- FAIL|ok|FAIL|PASS|panic)|^    --- FAIL" "$o/cuda.log" | head -60
  (cd ml/cuda && timeout 60 "$test_bin" -test.run XXX -test.bench AttentionPrefill -test.benchtime 20x 2>&1 |
    grep -E "^Benchmark|FAIL|panic" | tee "$o/bench-attention.log")
  for bin in "${bins[@]}"; do
    tag=$(basename "$bin")
    for run in fresh warm; do
      [ $run = fresh ] && rm -rf ~/.cache/llmserve
      start=$(date +%s%N)
      "$bin" serve Qwen/Qwen2.5-1.5B --load-format dummy --tokenizer "$TOKENIZER" --port 8011 > "$o/serve-$tag-$run.log" 2>&1 &
      pid=$!
      until curl -sf -o /dev/null localhost:8011/health; do
        sleep 0.05
        kill -0 $pid 2>/dev/null || { echo "$tag $run: server exited"; break; }
      done
      echo "$tag $run: ready after $(( ($(date +%s%N) - start) / 1000000 )) ms"
      kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null
    done
    # With the kernel cache warm, warm-up ran the decode-step kernel: its
    # occupancy, registers and spills (builds that log them).
    grep -h 'msg="cuda: decode-step kernel" ' "$o/serve-$tag-warm.log" | sed 's/^time=[^ ]* level=INFO //'
  done
elif [ "$part" = 4 ]; then
  # The one-token decode regression since a9b74b0 (c=1 TPOT 2.33 against
  # 1.45 ms on an H200): the step kernel's phases, SM kilocycles per layer,
  # from both builds' test binaries (BASE_TEST_BIN: cuda.test built at
  # a9b74b0), alternated; then c=1 over HTTP at two --max-model-len.
  base_test="$(cd "$(dirname "$BASE_TEST_BIN")" && pwd)/$(basename "$BASE_TEST_BIN")"
  (cd ml/cuda && timeout 120 "$test_bin" -test.run 'TestStepKernelSpills' -test.v 2>&1 | tee "$o/spills.log" | grep -E "spill|NVRTC|FAIL|ok|PASS")
  prev_test=""
  if [ -n "${PREV_TEST_BIN:-}" ]; then
    prev_test="$(cd "$(dirname "$PREV_TEST_BIN")" && pwd)/$(basename "$PREV_TEST_BIN")"
    attention_ab "$prev_test"
  fi
  for round in 1 2; do
    for tb in "$base_test" ${prev_test:+"$prev_test"} "$test_bin"; do
      echo "== $(basename "$tb") round $round"
      (cd ml/cuda && timeout 100 "$tb" -test.run XXX -test.bench 'BenchmarkModelDecode/(step|step-stamped)$/T=1$' \
        -test.benchtime 200x 2>&1 | grep -E "^Benchmark|FAIL|panic" | tee -a "$o/step-phases.log")
    done
  done
  for bin in "${bins[@]}"; do
    for mml in 131072 8192; do
      tag=$(basename "$bin")-mml$mml
      "$bin" serve Qwen/Qwen2.5-1.5B --load-format dummy --tokenizer "$TOKENIZER" --port 8011 --max-model-len $mml > "$o/serve-$tag.log" 2>&1 &
      pid=$!
      until curl -sf -o /dev/null localhost:8011/health; do sleep 0.1; kill -0 $pid 2>/dev/null || break; done
      "$LOADGEN" --url http://localhost:8011 --endpoint completions --concurrency-levels 1 --requests 10 --warmup 2 \
        --input-len 12 --max-tokens 100 --ignore-eos --output "$o/c1-$tag.json" > /dev/null 2>&1
      python3 -c 'import json,sys;l=json.load(open(sys.argv[1]))["levels"][0];print(sys.argv[2], "c=1 %.0f tok/s, TPOT p50 %.3f ms" % (l["output_throughput"], l["tpot_ms"]["p50"]))' "$o/c1-$tag.json" "$tag"
      grep -h 'msg="cuda: decode-step kernel" ' "$o/serve-$tag.log" | sed 's/^time=[^ ]* level=INFO //'
      kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null
    done
  done
elif [ "$part" = 5 ]; then
  # The prompt-bound figures with the defaults (one bf16 rounding of GEMM
  # inputs, as vLLM) and with f32-grade split products, one server each.
  for flags in "" "--gemm-activations split"; do
    tag=$(echo "${flags:-defaults}" | tr -d '-' | tr ' ' '_')
    echo "== $(basename "$BIN") long context, $flags"
    BIN=$BIN LOADGEN=$LOADGEN TOKENIZER=$TOKENIZER ONLY="decode12 long8k p1024-c64 mix-c64" SERVER_FLAGS="$flags" \
      OUTDIR="$o/long-$tag" timeout 150 bash scripts/bench-gpu-long.sh
  done
elif [ "$part" = 6 ]; then
  echo "== $(basename "$TEST_BIN") FP8 and expert matmuls"
  (cd ml/cuda && timeout 200 "$test_bin" -test.run XXX -test.bench 'MatMulF8|MatMulExperts' -test.benchtime 20x 2>&1 |
    grep -E "^Benchmark|FAIL|panic" > "$o/bench-matmul.log"; echo "matmul benchmarks rc=$?")
  # LLAMA_BF16=0 leaves out the bf16 server when its figures are current.
  for spec in "$BIN|--quantization fp8" ${PREV_BIN:+"$PREV_BIN|--quantization fp8"} $([ "${LLAMA_BF16:-1}" = 1 ] && echo "$BIN|"); do
    bin=${spec%%|*} q=${spec#*|}
    echo "== $(basename "$bin") Llama-3.1-8B ${q:-bf16}"
    BIN=$bin LOADGEN=$LOADGEN TOKENIZER=$LLMSERVE_TESTDATA/tokenizers/mistral-sp MODELS=meta-llama/Llama-3.1-8B SERVE_ARGS="$q" \
      OUTDIR="$o/llama8b-$(basename "$bin")" timeout 150 bash scripts/bench-gpu-models.sh
  done
  echo "== $(basename "$BIN") Qwen3-30B-A3B"
  BIN=$BIN LOADGEN=$LOADGEN TOKENIZER=$TOKENIZER MODELS=Qwen/Qwen3-30B-A3B OUTDIR="$o/moe" timeout 200 bash scripts/bench-gpu-models.sh
elif [ "$part" = 7 ]; then
  # Kernel benchmarks, this build against PREV_TEST_BIN alternated where
  # both have the benchmark: prefill attention, the grouped expert
  # products (this build's forms), the MoE decode step's phases.
  prev_test="$(cd "$(dirname "$PREV_TEST_BIN")" && pwd)/$(basename "$PREV_TEST_BIN")"
  attention_ab "$prev_test"
  (cd ml/cuda && timeout 150 "$test_bin" -test.run XXX -test.bench 'MatMulExperts' -test.benchtime 20x 2>&1 |
    grep -E "^Benchmark|FAIL|panic" > "$o/bench-experts.log"; echo "expert benchmarks rc=$?")
  (cd ml/cuda && timeout 100 "$test_bin" -test.run XXX -test.bench 'MatMulF8/round=.*/.*/.*/T=(16|64)/(mma-split|mma-narrow)$' \
    -test.benchtime 20x 2>&1 | grep -E "^Benchmark|FAIL|panic" > "$o/bench-f8.log"; echo "fp8 benchmarks rc=$?")
  (cd ml/cuda && timeout 150 "$test_bin" -test.run XXX -test.bench 'BenchmarkModelDecode/(moe-step|moe-step-stamped)$/T=(1|32)$' \
    -test.benchtime 100x 2>&1 | grep -E "^Benchmark|FAIL|panic" | tee "$o/moe-step.log")
elif [ "$part" = 8 ]; then
  # Servers: the long-context workloads from this build and PREV_BIN (with
  # PREV_FLAGS).
  for bin in "$BIN" ${PREV_BIN:+"$PREV_BIN"}; do
    flags=""
    [ "$bin" = "${PREV_BIN:-}" ] && flags=${PREV_FLAGS:-}
    echo "== $(basename "$bin") long context $flags"
    BIN=$bin LOADGEN=$LOADGEN TOKENIZER=$TOKENIZER ONLY="decode12 long8k p1024-c64 mix-c64" SERVER_FLAGS="$flags" \
      OUTDIR="$o/long-$(basename "$bin")" timeout 150 bash scripts/bench-gpu-long.sh
  done
elif [ "$part" = 9 ]; then
  echo "== $(basename "$BIN") Qwen3-30B-A3B"
  BIN=$BIN LOADGEN=$LOADGEN TOKENIZER=$TOKENIZER MODELS=Qwen/Qwen3-30B-A3B OUTDIR="$o/moe" timeout 200 bash scripts/bench-gpu-models.sh
  echo "== $(basename "$BIN") Llama-3.1-8B fp8"
  BIN=$BIN LOADGEN=$LOADGEN TOKENIZER=$LLMSERVE_TESTDATA/tokenizers/mistral-sp MODELS=meta-llama/Llama-3.1-8B \
    SERVE_ARGS="--quantization fp8" OUTDIR="$o/llama8b-fp8" timeout 150 bash scripts/bench-gpu-models.sh
elif [ "$part" = 3 ]; then
  for q in "" "--quantization fp8"; do
    echo "== $(basename "$BIN") Llama-3.1-8B ${q:-bf16}"
    # Llama's vocabulary (128,256) is smaller than the Qwen tokenizer's: the
    # Mistral one (32,768 ids) fits it.
    BIN=$BIN LOADGEN=$LOADGEN TOKENIZER=$LLMSERVE_TESTDATA/tokenizers/mistral-sp MODELS=meta-llama/Llama-3.1-8B SERVE_ARGS="$q" OUTDIR="$o/llama8b" \
      timeout 200 bash scripts/bench-gpu-models.sh
  done
  nvidia-smi --query-gpu=name --format=csv
else
  # The long-context workloads (the mix too) from this build; the 12-token
  # decode sweep from the baseline beside it; with PREV_BIN (an earlier
  # server) its long-context workloads too, for an A/B; the Qwen3 models.
  for bin in "${bins[@]}" ${PREV_BIN:+"$PREV_BIN"}; do
    tag=$(basename "$bin")
    only="decode12 long8k p1024-c64 mix-c64"
    [ "$bin" = "$BASE_BIN" ] && only=decode12
    flags=""
    [ "$bin" = "${PREV_BIN:-}" ] && flags=${PREV_FLAGS:-}
    echo "== $tag long context ($only) $flags"
    BIN=$bin LOADGEN=$LOADGEN TOKENIZER=$TOKENIZER ONLY="$only" SERVER_FLAGS="$flags" OUTDIR="$o/long-$tag" \
      timeout 150 bash scripts/bench-gpu-long.sh
  done

  echo "== $(basename "$BIN") models"
  BIN=$BIN LOADGEN=$LOADGEN TOKENIZER=$TOKENIZER MODELS="Qwen/Qwen3-1.7B Qwen/Qwen3-8B Qwen/Qwen3-30B-A3B" OUTDIR="$o/models" timeout 240 bash scripts/bench-gpu-models.sh
fi
tar -C "$OUT" -czf "$OUT/part$part.tgz" "part$part" && rm -rf "$o"
