#!/usr/bin/env python3
"""Make the PEFT fixtures under tests/fixtures/peft/: LoRA adapters saved by `peft` over the
llama_gqa parity model (tests/fixtures/parity/llama_gqa), and the rewards transformers + peft
give with each adapter (float32), so that tests/it/peft.rs checks that rewardkit loads what
TRL + PEFT train, to 1e-4.

Adapters (random A and B: `init_lora_weights=False`, so that every factor matters):
- all7: r 4, alpha 8, every projection (q/k/v/o/gate/up/down), the head trained fully
  (`modules_to_save=["score"]`, what TRL's RewardTrainer gets with task_type SEQ_CLS);
- qv_rslora: r 2, alpha 4, q and v only, rank-stabilised scaling (alpha / sqrt(r)).

Needs torch (CPU), transformers and peft (not needed by CI, which reads the committed fixtures):
    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch transformers peft
    /tmp/torchenv/bin/python scripts/make_peft_goldens.py
"""
import json
import os
import shutil

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BASE = os.path.join(ROOT, "tests", "fixtures", "parity", "llama_gqa")
OUT = os.path.join(ROOT, "tests", "fixtures", "peft")

ADAPTERS = {
    "all7": dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "qv_rslora": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], use_rslora=True),
}


def rewards(model, cases):
    out = []
    with torch.no_grad():
        for ids in cases:
            logits = model(input_ids=torch.tensor([ids])).logits
            out.append(float(logits[0, 0]))
    return out


def main():
    torch.manual_seed(0)
    base_goldens = json.load(open(os.path.join(BASE, "goldens.json")))
    cases = [c["ids"] for c in base_goldens["id_cases"]]
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    goldens = {"base": "parity/llama_gqa", "transformers": transformers.__version__, "peft": peft.__version__,
               "torch": torch.__version__, "cases": cases, "adapters": {}}
    for name, kw in ADAPTERS.items():
        model = AutoModelForSequenceClassification.from_pretrained(BASE, dtype=torch.float32)
        model.eval()
        base_rewards = rewards(model, cases)
        cfg = LoraConfig(task_type="SEQ_CLS", lora_dropout=0.0, init_lora_weights=False, modules_to_save=["score"], **kw)
        pm = get_peft_model(model, cfg)
        # The head copy that trains with the adapter: moved away from the base head.
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "modules_to_save" in n:
                    p.add_(0.1 * torch.randn_like(p))
        pm.eval()
        with_adapter = rewards(pm, cases)
        d = os.path.join(OUT, name)
        pm.save_pretrained(d)
        for f in os.listdir(d):
            if f not in ("adapter_config.json", "adapter_model.safetensors"):
                os.remove(os.path.join(d, f))
        # No machine's path in a committed file.
        cfg_path = os.path.join(d, "adapter_config.json")
        saved = json.load(open(cfg_path))
        saved["base_model_name_or_path"] = "tests/fixtures/parity/llama_gqa"
        with open(cfg_path, "w") as f:
            json.dump(saved, f, indent=2, sort_keys=True)
        merged = pm.merge_and_unload()
        merged_rewards = rewards(merged, cases)
        assert max(abs(a - b) for a, b in zip(with_adapter, merged_rewards)) < 1e-4
        assert max(abs(a - b) for a, b in zip(with_adapter, base_rewards)) > 1e-2, "the adapter changes rewards"
        goldens["adapters"][name] = {"rewards": with_adapter, "base_rewards": base_rewards}
        print(name, "rewards", [round(x, 4) for x in with_adapter[:4]], "base", [round(x, 4) for x in base_rewards[:4]])
    with open(os.path.join(OUT, "goldens.json"), "w") as f:
        json.dump(goldens, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
