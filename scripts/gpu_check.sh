#!/usr/bin/env bash
# The GPU check: device tests, then scoring and training benchmarks of rewardkit against
# PyTorch transformers on the same GPU, same checkpoint (a Llama-shaped ~1.2B model in bf16
# with random weights) and the HH-RLHF length mix. Runs on a GPU machine with the NVIDIA
# driver, PyTorch and transformers, from binaries built elsewhere:
#
#   ../shared/gpu/build-cuda.sh . --bins --tests          # here: builds .gpu-dist/
#   bash .gpu-dist/run-on-gpu.sh bash scripts/gpu_check.sh   # on the GPU machine, repo root
#
# Prints a summary table; logs and JSON go to $OUT (or /tmp/rk-gpu). About 5-8 minutes.
# SKIP_BENCH=1: device tests only. SKIP_SCORE=1: skip the scoring benchmark. DEBUG_TRAIN=1:
# after the device tests, localise the bf16 training fault instead of benchmarking (~5 min).
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
  # 256 tokens, CUDA_ERROR_ILLEGAL_ADDRESS at 2 pairs). Blocking launches make the failing
  # kernel report at its own launch, and the backtrace names the op. Growing shapes and
  # trainable sets separate a size threshold from one op's backward (the embedding gradient,
  # 128,256 x 2048, only exists with --trainable all).
  echo "== debug: bf16 training steps, blocking launches"
  for spec in "head 2 128" "top:2 2 128" "all 2 128" "top:2 4 256" "all 4 256" "all 8 256"; do
    set -- $spec
    echo "-- trainable $1, $2 pairs, max length $3"
    CUDA_LAUNCH_BLOCKING=1 RUST_BACKTRACE=1 timeout 90 "$B/rewardkit" bench-train --model /tmp/rm1b --input $DATA --limit 16 \
      --batch-pairs "$2" --max-length "$3" --steps 2 --trainable "$1" --device cuda --dtype bf16 > "$OUT/debug-train-$1-$2-$3.log" 2>&1
    echo "   exit $?; $(grep -E 'tokens/s|rror' "$OUT/debug-train-$1-$2-$3.log" | head -3 | tr '\n' ' ')"
  done
  exit 0
fi

if [ "${SKIP_SCORE:-0}" != 1 ]; then
echo "== scoring: rewardkit (cuda, bf16)"
peak_during "$OUT/rk-score.log" sh -c "timeout 150 '$B/rewardkit' bench --model /tmp/rm1b --input $DATA --limit 256 --batch-size 16 --batch-tokens 65536 --device cuda --dtype bf16 --repeats 3 --dump-ids /tmp/ids1b.jsonl --json > '$OUT/rk-score.log' 2>&1"
tail -3 "$OUT/rk-score.log"
echo "== scoring: transformers (cuda, bf16)"
timeout 150 "$PY" scripts/bench_transformers.py --model /tmp/rm1b --ids /tmp/ids1b.jsonl --batch-size 16 --batch-tokens 65536 --device cuda --dtype bfloat16 --repeats 3 > "$OUT/pt-score.log" 2>&1
tail -2 "$OUT/pt-score.log"
fi

echo "== training step: rewardkit (cuda, bf16 compute, f32 master weights and AdamW state)"
peak_during "$OUT/rk-train.log" sh -c "timeout 150 '$B/rewardkit' bench-train --model /tmp/rm1b --input $DATA --limit 64 --batch-pairs 4 --max-length 256 --steps 6 --device cuda --dtype bf16 --dump-ids /tmp/pairs1b.jsonl --json > '$OUT/rk-train.log' 2>&1"
tail -3 "$OUT/rk-train.log"
echo "== training step: transformers (cuda, bf16 autocast over f32 weights, AdamW)"
timeout 150 "$PY" scripts/bench_transformers_train.py --model /tmp/rm1b --ids /tmp/pairs1b.jsonl --batch-pairs 4 --steps 6 --device cuda --dtype bfloat16 > "$OUT/pt-train.log" 2>&1
tail -2 "$OUT/pt-train.log"

"$PY" scripts/gpu_summary.py "$OUT" /tmp/rm1b/config.json | tee "$OUT/summary.md"
