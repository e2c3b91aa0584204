#!/usr/bin/env python3
"""Training-step throughput of transformers (PyTorch) on the pairs `rewardkit bench-train
--dump-ids` used, in the same order and batch size: forward on chosen+rejected, Bradley-Terry
loss, backward, AdamW. float32, or bf16 autocast over float32 weights (--dtype bfloat16).

    python scripts/bench_transformers_train.py --model M --ids /tmp/pairs.jsonl --batch-pairs 8 --steps 8
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--batch-pairs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, dtype=torch.float32).to(dev).train()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.0)
    pairs = [json.loads(line) for line in open(args.ids)]
    n = len(pairs)

    def batch(step):
        rows = [pairs[(step * args.batch_pairs + i) % n] for i in range(args.batch_pairs)]
        seqs = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
        t = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), t), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), t), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids.to(dev), mask.to(dev), sum(len(s) for s in seqs)

    def step(s):
        ids, mask, tokens = batch(s)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            r = model(input_ids=ids, attention_mask=mask).logits[:, 0].float()
        k = args.batch_pairs
        loss = F.softplus(-(r[:k] - r[k:])).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return tokens

    step(0)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, tokens = [], 0
    for s in range(1, args.steps + 1):
        t0 = time.perf_counter()
        tokens += step(s)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    total = sum(times)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else 0
    print("transformers training benchmark")
    print(f"  model     {args.model} ({sum(p.numel() for p in model.parameters())} params, {args.dtype}, {args.device}, torch {torch.__version__})")
    print(f"  steps     {args.steps} x {args.batch_pairs} pairs, {tokens} tokens")
    print(f"  median step {sorted(times)[len(times) // 2]:.4f}s   pairs/s {args.steps * args.batch_pairs / total:.2f}   tokens/s {tokens / total:.0f}")
    print(json.dumps(dict(engine="transformers", steps=args.steps, batch_pairs=args.batch_pairs, tokens=tokens, seconds=total,
                          pairs_per_s=args.steps * args.batch_pairs / total, tokens_per_s=tokens / total, peak_bytes=peak)))


if __name__ == "__main__":
    main()
