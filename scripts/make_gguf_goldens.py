#!/usr/bin/env python3
"""Check rewardkit's GGUF import against transformers, and write the goldens tests/gguf.rs uses.

1. transformers loads the GGUF file itself (its own dequantization and tokenizer conversion).
2. transformers loads the directory `rewardkit import-gguf` wrote.
3. Both give next-token logits for a few prompts; they must agree (printed).
4. Token ids from transformers' GGUF tokenizer and the last-position logits (top 20 and summary
   statistics) go to tests/fixtures/gguf/smollm2_goldens.json.

    rewardkit import-gguf --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/smollm2
    python scripts/make_gguf_goldens.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --converted /tmp/smollm2

Needs torch, transformers, gguf (pip install torch transformers gguf).
"""
import argparse
import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf", "smollm2_goldens.json")

TEXTS = [
    "Hello, world!",
    "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
    "Numbers 12345 and 3.14159, emoji 🙂, accents café naïve.",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x ** 2  # square\n",
]
PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "\n\nHuman: How do I bake bread?\n\nAssistant:",
]


@torch.no_grad()
def last_logits(model, ids):
    return model(torch.tensor([ids])).logits[0, -1].float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--converted", required=True)
    args = ap.parse_args()
    d, f = os.path.split(os.path.abspath(args.gguf))
    ref_tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    ref = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    ours_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.converted, "tokenizer.json"))
    ours = AutoModelForCausalLM.from_pretrained(args.converted, dtype=torch.float32).eval()
    print(f"transformers {transformers.__version__} loaded the converted directory: {type(ours).__name__}")

    token_cases = []
    for t in TEXTS:
        a = ref_tok(t, add_special_tokens=False)["input_ids"]
        b = ours_tok(t, add_special_tokens=False)["input_ids"]
        print(f"tokenizer {'same' if a == b else 'DIFFERENT'}: {t[:40]!r} ({len(a)} tokens)")
        token_cases.append(dict(text=t, ids=a))

    logit_cases = []
    for p in PROMPTS:
        ids = ref_tok(p, add_special_tokens=False)["input_ids"]
        a, b = last_logits(ref, ids), last_logits(ours, ids)
        diff = (a - b).abs().max().item()
        print(f"logits max |diff| {diff:.2e} (scale {a.abs().max().item():.1f}), argmax {a.argmax().item()} vs {b.argmax().item()}: {p[:30]!r}")
        top = torch.topk(a, 20)
        logit_cases.append(dict(prompt=p, ids=ids, top_ids=top.indices.tolist(), top_logits=top.values.tolist(),
                                mean=a.mean().item(), std=a.std().item(), logsumexp=torch.logsumexp(a, 0).item()))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        json.dump(dict(source=f, transformers=transformers.__version__, torch=torch.__version__,
                       token_cases=token_cases, logit_cases=logit_cases), fh, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
