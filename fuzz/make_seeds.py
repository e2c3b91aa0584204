#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/seed-*: small valid
files of every format (and the repository's own fixtures), from which the fuzzers mutate.
Run once; the fuzzers then grow (and `cargo fuzz cmin` minimises) the committed corpora."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


SMALL = {"model_type": "llama", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8,
         "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}

# config.json
put("config_json", "small", json.dumps(SMALL))
put("config_json", "qwen2", json.dumps(dict(SMALL, model_type="qwen2", eos_token_id=[3, 5], rope_theta=1e6)))
put("config_json", "llama3-rope", json.dumps(dict(SMALL, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})))
put("config_json", "ensemble", json.dumps(dict(SMALL, rewardkit_ensemble_heads=3, pad_token_id=0, max_position_embeddings=10485760)))
for fixture in sorted(os.listdir(os.path.join(REPO, "tests/fixtures/parity"))):
    with open(os.path.join(REPO, "tests/fixtures/parity", fixture, "config.json"), "rb") as f:
        put("config_json", fixture, f.read())


# safetensors: every tensor of SMALL's reward model (f32 and bf16)
def safetensors(tensors, dtype="F32"):
    size = {"F32": 4, "BF16": 2}[dtype]
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        raw = b"".join(struct.pack("<f", 0.01 * (i % 7))[4 - size:] for i in range(n))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


H, I, V, D = 4, 8, 8, 2
small_tensors = [("model.embed_tokens.weight", [V, H]), ("model.norm.weight", [H]), ("score.weight", [1, H])]
for rest, shape in [("input_layernorm.weight", [H]), ("self_attn.q_proj.weight", [2 * D, H]), ("self_attn.k_proj.weight", [D, H]),
                    ("self_attn.v_proj.weight", [D, H]), ("self_attn.o_proj.weight", [H, 2 * D]), ("post_attention_layernorm.weight", [H]),
                    ("mlp.gate_proj.weight", [I, H]), ("mlp.up_proj.weight", [I, H]), ("mlp.down_proj.weight", [H, I])]:
    small_tensors.append(("model.layers.0." + rest, shape))
put("safetensors_header", "small-f32", safetensors(small_tensors))
put("safetensors_header", "small-bf16", safetensors(small_tensors, "BF16"))
put("safetensors_header", "no-head", safetensors(small_tensors[:2] + small_tensors[3:]))

# tokenizer.json
with open(os.path.join(REPO, "tests/fixtures/parity/llama_gqa/tokenizer.json"), "rb") as f:
    put("tokenizer_json", "llama-gqa", f.read())
bpe = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [{"id": 0, "content": "<s>", "single_word": False, "lstrip": False,
       "rstrip": False, "normalized": False, "special": True}], "normalizer": None,
       "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
       "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                          "pair": [{"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
       "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
       "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                 "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                 "vocab": {"<s>": 0, "h": 1, "i": 2, "hi": 3, "Ġ": 4, "Ġh": 5, "e": 6, "l": 7},
                 "merges": ["h i", "Ġ h"]}}
put("tokenizer_json", "tiny-bpe", json.dumps(bpe))


# GGUF v3: a one-layer llama with SMALL's shapes, F32 tensors, a BPE vocabulary
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return gstr(key) + struct.pack("<I", vtype) + payload


tokens = ["<s>", "</s>", "h", "i", "hi", "Ġ", "Ġh", "e"]
meta = [
    kv("general.architecture", 8, gstr("llama")),
    kv("general.name", 8, gstr("tiny")),
    kv("llama.attention.head_count", 4, struct.pack("<I", 2)),
    kv("llama.attention.head_count_kv", 4, struct.pack("<I", 1)),
    kv("llama.embedding_length", 4, struct.pack("<I", H)),
    kv("llama.block_count", 4, struct.pack("<I", 1)),
    kv("llama.feed_forward_length", 4, struct.pack("<I", I)),
    kv("llama.context_length", 4, struct.pack("<I", 64)),
    kv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)),
    kv("tokenizer.ggml.model", 8, gstr("gpt2")),
    kv("tokenizer.ggml.pre", 8, gstr("smollm")),
    kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, len(tokens)) + b"".join(gstr(t) for t in tokens)),
    kv("tokenizer.ggml.merges", 9, struct.pack("<IQ", 8, 2) + gstr("h i") + gstr("Ġ h")),
    kv("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, len(tokens)) + struct.pack("<%di" % len(tokens), 3, 3, *([1] * 6))),
    kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 0)),
    kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 1)),
    kv("tokenizer.ggml.add_bos_token", 7, b"\x01"),
]
gg_tensors = [("token_embd.weight", [V, H]), ("output_norm.weight", [H]), ("blk.0.attn_norm.weight", [H]), ("blk.0.attn_q.weight", [2 * D, H]),
              ("blk.0.attn_k.weight", [D, H]), ("blk.0.attn_v.weight", [D, H]), ("blk.0.attn_output.weight", [H, 2 * D]),
              ("blk.0.ffn_norm.weight", [H]), ("blk.0.ffn_gate.weight", [I, H]), ("blk.0.ffn_up.weight", [I, H]), ("blk.0.ffn_down.weight", [H, I])]
infos, data = b"", b""
for name, shape in gg_tensors:
    n = 1
    for d in shape:
        n *= d
    infos += gstr(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in reversed(shape)) + struct.pack("<IQ", 0, len(data))
    data += struct.pack("<%df" % n, *[0.01 * (i % 5) for i in range(n)])
    data += b"\0" * (-len(data) % 32)
head = b"GGUF" + struct.pack("<IQQ", 3, len(gg_tensors), len(meta)) + b"".join(meta) + infos
head += b"\0" * (-len(head) % 32)
put("gguf_metadata", "tiny-llama", head + data)

# JSONL rows
rows = [
    {"chosen": "\n\nHuman: hi\n\nAssistant: good", "rejected": "\n\nHuman: hi\n\nAssistant: bad"},
    {"prompt": "Q", "chosen": "a", "rejected": "b", "mean preference difference": -0.5, "label": 1, "alpha": 0.1},
    {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "good"}],
     "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bad"}]},
    {"prompt": [{"role": "user", "content": "hi"}], "chosen": "good", "rejected": "bad"},
    {"prompt": "p", "response": "r"}, {"text": "x"}, {"ids": [1, 2, 3]},
    {"prompt": "p", "responses": ["a", "b", "c"]},
]
for i, row in enumerate(rows):
    put("jsonl_row", "row%d" % i, json.dumps(row))

# trainer_state.json, as Trainer::save writes it
state = {"step": 3, "micro_step": 6, "config": {
    "optimizer": {"lr": 5e-6, "beta1": 0.9, "beta2": 0.95, "eps": 1e-6, "weight_decay": 0.0},
    "schedule": {"kind": "inverse_sqrt", "warmup_steps": 0, "total_steps": 0}, "max_grad_norm": 1.0, "grad_accum": 2,
    "dropout": 0.0, "seed": 0, "trainable": {"kind": "top_layers", "layers": 1},
    "noise": {"flip": {"rule": "below", "threshold": 0.0}, "smooth": {"rule": "constant", "alpha": 0.1},
              "margin": {"scale": 0.5, "mode": "raw"}, "centering": 0.0},
    "meta_lr": 5e-6, "contrastive": {"kind": {"kind": "swav", "prototypes": 20, "temperature": 0.1, "sinkhorn_iterations": 3, "epsilon": 0.05},
                                     "items": "differences", "beta": 0.5, "dropout": 0.05}}}
put("trainer_state", "full", json.dumps(state, indent=2))
put("trainer_state", "plain", json.dumps(dict(state, config=dict(state["config"], contrastive=None))))
