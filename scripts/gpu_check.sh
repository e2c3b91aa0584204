#!/usr/bin/env bash
# The GPU check: device tests, then scoring and training benchmarks of rewardkit against
# PyTorch transformers on the same GPU, same checkpoint (a Llama-shaped ~1.2B model in bf16
# with random weights) and the HH-RLHF length mix. Runs on a GPU machine with the NVIDIA
# driver, PyTorch and transformers, from binaries built elsewhere:
#
#   scripts/gpu_build.sh                                     # here: builds .gpu-dist/
#   bash .gpu-dist/run-on-gpu.sh bash scripts/gpu_check.sh   # on the GPU machine, repo root
#
# Prints a summary table; logs and JSON go to $OUT (or /tmp/rk-gpu). About 5-8 minutes.
# SKIP_BENCH=1: device tests only. SKIP_SCORE=1: skip the scoring benchmark. DEBUG_TRAIN=1:
# after the device tests, localise the bf16 training fault instead of benchmarking: memcheck,
# then blocking launches over growing shapes (~6-8 min).
set -u
B=${GPU_DIST:?run through .gpu-dist/run-on-gpu.sh}
OUT=${OUT:-/tmp/rk-gpu}
mkdir -p "$OUT"
export REWARDKIT_REPO=$PWD REWARDKIT_TEST_TMP=/tmp/rk-tests PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=$(ls /opt/torch/.venv/bin/python 2>/dev/null || echo python3)
DATA=data/hh-rlhf/harmless-base-test.jsonl.gz
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"

echo "== device tests (CUDA vs CPU parity, training and meta steps, memory, errors)"
timeout 240 "$B/test-gpu" --test-threads 1 --nocapture 2>&1 | tee "$OUT/gpu-tests.log" | grep -E "^test |test result|diff|error|losses|free GPU|panicked" || true
[ "${SKIP_BENCH:-0}" = 1 ] && exit 0

echo "== a 1.2B Llama-shaped reward model, bf16, random weights"
"$B/rewardkit" init-tiny --out /tmp/rk-tiny --corpus "$DATA" >/dev/null 2>&1
timeout 180 "$PY" scripts/make_random_model.py --shape llama-1b --tokenizer /tmp/rk-tiny/tokenizer.json --out /tmp/rm1b --dtype bfloat16 --device cuda 2>&1 | tail -1

peak_during() {  # peak nvidia-smi memory.used (MiB) while "$@" runs
  local log=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$log.mem" &
  local smi=$!
  "$@"
  local rc=$?
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  echo "peak_mib $(sort -n "$log.mem" | tail -1)" >> "$log"
  return $rc
}

if [ "${DEBUG_TRAIN:-0}" = 1 ]; then
  # Localises the bf16 training fault seen at 1.2B (CUBLAS_STATUS_EXECUTION_FAILED at 4 pairs x
  # 256 tokens, CUDA_ERROR_ILLEGAL_ADDRESS at 2 pairs). First memcheck (when
  # scripts/gpu_build.sh packed it): it names the kernel and the bad address. Then
  # blocking launches with backtraces over growing shapes and trainable sets, to tell a size
  # threshold from one op's backward (the embedding gradient, 128,256 x 2048, only exists with
  # --trainable all).
  train1b() {  # trainable pairs max_length steps: the command line of one bench-train run
    echo "$B/rewardkit" bench-train --model /tmp/rm1b --input $DATA --limit 16 --batch-pairs "$2" --max-length "$3" \
      --steps "$4" --trainable "$1" --device cuda --dtype bf16
  }
  if [ -e "$B/compute-sanitizer.tar" ]; then
    SAN=/tmp/rk-sanitizer
    mkdir -p $SAN && tar -C $SAN -xf "$B/compute-sanitizer.tar"
    memcheck() {  # log, command...
      local log=$1; shift
      LD_LIBRARY_PATH=$SAN/lib:$LD_LIBRARY_PATH timeout 200 $SAN/bin/compute-sanitizer --tool memcheck --print-limit 12 "$@" > "$log" 2>&1
      echo "   exit $?; $(grep -cE '^========= (Invalid|Program hit|Error)' "$log") reports"
      grep -E '^========= (Invalid|Program hit|Error|    at |ERROR SUMMARY)|rror' "$log" | head -24
    }
    echo "== memcheck: bf16 training on the tiny model (device test)"
    memcheck "$OUT/memcheck-test.log" "$B/test-gpu" bf16_training --test-threads 1
    echo "== memcheck: two bf16 training steps on the 1.2B model, all trainable, 2 pairs x 128"
    memcheck "$OUT/memcheck-1b.log" $(train1b all 2 128 1)
  else
    echo "(no compute-sanitizer in $B: scripts/gpu_build.sh adds it)"
  fi
  echo "== debug: bf16 training steps, blocking launches"
  for spec in "head 2 128" "top:2 2 128" "all 2 128" "top:2 4 256" "all 4 256" "all 8 256"; do
    set -- $spec
    echo "-- trainable $1, $2 pairs, max length $3"
    CUDA_LAUNCH_BLOCKING=1 RUST_BACKTRACE=1 timeout 60 $(train1b "$1" "$2" "$3" 2) > "$OUT/debug-train-$1-$2-$3.log" 2>&1
    echo "   exit $?; $(grep -E 'tokens/s|rror' "$OUT/debug-train-$1-$2-$3.log" | head -3 | tr '\n' ' ')"
  done
  exit 0
fi

if [ "${SKIP_SCORE:-0}" != 1 ]; then
echo "== scoring: rewardkit (cuda, bf16)"
peak_during "$OUT/rk-score.log" sh -c "timeout 150 '$B/rewardkit' bench --model /tmp/rm1b --input $DATA --limit 256 --batch-size 16 --batch-tokens 65536 --device cuda --dtype bf16 --repeats 3 --dump-ids /tmp/ids1b.jsonl --json --profile > '$OUT/rk-score.log' 2>&1"
grep -E "median|profiled" "$OUT/rk-score.log"
echo "-- where rewardkit's scoring time goes (one extra pass, synchronised around each phase)"
grep -E "^\|" "$OUT/rk-score.log" | head -12
echo "== scoring: transformers (cuda, bf16)"
# nvidia-smi's peak for both engines: the same measure (whole process, allocator caches
# included) beside torch's own allocator peak.
peak_during "$OUT/pt-score.log" sh -c "timeout 150 '$PY' scripts/bench_transformers.py --model /tmp/rm1b --ids /tmp/ids1b.jsonl --batch-size 16 --batch-tokens 65536 --device cuda --dtype bfloat16 --repeats 3 > '$OUT/pt-score.log' 2>&1"
tail -2 "$OUT/pt-score.log"
fi

echo "== training step: rewardkit (cuda, bf16 compute, f32 master weights and AdamW state)"
peak_during "$OUT/rk-train.log" sh -c "timeout 150 '$B/rewardkit' bench-train --model /tmp/rm1b --input $DATA --limit 64 --batch-pairs 4 --max-length 256 --steps 6 --device cuda --dtype bf16 --dump-ids /tmp/pairs1b.jsonl --json --profile > '$OUT/rk-train.log' 2>&1"
grep -E "median|profiled|rror" "$OUT/rk-train.log"
echo "-- where rewardkit's training step time goes"
grep -E "^\|" "$OUT/rk-train.log" | head -8
echo "== training step: transformers (cuda, bf16 autocast over f32 weights, AdamW)"
peak_during "$OUT/pt-train.log" sh -c "timeout 150 '$PY' scripts/bench_transformers_train.py --model /tmp/rm1b --ids /tmp/pairs1b.jsonl --batch-pairs 4 --steps 6 --device cuda --dtype bfloat16 > '$OUT/pt-train.log' 2>&1"
tail -2 "$OUT/pt-train.log"

"$PY" scripts/gpu_summary.py "$OUT" /tmp/rm1b/config.json | tee "$OUT/summary.md"
