"""Score HH-RLHF pairs with rewardkit from Python, train a few steps, and vote.

    REWARDKIT_LIBRARY=target/release/librewardkit.so PYTHONPATH=bindings/python \
        python examples/python/score.py models/tiny-rm
"""
import gzip
import json
import os
import sys

import rewardkit

MODEL = sys.argv[1] if len(sys.argv) > 1 else "models/tiny-rm"
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "data", "hh-rlhf", "harmless-base-test.jsonl.gz")


def split(dialogue):
    at = dialogue.rfind("\n\nAssistant:") + len("\n\nAssistant:")
    return dialogue[:at], dialogue[at:]


with gzip.open(DATA, "rt") as f:
    rows = [json.loads(line) for _, line in zip(range(8), f)]
prompts = [split(r["chosen"])[0] for r in rows]
chosen = [split(r["chosen"])[1] for r in rows]
rejected = [split(r["rejected"])[1] for r in rows]

model = rewardkit.Model(MODEL, n_threads=2)
print("rewardkit", rewardkit.version(), model.info()["architecture"])
rc, rr = model.score(prompts, chosen), model.score(prompts, rejected)
for i in range(len(rows)):
    print("pair %d  chosen %+.4f  rejected %+.4f" % (i, rc[i], rr[i]))

trainer = rewardkit.Trainer(model, lr=1e-4, schedule="constant", trainable="top_layers", top_layers=1)
for step in range(3):
    s = trainer.step(prompts, chosen, rejected)
    print("step %d loss %.4f accuracy %.2f" % (s["step"], s["loss"], s["accuracy"]))
mean, std = rewardkit.vote([model], prompts, chosen, rejected)
print("vote mean %s" % " ".join("%+.3f" % x for x in mean))
