#!/usr/bin/env bash
# rewardkit against transformers (PyTorch) on this machine, side by side in one run, on the
# same token ids: scoring (rewardkit's packed token-budget batches, with and without the
# shared prompt of a pair computed once; transformers with length-sorted batches of 8, its
# best setting here) and a full training step (forward, backward, AdamW over every
# parameter), then the ratios.
#
#   scripts/bench_vs_transformers.sh MODEL_DIR [PYTHON]
#
# MODEL_DIR: a Hugging Face checkpoint (e.g. SmolLM2-135M imported with `rewardkit
# import-gguf`). PYTHON: an interpreter with torch and transformers (default python3).
# Environment: PAIRS (default 64) bundled HH-RLHF pairs scored, TRAIN_PAIRS (4) pairs per
# training step, STEPS (6) timed training steps, THREADS (0 = all cores).
set -euo pipefail
model=${1:?usage: scripts/bench_vs_transformers.sh MODEL_DIR [PYTHON]}
py=${2:-python3}
pairs=${PAIRS:-64}
train_pairs=${TRAIN_PAIRS:-4}
steps=${STEPS:-6}
threads=${THREADS:-0}
root=$(cd "$(dirname "$0")/.." && pwd)
data="$root/data/hh-rlhf/harmless-base-test.jsonl.gz"
rk=${REWARDKIT_BIN:-$root/target/release/rewardkit}
[ -x "$rk" ] || (cd "$root" && cargo build --release --bin rewardkit)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
# Scoring: the first $pairs pairs, chosen and rejected (2 x $pairs sequences).
"$rk" bench --model "$model" --input "$data" --limit "$pairs" --threads "$threads" \
    --dump-ids "$tmp/ids.jsonl" --json | tee "$tmp/score_rk.txt"
"$rk" bench --model "$model" --input "$data" --limit "$pairs" --threads "$threads" \
    --no-shared-prefixes --json | tee "$tmp/score_rk_full.txt"
"$py" "$root/scripts/bench_transformers.py" --model "$model" --ids "$tmp/ids.jsonl" \
    --threads "$threads" --batch-size 8 | tee "$tmp/score_tf.txt"
# Training: the same steps, pairs in the same order.
"$rk" bench-train --model "$model" --input "$data" --limit "$pairs" --threads "$threads" \
    --batch-pairs "$train_pairs" --steps "$steps" --dump-ids "$tmp/pairs.jsonl" --json \
    | tee "$tmp/train_rk.txt"
"$py" "$root/scripts/bench_transformers_train.py" --model "$model" --ids "$tmp/pairs.jsonl" \
    --threads "$threads" --batch-pairs "$train_pairs" --steps "$steps" | tee "$tmp/train_tf.txt"

"$py" - "$tmp" <<'EOF'
import json, sys, pathlib
tmp = pathlib.Path(sys.argv[1])
def rate(name):
    lines = [l for l in (tmp / name).read_text().splitlines() if l.startswith("{")]
    return json.loads(lines[-1])["tokens_per_s"]
print("\n| work | rewardkit tok/s | transformers tok/s | ratio |")
print("|---|---|---|---|")
for what, rk, tf in [("scoring (packed, shared prompts computed once)", "score_rk.txt", "score_tf.txt"),
                     ("scoring (packed, every sequence in full)", "score_rk_full.txt", "score_tf.txt"),
                     ("training step (all parameters, AdamW)", "train_rk.txt", "train_tf.txt")]:
    a, b = rate(rk), rate(tf)
    print(f"| {what} | {a:.0f} | {b:.0f} | {a / b:.2f}x |")
EOF
