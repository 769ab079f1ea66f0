#!/usr/bin/env python3
"""Recall-vs-distance probes: write them (for the TypeScript runtime's script) and score a model.

    # write the shared probe file (deterministic; held-out prose from Persuasion)
    /usr/bin/python3 tools/train/recall_eval.py --write-probes tools/train/recall-probes.jsonl
    # score a model directory or a training checkpoint with greedy decoding in PyTorch
    /usr/bin/python3 tools/train/recall_eval.py --model models/demo --probes tools/train/recall-probes.jsonl

A probe passes when the greedy reply (up to <|end|> or 64 tokens) contains `expected`.
Probe fields: distance_tokens (tokens between the fact's message and the question's),
fact_key, expected, prompt_messages (apply the chat template, then the generation prompt).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))

import torch  # noqa: E402

from chat_format import END, decode, encode_messages  # noqa: E402
from conversations import COPY_PROBE_KINDS, ProseSampler, copy_probe, recall_probe  # noqa: E402
from prose_source import load_austen  # noqa: E402

DISTANCES = [100, 1000, 4000, 16000]
EVAL_BOOK = "persuasion"  # never used for training, so probes' filler is unseen text
PROBE_SEED = 20261122


def make_probes(distances=DISTANCES, per_distance=50, seed=PROBE_SEED, data_dir=None) -> list[dict]:
    books = load_austen(data_dir or os.path.join(HERE, "out", "data"))
    prose = ProseSampler([books[EVAL_BOOK]])
    out = []
    for d in distances:
        r = random.Random(f"{seed}/{d}")  # each distance its own stream: adding one changes no other
        out += [recall_probe(r, prose, d) for _ in range(per_distance)]
    return out


@torch.no_grad()
def greedy_reply(model, prompt: list[int], max_new: int = 64, chunk_len: int = 2048) -> str:
    state = None
    logits = None
    for s in range(0, len(prompt), chunk_len):  # prefill in pieces; the state carries across
        logits, state = model(torch.tensor([prompt[s:s + chunk_len]]), state, chunk=64)
    out = []
    for _ in range(max_new):
        nxt = int(logits[0, -1].argmax())
        if nxt == END:
            break
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]]), state)
    return decode(out)


def make_copy_probes(per_cell=25, seed=PROBE_SEED) -> list[dict]:
    """Exact short-range copying (conversations.copy_probe): per_cell probes for each kind of
    value and each place it is repeated (the acknowledgement, the answer right after)."""
    out = []
    for kind in COPY_PROBE_KINDS:
        for where in ("ack", "question"):
            r = random.Random(f"{seed}/copy/{kind}/{where}")
            out += [copy_probe(r, kind, where) for _ in range(per_cell)]
    return out


def score(model, probes: list[dict], log=None) -> dict:
    """{distance or kind: (passed, total)}"""
    model.eval()
    res: dict[int, list[int]] = {}
    for p in probes:
        reply = greedy_reply(model, encode_messages(p["prompt_messages"], add_generation_prompt=True))
        ok = p["expected"] in reply
        key = p.get("kind", p.get("distance_bucket", p["distance_tokens"]))
        res.setdefault(key, [0, 0])
        res[key][0] += int(ok)
        res[key][1] += 1
        if log:
            log(f"{p['distance_tokens']:>6} {p['fact_key']:<16} want {p['expected']!r:<12} got {reply!r}")
    return {k: (v[0], v[1]) for k, v in res.items()}


def load_model(path: str):
    from mamba_model import MambaLM
    from mamba_ref import read_safetensors
    if os.path.isdir(path):
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        m = MambaLM(cfg)
        m.load_state_dict(read_safetensors(os.path.join(path, "model.safetensors")))
    else:  # a trainer checkpoint
        ck = torch.load(path, map_location="cpu")
        m = MambaLM(ck["config"])
        m.load_state_dict(ck["model"])
    return m


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write-probes", help="write the probe JSONL here")
    ap.add_argument("--write-copy-probes", help="write the exact-copy probe JSONL here (25 per kind and place)")
    ap.add_argument("--per-distance", type=int, default=50)
    ap.add_argument("--distances", default=",".join(map(str, DISTANCES)))
    ap.add_argument("--model", help="model directory or trainer checkpoint (.pt) to score")
    ap.add_argument("--probes", help="probe JSONL to score (default: generate)")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N probes per distance")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--json-out", help="write the table as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    distances = [int(x) for x in a.distances.split(",")]
    if a.write_probes:
        probes = make_probes(distances, a.per_distance)
        with open(a.write_probes, "w") as f:
            for d, p in zip([d for d in distances for _ in range(a.per_distance)], probes):
                f.write(json.dumps({"distance_bucket": d, **p}, ensure_ascii=False) + "\n")
        print(f"wrote {len(probes)} probes to {a.write_probes}")
    if a.write_copy_probes:
        probes = make_copy_probes()
        with open(a.write_copy_probes, "w") as f:
            for p in probes:
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
        print(f"wrote {len(probes)} copy probes to {a.write_copy_probes}")
    if a.model:
        if a.probes:
            with open(a.probes) as f:
                probes = [json.loads(line) for line in f]
        else:
            probes = [dict(p, distance_bucket=d) for d, p in
                      zip([d for d in distances for _ in range(a.per_distance)], make_probes(distances, a.per_distance))]
        if a.limit:
            seen: dict[int, int] = {}
            keep = []
            for p in probes:
                b = p.get("kind", p.get("distance_bucket"))
                if seen.get(b, 0) < a.limit:
                    keep.append(p)
                    seen[b] = seen.get(b, 0) + 1
            probes = keep
        t0 = time.time()
        table = score(load_model(a.model), probes, print if a.verbose else None)
        for d, (ok, n) in table.items():
            print(f"{d:>32}: {ok}/{n} = {100 * ok / n:.0f}%")
        print(f"({time.time() - t0:.0f} s)")
        if a.json_out:
            with open(a.json_out, "w") as f:
                json.dump({str(d): {"passed": ok, "total": n} for d, (ok, n) in table.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
