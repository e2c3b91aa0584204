#!/usr/bin/env python3
"""Summary table of scripts/gpu_check.sh: tokens/s, ratio, peak GPU memory, and the fraction of
the GPU's dense bf16 peak each engine reaches (model FLOPs: 2N per token forward plus attention,
3x that for a training step)."""
import json
import sys

out, config = sys.argv[1], json.load(open(sys.argv[2]))
device = open(f"{out}/device.txt").read().strip()
PEAK = 989e12 if "H100" in device and "PCIe" not in device else 756e12 if "H100" in device else 989e12
if "H200" in device:
    PEAK = 989e12


def last_json(path):
    for line in reversed(open(path).read().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def peak_mib(path):
    for line in open(path).read().splitlines():
        if line.startswith("peak_mib"):
            return float(line.split()[1])
    return float("nan")


h, L, i, v = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"], config["vocab_size"]
kv = config["num_key_value_heads"] * h // config["num_attention_heads"]
n_nonembed = L * (2 * h * h + 2 * h * kv + 3 * h * i)
rows = []
for kind, mult in (("score", 1), ("train", 3)):
    rk, pt = last_json(f"{out}/rk-{kind}.log"), last_json(f"{out}/pt-{kind}.log")
    if not rk or not pt:
        rows.append(f"| {kind} | failed | see logs | | | | |")
        continue
    flops_per_token = mult * (2 * n_nonembed + 4 * L * h * 256)  # attention at ~256 tokens context
    frac = lambda tps: 100 * tps * flops_per_token / PEAK
    rows.append(f"| {kind} | {rk['tokens_per_s']:.0f} | {pt['tokens_per_s']:.0f} | {rk['tokens_per_s'] / pt['tokens_per_s']:.2f}x | "
                f"{peak_mib(f'{out}/rk-{kind}.log'):.0f} MiB | {peak_mib(f'{out}/pt-{kind}.log'):.0f} MiB ({pt.get('peak_bytes', 0) / 2**20:.0f} MiB in torch's allocator) | "
                f"{frac(rk['tokens_per_s']):.1f}% / {frac(pt['tokens_per_s']):.1f}% |")
print(f"\n{device}; model: {L} layers, hidden {h}, {n_nonembed / 1e9:.2f}B non-embedding parameters, bf16; bf16 dense peak assumed {PEAK / 1e12:.0f} TFLOP/s\n")
print("| job | rewardkit tokens/s | transformers tokens/s | ratio | rewardkit peak memory (nvidia-smi) | transformers peak memory (nvidia-smi) | % of bf16 peak (rk / pt) |")
print("|---|---|---|---|---|---|---|")
print("\n".join(rows))
