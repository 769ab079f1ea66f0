#!/usr/bin/env python3
"""A smooth measure of in-context recall, for watching it emerge during training:

    /usr/bin/python3 tools/train/recall_signal.py tools/train/out/demo/checkpoint.pt [--n 40]

Greedy recall accuracy stays at zero until the model is nearly right; this shows the skill
earlier. For n facts it scores the value tokens of the assistant's reply twice: once with
the value the user stated ("told") and once with another value of the same kind that never
appeared ("other"), in three settings: the acknowledgement right after the fact, a
question right after it, and a question after a few turns of small talk. Without memory
the two sums are equal on average; the gap (other - told, nats per fact) is how much the
model's prediction of the value comes from what it was told.
"""
from __future__ import annotations

import argparse
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from chat_format import ASSISTANT, encode_message, encode_text  # noqa: E402
from conversations import ACKS, FACT_KEYS, FACTS, SMALL_TALK, _answer, _ask, _state  # noqa: E402
from recall_eval import load_model  # noqa: E402


@torch.no_grad()
def value_nll(model, context: list[int], value: str) -> float:
    ids = context + encode_text(value)
    logits, _ = model(torch.tensor([ids[:-1]]))
    s = len(context)
    return float(F.cross_entropy(logits[0, s - 1:], torch.tensor(ids[s:]), reduction="sum"))


def context(r: random.Random, key: str, told: str, setting: str) -> list[int]:
    """The conversation up to the reply's value, for one setting."""
    ids = encode_message("user", _state(r, key, told))
    if setting == "ack":
        head = r.choice(ACKS).format(a=FACTS[key][3]).split("{v}")[0]
        return ids + [ASSISTANT] + encode_text(head)
    ids += encode_message("assistant", r.choice(ACKS).format(a=_answer(key, told)))
    for _ in range(3 if setting == "after small talk" else 0):
        q, a = r.choice(SMALL_TALK)
        ids += encode_message("user", q) + encode_message("assistant", a)
    ids += encode_message("user", _ask(r, key))
    return ids + [ASSISTANT] + encode_text(FACTS[key][3].split("{v}")[0])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="model directory or trainer checkpoint (.pt)")
    ap.add_argument("--n", type=int, default=40, help="facts per setting")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    model = load_model(a.model)
    model.eval()
    print(f"| setting | told (nats/fact) | other (nats/fact) | gap |\n|---|---|---|---|")
    for setting in ("ack", "question", "after small talk"):
        told_sum = other_sum = 0.0
        for i in range(a.n):
            r = random.Random(f"signal/{i}")
            key = r.choice(FACT_KEYS)
            told = FACTS[key][0](r)
            other = FACTS[key][0](r)
            while other == told:
                other = FACTS[key][0](r)
            ctx = context(random.Random(f"signal/{i}/{setting}"), key, told, setting)
            told_sum += value_nll(model, ctx, told)
            other_sum += value_nll(model, ctx, other)
        print(f"| {setting} | {told_sum / a.n:.2f} | {other_sum / a.n:.2f} | {(other_sum - told_sum) / a.n:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
