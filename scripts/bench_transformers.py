#!/usr/bin/env python3
"""Scoring throughput of transformers (PyTorch, fp32, CPU by default) on exactly the token ids
`rewardkit bench --dump-ids` scored, batched the same way (longest first, at most
--batch-size rows and --batch-tokens padded tokens per forward pass, right padding), so the
two tables compare like for like.

    rewardkit bench --model M --input F --threads 2 --batch-size 16 --dump-ids /tmp/ids.jsonl
    python scripts/bench_transformers.py --model M --ids /tmp/ids.jsonl --threads 2 --batch-size 16

Needs torch and transformers (pip install torch transformers).
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForSequenceClassification


def plan_batches(lengths, batch_size, budget):
    """The same greedy plan as rewardkit's score::plan_batches."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = []
    for i in order:
        b = batches[-1] if batches else None
        if b is not None and (batch_size == 0 or len(b) < batch_size) and (len(b) + 1) * lengths[b[0]] <= budget:
            b.append(i)
        else:
            batches.append([i])
    return batches


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="JSONL of token-id arrays from rewardkit bench --dump-ids")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=0)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    seqs = [json.loads(line) for line in open(args.ids)]
    lengths = [len(s) for s in seqs]
    tokens = sum(lengths)
    batches = plan_batches(lengths, args.batch_size, args.batch_tokens)
    tensors = []
    for b in batches:
        t = max(lengths[i] for i in b)
        ids = torch.full((len(b), t), pad, dtype=torch.long)
        mask = torch.zeros((len(b), t), dtype=torch.long)
        for r, i in enumerate(b):
            ids[r, : lengths[i]] = torch.tensor(seqs[i])
            mask[r, : lengths[i]] = 1
        tensors.append((ids.to(args.device), mask.to(args.device)))

    def run():
        out = []
        with torch.inference_mode():
            for ids, mask in tensors:
                out.append(model(input_ids=ids, attention_mask=mask).logits)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    with torch.inference_mode():
        model(input_ids=tensors[-1][0], attention_mask=tensors[-1][1])  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(max(1, args.repeats)):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    n = len(seqs)
    print("transformers scoring benchmark")
    print(f"  model     {args.model} ({model.config.model_type}, {sum(p.numel() for p in model.parameters())} params, "
          f"{args.dtype}, {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__})")
    print(f"  input     {args.ids}: {n} sequences, {tokens} tokens")
    print(f"  batching  {args.batch_size or 'no'} sequences max, {args.batch_tokens} padded tokens max per forward pass")
    print()
    print(f"  {'run':<8} {'seconds':>10} {'pairs/s':>12} {'tokens/s':>12}")
    for i, t in enumerate(times):
        print(f"  {i + 1:<8} {t:>10.3f} {n / t:>12.2f} {tokens / t:>12.0f}")
    print(f"  {'median':<8} {median:>10.3f} {n / median:>12.2f} {tokens / median:>12.0f}")
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else 0
    print(json.dumps(dict(engine="transformers", sequences=n, tokens=tokens, threads=torch.get_num_threads(),
                          median_seconds=median, pairs_per_s=n / median, tokens_per_s=tokens / median, peak_bytes=peak)))


if __name__ == "__main__":
    main()
