#!/usr/bin/env python3
"""Checks that `peft` loads an adapter rewardkit trained (`rewardkit train --trainable lora`)
and scores as rewardkit does: the base model in transformers' LlamaForSequenceClassification,
the adapter through PeftModel.from_pretrained, float32, every `ids` row of a JSONL file, against
the rewards `rewardkit score --adapter` printed for the same file. Exits non-zero beyond `--tol`.

    rewardkit score --model BASE --adapter ADAPTER --input ids.jsonl > scores.jsonl
    python scripts/check_peft_roundtrip.py --base BASE --adapter ADAPTER --ids ids.jsonl --scores scores.jsonl

Needs torch (CPU), transformers and peft; tests/it/peft.rs runs it when REWARDKIT_TORCH_PYTHON
names such a Python.
"""
import argparse
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--scores", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    base = AutoModelForSequenceClassification.from_pretrained(args.base, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    rows = [json.loads(line) for line in open(args.ids) if line.strip()]
    want = [json.loads(line)["reward"] for line in open(args.scores) if line.strip()]
    worst = 0.0
    with torch.no_grad():
        for row, w in zip(rows, want):
            got = float(model(input_ids=torch.tensor([row["ids"]])).logits[0, 0])
            worst = max(worst, abs(got - w))
    print(f"peft vs rewardkit over {len(rows)} sequences: max |diff| {worst:.2e}")
    sys.exit(0 if worst <= args.tol and len(rows) == len(want) > 0 else 1)


if __name__ == "__main__":
    main()
