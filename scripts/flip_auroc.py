#!/usr/bin/env python3
"""AUROC of a vote at finding injected flips: pairs with lower mean strength should be the
flipped ones (scripts/inject_flips.py wrote which source lines were flipped).

Usage: flip_auroc.py VOTE.jsonl FLIPPED.json
Prints the AUROC (ties count half), the number of pairs voted and flipped among them, and the
precision and recall of `mean < 0` (the paper's Flip rule).
"""
import json, sys

vote = [json.loads(l) for l in open(sys.argv[1])]
flipped = set(json.load(open(sys.argv[2]))["lines"])
scored = [(-r["mean preference difference"], r["line"] in flipped) for r in vote]
pos = [s for s, f in scored if f]
neg = [s for s, f in scored if not f]
# Mann-Whitney U by ranks (average ranks for ties).
order = sorted(range(len(scored)), key=lambda i: scored[i][0])
ranks = [0.0] * len(scored)
i = 0
while i < len(order):
    j = i
    while j + 1 < len(order) and scored[order[j + 1]][0] == scored[order[i]][0]:
        j += 1
    for k in range(i, j + 1):
        ranks[order[k]] = (i + j) / 2 + 1
    i = j + 1
rank_sum = sum(r for r, (_, f) in zip(ranks, scored) if f)
auroc = (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
flagged = [f for s, f in scored if s > 0]
print(json.dumps({
    "auroc": round(auroc, 4), "pairs": len(scored), "flipped": len(pos),
    "flagged_mean_below_0": len(flagged),
    "precision": round(sum(flagged) / max(1, len(flagged)), 4),
    "recall": round(sum(flagged) / max(1, len(pos)), 4),
    "voters_per_pair": sorted({r.get("voters") for r in vote}),
}))
