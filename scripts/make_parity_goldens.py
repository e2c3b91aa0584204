#!/usr/bin/env python3
"""Make the parity fixtures under tests/fixtures/parity/: small random reward models of each
supported family, saved by transformers, and the rewards transformers'
*ForSequenceClassification gives them (float32). tests/parity.rs checks rewardkit against these
to 1e-4.

Needs torch and transformers (not needed by CI, which only reads the committed fixtures):
    python3 -m venv /opt/refvenv && /opt/refvenv/bin/pip install torch transformers
    /opt/refvenv/bin/python scripts/make_parity_goldens.py
"""
import gzip
import json
import os
import shutil
import sys

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "parity")
HH = os.path.join(ROOT, "data", "hh-rlhf", "harmless-base-test.jsonl.gz")
VOCAB = 512

BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6, initializer_range=0.2, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, num_labels=1)

# name -> (config class, overrides, stored dtype, shard size or None)
MODELS = {
    # GQA 4/2, untied, f32: the tokenizer/text cases live here too.
    "llama_gqa": (transformers.LlamaConfig, dict(tie_word_embeddings=False), torch.float32, None),
    # tied embeddings, attention and MLP bias, llama3 rope scaling, sharded checkpoint.
    "llama_tied_bias": (transformers.LlamaConfig, dict(
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True, num_key_value_heads=4,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=32)),
        torch.float32, "150KB"),
    # q/k/v bias, theta 1e6, GQA 4/1, stored in bf16.
    "qwen2_bias": (transformers.Qwen2Config, dict(num_key_value_heads=1, rope_theta=1e6,
                                                  tie_word_embeddings=True), torch.bfloat16, None),
    # sliding window of 8 tokens, stored in f16.
    "mistral_window": (transformers.MistralConfig, dict(sliding_window=8), torch.float16, None),
    # pad == eos: the reward is read before trailing EOS tokens.
    "llama_pad_is_eos": (transformers.LlamaConfig, dict(pad_token_id=2, num_key_value_heads=1), torch.float32, None),
}


def hh_texts(n):
    with gzip.open(HH, "rt") as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    return [r["chosen"] for r in rows] + [r["rejected"] for r in rows]


def make_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, show_progress=False,
                                  special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(hh_texts(300), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def id_cases(gen, cfg):
    """Token sequences: varied lengths, a sequence longer than the sliding window, and the
    pad/eos corner cases (trailing EOS, EOS in the middle, trailing pad)."""
    rand = lambda n: torch.randint(3, VOCAB, (n,), generator=gen).tolist()
    cases = [[1] + rand(n) for n in (1, 5, 17, 40)] + [rand(1), rand(3)]
    cases += [[1] + rand(6) + [2], [1] + rand(4) + [2, 2], [1] + rand(3) + [2] + rand(3), [1] + rand(5) + [0, 0]]
    return cases


def text_cases():
    with gzip.open(HH, "rt") as f:
        rows = [json.loads(line) for _, line in zip(range(8), f)]
    cases = []
    for i, r in enumerate(rows[-4:]):
        at = r["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
        cases.append(dict(prompt=r["chosen"][:at], response=r["chosen"][at:], max_length=[0, 24, 64, 0][i]))
    cases.append(dict(prompt="Hello", response=" world, ünïcödé ✓ \t tabs", max_length=0))
    return cases


@torch.no_grad()
def reward(model, ids):
    return model(torch.tensor([ids])).logits[0, 0].item()


def main():
    torch.manual_seed(0)
    shutil.rmtree(OUT, ignore_errors=True)
    tokenizer = make_tokenizer()
    for i, (name, (cls, overrides, dtype, shard)) in enumerate(MODELS.items()):
        cfg = cls(**{**BASE, **overrides})
        torch.manual_seed(100 + i)
        model = AutoModelForSequenceClassification.from_config(cfg).eval()
        path = os.path.join(OUT, name)
        model.to(dtype).save_pretrained(path, max_shard_size=shard or "50MB")
        # Reload in float32 so goldens see the stored (possibly rounded) weights.
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        gen = torch.Generator().manual_seed(7 + i)
        cases = [dict(ids=ids, reward=reward(model, ids)) for ids in id_cases(gen, cfg)]
        golden = dict(model=name, transformers=transformers.__version__, torch=torch.__version__,
                      stored_dtype=str(dtype).replace("torch.", ""), id_cases=cases)
        if name == "llama_gqa":
            tokenizer.save(os.path.join(path, "tokenizer.json"))
            fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(path, "tokenizer.json"))
            fast.truncation_side = "left"
            golden["text_cases"] = []
            for c in text_cases():
                kw = dict(truncation=True, max_length=c["max_length"]) if c["max_length"] else {}
                ids = fast(c["prompt"] + c["response"], **kw)["input_ids"]
                golden["text_cases"].append(dict(c, ids=ids, reward=reward(model, ids)))
        with open(os.path.join(path, "goldens.json"), "w") as f:
            json.dump(golden, f, indent=1)
        print(name, "ok", len(cases), "cases", file=sys.stderr)


if __name__ == "__main__":
    main()
