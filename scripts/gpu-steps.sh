#!/usr/bin/env bash
# Runs on a GPU machine, from the repository root, with .gpu/ carried (see
# scripts/gpu-bundle.sh): unpacks the bundle once, then runs the named
# steps in order. Results go to $OUT/r.tar.gz, rewritten after every step
# so that a call cut short still returns what ran.
#
#   bash .gpu/steps.sh peerbuild suite attn step-context
#
# Steps:
#   suite        the CUDA test binary (TEST_BIN, default .gpu/cuda.test),
#                prefill attention and the server's cold start
#                (scripts/gpu-verify.sh 1)
#   tests        the CUDA tests TESTS names (a -test.run pattern), with
#                LLMSERVE_REQUIRE_GPU set: a short check of the kernels a
#                change touched where the whole suite would not fit
#   attn         BenchmarkAttentionPrefill's flash forms at T=8000 (ATTN
#                narrows them), cuda.test-prev and cuda.test alternated
#   step-context BenchmarkDecodeStepContext, cuda.test and cuda.test-NAME
#                (STEP_AB, default gqa) alternated
#   attn-sweep   BenchmarkAttentionPrefill in every form and length, twice
#   long         the long-context workloads (scripts/bench-gpu-long.sh) from
#                llmserve, then from LONG_PREV (e.g. llmserve-prev) if set
#   models       the decode sweep of MODELS (default Qwen3-8B and
#                Qwen3-30B-A3B; scripts/bench-gpu-models.sh), and
#                Llama-3.1-8B in bf16 and fp8 where MODELS names it
#   ncu-prefill  an 8,000-token prompt step's kernels timed by Nsight
#                Compute (BenchmarkPrefill, rounded activations), summed by
#                kernel over its four steps (the 8,000-token benchmark comes
#                back with git revert 610f8df)
#   ncu-serve    the steps of the c=64 load of 1,024-token prompts
#                (BenchmarkModelServeSteps: 64 decode rows at 100 and 1,100
#                tokens of context, eight 1,024-token prompts, both mixed),
#                their kernels timed by Nsight Compute and summed, then the
#                steps timed without it (TEST_BIN, default .gpu/cuda.test;
#                NCU_CASES narrows the steps)
#   serveab      BenchmarkModelServeSteps, cuda.test-prev and cuda.test
#                alternated
#   ncu-flash    Nsight Compute's detailed sections (speed of light, warp
#                stalls, source counters) for one launch of the wide and
#                one of the narrow flash form at T=8000 (NCU_FLASH: another
#                BenchmarkAttentionPrefill case, e.g. 8x1024), rounded
#   attnform     the one-token decode step at 100, 2,000 and 8,000 tokens of
#                context with each form of the one-head attention's passes
#                (as they are, pipelined, wide), and with an FP8 cache at
#                8,000, two rounds
#   fp8step      the one-token decode step's phases with bf16 and FP8
#                weights, Qwen2.5-1.5B's and 12 of Qwen3-8B's layers, two
#                rounds
#   ncu-step     Nsight Compute's full sections and per-instruction SASS
#                counters for one launch of the decode step: bf16 at 100 and
#                8,000 tokens of context, FP8 weights at 100; and 12 layers
#                of Qwen3-8B and of Qwen3-30B-A3B (NCU_BENCH narrows them)
#   copybw       the device-to-device copy rate (scripts/gpu-copy-bw.py)
#   tcform       the one-token decode step's phases with the tensor-core
#                attention (the default) and the lane-per-dims one (-lane),
#                at 100, 2,000 and 8,000 tokens of context (and at 8,000 with
#                64 and 128 pieces a KV head), two rounds
#   longtpot     scripts/bench-gpu-long.sh's decode12 and long8k (TPOT at
#                12 and 8,000 tokens of context) from llmserve and llmserve-prev
#   stepab8      the one-token decode step's phases, Qwen2.5-1.5B, MoE and 12
#                of Qwen3-8B's layers, bf16 and FP8 weights, cuda.test-prev
#                and cuda.test alternated (AB_BINS: other binaries of .gpu/;
#                AB_RE: another BenchmarkModelDecode pattern)
#   stepab       the one-token decode step, dense and MoE (BenchmarkModelDecode
#                step-stamped, T=1, 100 tokens of context) of cuda.test-prev
#                and cuda.test alternated
#   pf           the decode step with and without its L2 prefetch of the o
#                and gate/up weights (BenchmarkModelDecode *-pf), dense
#                and MoE, T=1 and 32, two rounds
#   stepctx      the one-token decode step's phases at 100, 2,000 and
#                8,000 tokens of context, with GQA heads sharing a warp (gqa) and
#                fixed pieces per head (nsN), two rounds
#                (BenchmarkModelDecode step-stamped*, T=1)
#   moestep      the MoE decode step's phases (BenchmarkModelDecode)
#   peerbuild    starts building llama.cpp's CUDA llama-bench in the
#                background (minutes) from .gpu/llama-src.tar.xz
#   peer         waits for that build, then scripts/bench-gpu-peer.sh
set -uo pipefail
[ -x .gpu/cuda.test ] || (cd .gpu && tar xJf bundle.tar.xz)
export LLMSERVE_TESTDATA=$PWD/.gpu/testdata
# A results folder per bundle: a machine can outlive a session, and an
# earlier bundle's files must not come back as this one's.
R=/tmp/r-$(cksum <.gpu/bundle.tar.xz | cut -d' ' -f1)
mkdir -p $R
nvidia-smi --query-gpu=name --format=csv,noheader | tee $R/gpu.txt
ab() { # ab LOG BENCH BENCHTIME BIN...: the binaries' benchmark alternated, ROUNDS (2) times
  local log=$1 bench=$2 n=$3
  shift 3
  for round in $(seq 1 "${ROUNDS:-2}"); do
    for tb in "$@"; do
      echo "== $tb round $round" | tee -a "$R/$log"
      (cd ml/cuda && timeout 120 "../../.gpu/$tb" -test.run XXX -test.bench "$bench" -test.benchtime "$n" 2>&1 |
        grep -E "^Benchmark|FAIL|panic") | tee -a "$R/$log"
    done
  done
}
rounds() { # rounds LOG BENCH TIMEOUT: cuda.test's benchmark BENCH, 100 iterations, twice
  for round in 1 2; do
    (cd ml/cuda && timeout "$3" ../../.gpu/cuda.test -test.run XXX -test.bench "$2" -test.benchtime 100x 2>&1 |
      grep -E "^Benchmark|FAIL|panic") | tee -a "$R/$1"
  done
}
for step in "$@"; do
  case $step in
  suite) TEST_BIN=${TEST_BIN:-.gpu/cuda.test} OUTDIR=$R bash scripts/gpu-verify.sh 1 2>&1 | tail -30 ;;
  tests)
    (cd ml/cuda && LLMSERVE_REQUIRE_GPU=1 timeout 300 ../../.gpu/cuda.test -test.run "${TESTS:?}" -test.v >$R/tests.log 2>&1)
    echo "tests exit $?"; grep -E "^(--- |PASS|FAIL|ok)" $R/tests.log | tail -40 ;;
  attn) ab attn-ab.log "${ATTN:-AttentionPrefill/flash[a-z-]*/T=8000\$}" 20x cuda.test-prev cuda.test ;;
  attn-sweep) ab attn-sweep.log AttentionPrefill 20x cuda.test ;;
  long)
    for bin in llmserve ${LONG_PREV:-}; do
      echo "== $bin long context"
      BIN=.gpu/$bin LOADGEN=.gpu/loadgen TOKENIZER=$LLMSERVE_TESTDATA/tokenizers/qwen3 OUTDIR=$R/long-$bin \
        timeout 400 bash scripts/bench-gpu-long.sh 2>&1 | tail -8
    done ;;
  models)
    for model in ${MODELS:-Qwen/Qwen3-8B Qwen/Qwen3-30B-A3B}; do
      tok=$LLMSERVE_TESTDATA/tokenizers/qwen3 args=("")
      # Llama's vocabulary (128,256) is smaller than the Qwen tokenizer's.
      [[ $model == meta-llama/* ]] && tok=$LLMSERVE_TESTDATA/tokenizers/mistral-sp args=("" "--quantization fp8")
      for q in "${args[@]}"; do
        echo "== $model ${q:-bf16}"
        BIN=.gpu/llmserve LOADGEN=.gpu/loadgen TOKENIZER=$tok MODELS=$model SERVE_ARGS="$q" OUTDIR=$R/models \
          timeout 400 bash scripts/bench-gpu-models.sh 2>&1 | grep -E "c=|exited|FAIL" | tail -4
      done
    done ;;
  step-context) ab step-context-ab.log DecodeStepContext 200x cuda.test "cuda.test-${STEP_AB:-gqa}" ;;
  ncu-prefill)
    (cd ml/cuda && timeout 400 ncu --metrics gpu__time_duration.sum --csv --clock-control none ../../.gpu/cuda.test \
      -test.run XXX -test.bench 'Prefill/round=true/seqs=1/new=8000$' -test.benchtime 1x >$R/ncu-prefill.csv 2>$R/ncu-prefill.err)
    python3 scripts/ncu-sum.py $R/ncu-prefill.csv 4 | tee $R/ncu-prefill.txt ;;
  ncu-serve)
    tb=${TEST_BIN:-.gpu/cuda.test}
    for c in ${NCU_CASES:-decode64-ctx100 decode64-ctx1100 prefill8x1024 mixed64x1100-8x1016}; do
      (cd ml/cuda && timeout 200 ncu --metrics gpu__time_duration.sum --csv --clock-control none ../../$tb \
        -test.run XXX -test.bench "ModelServeSteps/$c\$" -test.benchtime 1x >$R/ncu-$c.csv 2>$R/ncu-$c.err)
      echo "== $c (4 steps)" | tee -a $R/ncu-serve.txt
      python3 scripts/ncu-sum.py $R/ncu-$c.csv 4 | head -25 | tee -a $R/ncu-serve.txt
      gzip -f $R/ncu-$c.csv
      tar czf "$OUT/r.tar.gz" -C $R .
    done
    (cd ml/cuda && timeout 200 ../../$tb -test.run XXX -test.bench ModelServeSteps -test.benchtime 20x 2>&1 |
      grep -E "^Benchmark|FAIL|panic") | tee -a $R/serve-steps.log ;;
  serveab) ab serve-ab.log ModelServeSteps 20x ${AB_BINS:-cuda.test-prev cuda.test} ;;
  ncu-flash)
    fcase=${NCU_FLASH:-T=8000}
    for form in flash-round-wide flash-round; do
      (cd ml/cuda && timeout 200 ncu --set full --import-source no -k regex:flash_attn -c 1 --clock-control none \
        ../../.gpu/cuda.test -test.run XXX -test.bench "AttentionPrefill/$form/$fcase\$" -test.benchtime 1x \
        >$R/ncu-$form-$fcase.txt 2>&1)
      grep -E "Duration|Throughput|Registers|Achieved Occupancy|Stall|Warp Cycles|Issued|Executed Ipc|Bank" $R/ncu-$form-$fcase.txt | head -40
    done ;;
  attnform)
    rounds attn-form.log 'ModelDecode/step-stamped(-ctx[0-9]+)?(-pipe|-wide|-kv8)?$/T=1$' 250 ;;
  tcform)
    rounds tc-form.log 'ModelDecode/(q8b-|moe-)?step-stamped(-ctx[0-9]+)?(-lane|-ns64|-ns128)?$/T=1$' 300 ;;
  longtpot)
    for bin in llmserve llmserve-prev; do
      echo "== $bin"
      BIN=.gpu/$bin LOADGEN=.gpu/loadgen TOKENIZER=$LLMSERVE_TESTDATA/tokenizers/qwen3 OUTDIR=$R/longtpot-$bin \
        ONLY="decode12 long8k" timeout 400 bash scripts/bench-gpu-long.sh 2>&1 | tail -4
    done ;;
  fp8step)
    rounds fp8-step.log 'ModelDecode/(q8b-)?step-stamped(-fp8)?$/T=1$' 150 ;;
  ncu-step)
    # One decode-step launch each: bf16 at 8,000 tokens of context, FP8 at
    # 100; the report's details, and its SASS with per-instruction stall
    # counters (to tell attention's and the merge's stalls apart).
    # NCU_BENCH narrows the launches; the archive is rewritten after each,
    # as the whole list can outrun a call.
    for b in ${NCU_BENCH:-step-stamped step-stamped-ctx8000 step-stamped-fp8 q8b-step-stamped moe-step-stamped}; do
      (cd ml/cuda && timeout 150 ncu --set full --import-source no -k regex:decode_step --launch-skip 12 -c 1 \
        --clock-control none -f -o /tmp/ncu-$b ../../.gpu/cuda.test -test.run XXX \
        -test.bench "ModelDecode/$b/T=1\$" -test.benchtime 20x >$R/ncu-$b.log 2>&1)
      ncu -i /tmp/ncu-$b.ncu-rep >$R/ncu-$b.txt 2>&1
      ncu -i /tmp/ncu-$b.ncu-rep --page source --csv --print-source sass 2>&1 | gzip >$R/ncu-$b-sass.csv.gz
      grep -E "Duration|Throughput|Registers|Achieved Occupancy|Issued|Executed Ipc" $R/ncu-$b.txt | head -20
      tar czf "$OUT/r.tar.gz" -C $R .
    done ;;
  copybw) python3 scripts/gpu-copy-bw.py | tee -a $R/copy-bw.txt ;;
  stepab8) ab step-ab8.log "${AB_RE:-ModelDecode/(q8b-|moe-)?step-stamped(-fp8)?\$/T=1\$}" 100x ${AB_BINS:-cuda.test-prev cuda.test} ;;
  stepab) ab step-ab.log 'ModelDecode/(moe-)?step-stamped$/T=1$' 200x cuda.test-prev cuda.test ;;
  pf)
    rounds pf-ab.log 'ModelDecode/(moe-)?step-stamped(-pf)?$/T=(1|32)$' 250 ;;
  stepctx)
    rounds step-ctx.log 'ModelDecode/step-stamped(-ctx[0-9]+)?(-gqa)?(-ns[0-9]+)?$/T=1$' 250 ;;
  moestep)
    (cd ml/cuda && timeout 150 ../../.gpu/cuda.test -test.run XXX -test.bench 'ModelDecode/(moe-step|moe-step-stamped)$/T=(1|32)$' \
      -test.benchtime 100x -test.v 2>&1 | grep -vE '^=== ' | tail -60) | tee $R/moe-step.log ;;
  peerbuild)
    if [ ! -d /tmp/llama/src ]; then mkdir -p /tmp/llama/src && tar xJf .gpu/llama-src.tar.xz -C /tmp/llama/src; fi
    root=$PWD
    (cd /tmp/llama && LLAMA_CPP_DIR=/tmp/llama/src BUILD_ONLY=1 OUT_DIR=/tmp/llama/out \
      setsid nohup bash "$root/scripts/bench-gpu-peer.sh" >/tmp/llama/build.log 2>&1 </dev/null &)
    echo "peer build started" ;;
  peer)
    for _ in $(seq 1 100); do
      [ -x /tmp/llama/src/build-cuda/bin/llama-bench ] && break
      pgrep -f bench-gpu-peer >/dev/null || break
      sleep 5
    done
    tail -3 /tmp/llama/build.log
    cp /tmp/llama/build.log $R/ 2>/dev/null
    cp /tmp/llama/out/run.log $R/peer-build-run.log 2>/dev/null
    LLAMA_CPP_DIR=/tmp/llama/src BIN=.gpu/llmserve LOADGEN=.gpu/loadgen DUMMYCKPT=.gpu/dummyckpt OUT_DIR=$R/peer \
      PAIRS=${PAIRS:-2} timeout "${PEER_T:-400}" bash scripts/bench-gpu-peer.sh 2>&1 | tail -30
    cat $R/peer/peer.md 2>/dev/null ;;
  *) echo "unknown step $step" ;;
  esac
  tar czf "$OUT/r.tar.gz" -C $R .
done
