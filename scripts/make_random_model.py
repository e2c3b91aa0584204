#!/usr/bin/env python3
"""A randomly initialised Llama-shaped reward model (LlamaForSequenceClassification) for
benchmarks, saved by transformers so that rewardkit and transformers read the same checkpoint.

    python scripts/make_random_model.py --shape smollm2-135m --tokenizer models/tiny-rm/tokenizer.json --out /tmp/rm135

Shapes: smollm2-135m (SmolLM2-135M: 30 layers, hidden 576, GQA 9/3), llama-1b (Llama-3.2-1B
sized: 16 layers, hidden 2048, GQA 32/8, vocab 128256). The tokenizer is copied in; its ids
only need to fall inside the vocabulary.
"""
import argparse
import os
import shutil

import torch
import transformers

SHAPES = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                     rope_theta=500000.0, tie_word_embeddings=True),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="initialise on this device (cuda is much faster for 1B)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cfg = transformers.LlamaConfig(**SHAPES[args.shape], rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1,
                                   eos_token_id=2, num_labels=1, initializer_range=0.02)
    with torch.device(args.device):
        model = transformers.AutoModelForSequenceClassification.from_config(cfg).to(getattr(torch, args.dtype)).eval()
    model.save_pretrained(args.out)
    shutil.copy(args.tokenizer, os.path.join(args.out, "tokenizer.json"))
    print(f"wrote {args.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
