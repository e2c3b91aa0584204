#!/usr/bin/env python3
"""Swap chosen and rejected on a random share of a preference file's rows (label noise for the
vote experiments) and record which source lines were swapped.

Usage: inject_flips.py IN.jsonl[.gz] OUT.jsonl FLIPPED.json [--rate 0.2] [--seed 0]
Rows keep their order, so the vote file's `line` field names the same row in both files.
Rows without both fields are copied unchanged and never counted as flipped.
"""
import argparse, gzip, json, random

ap = argparse.ArgumentParser()
ap.add_argument("src"); ap.add_argument("out"); ap.add_argument("flipped")
ap.add_argument("--rate", type=float, default=0.2); ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
opener = gzip.open if a.src.endswith(".gz") else open
with opener(a.src, "rt", encoding="utf-8") as f:
    lines = f.read().splitlines()
rows = [json.loads(l) for l in lines]
eligible = [i for i, r in enumerate(rows) if "chosen" in r and "rejected" in r]
rng = random.Random(a.seed)
flip = set(rng.sample(eligible, round(a.rate * len(eligible))))
with open(a.out, "w", encoding="utf-8") as f:
    for i, r in enumerate(rows):
        if i in flip:
            r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
json.dump({"rate": a.rate, "seed": a.seed, "rows": len(rows), "lines": sorted(i + 1 for i in flip)},
          open(a.flipped, "w"))
print(f"flipped {len(flip)} of {len(eligible)} rows -> {a.out}")
