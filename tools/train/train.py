#!/usr/bin/env python3
"""Trains the demo Mamba on CPU with truncated BPTT and exports it in the HF layout.

    nice -n 5 /usr/bin/python3 tools/train/train.py --out tools/train/out/run1 --export tools/train/out/run1/model \
        --procs 2 --threads 1 --steps 100000 --max-minutes 90

(Debian's python3-torch installs for /usr/bin/python3, not for a pyenv python3 on PATH.)
`--init-from DIR` starts from a model directory's weights instead of a fresh init, with a
fresh optimizer and schedule (how the shipped demo model was trained on: docs/demo-model.md).
Every step's log line has `first_acc`: how often the model's top guess for the first token of
a value (in acknowledgements and answers) is right, teacher-forced — the training-time view
of recall.

How it learns to remember far back cheaply: every batch lane is one synthetic session of
`chunks x seq` tokens that starts from a zero state; it is fed `seq` tokens at a time and
the recurrent state (conv + SSM) is carried, detached, into the next chunk, with one
optimizer step per chunk. A question in chunk 4 is answered from a fact that entered the
state in chunk 1 — the forward pass sees the whole distance, the gradient only the last
chunk, which is enough to teach retention (the same decay parameters act in every chunk).
The session length grows over training (the curriculum below), so short-range recall is
learnt first, then kept over longer and longer spans.

Resumable: a checkpoint (model, optimizer, position in the data) is written every few
minutes and at the end; rerunning the same command continues from it. Data for episode i
comes from random.Random(f"{seed}/{i}"), so a resumed run sees exactly the same data.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from chat_format import VOCAB_SIZE, encode_text  # noqa: E402
from conversations import FACT_KEYS, FACT_KEYS_WITH_COPY, ProseSampler, drill_session, training_session  # noqa: E402
from export import export_model  # noqa: E402
from mamba_model import MambaLM, detach_state, hf_config  # noqa: E402
from prose_source import load_austen  # noqa: E402
from recall_eval import EVAL_BOOK, make_probes, score  # noqa: E402
from mamba_ref import read_safetensors  # noqa: E402


def curriculum(frac: float, final_chunks: int = 8) -> tuple[int, float, int]:
    """At this point of training: TBPTT chunks per episode (session length), the share of
    batch lanes that are dense recall drills, and the drills' longest filler in characters.
    Recall is learnt first on short dense drills, then kept over longer and longer spans."""
    if frac < 0.4:
        return 1, 0.75, 300
    if frac < 0.6:
        return 2, 0.55, 700
    if frac < 0.8:
        return 4, 0.4, 1500
    return final_chunks, 0.3, 3000


def episode(i: int, args, prose: ProseSampler, n_tokens: int, drill_frac: float, filler_chars: int):
    """B lanes of n_tokens+1 tokens (and loss weights) for episode i; deterministic in (seed, i)."""
    r = random.Random(f"{args.seed}/{i}")
    keys = FACT_KEYS_WITH_COPY if args.copy_facts else FACT_KEYS
    xs, ws = [], []
    for _ in range(args.batch):
        x = r.random()
        if x < args.prose_frac:  # plain prose keeps the model's English going
            t = encode_text(prose.passage(r, n_tokens * 2))[:n_tokens + 1]
            t += [32] * (n_tokens + 1 - len(t))
            w = [1.0] * len(t)
        elif x < args.prose_frac + (1 - args.prose_frac) * drill_frac:
            t, w = drill_session(r, prose, n_tokens + 1, filler_chars, keys)
        else:
            t, w = training_session(r, prose, n_tokens + 1, keys)
        xs.append(t)
        ws.append(w)
    return torch.tensor(xs), torch.tensor(ws)


def with_attention(source: dict, attention: dict) -> dict:
    """A pure Mamba config with sliding-window attention layers inserted at attention["layers"]
    (indices in the result)."""
    if "sliding_attention" in (source.get("layer_types") or []):
        raise SystemExit("--attn-layers with --init-from needs a pure Mamba model to insert layers into")
    n = source["num_hidden_layers"] + len(attention["layers"])
    d = source["hidden_size"]
    hybrid = hf_config(d, n, attention=attention)
    keys = ("layer_types", "sliding_window", "num_attention_heads", "num_key_value_heads", "head_dim",
            "attention_bias", "rope_theta")
    return {**source, "num_hidden_layers": n, **{k: hybrid[k] for k in keys}}


def insert_attention(model: torch.nn.Module, source: dict, cfg: dict, weights: dict) -> dict:
    """The source model's tensors renamed to the hybrid's Mamba layers (in order), plus the new
    attention layers' fresh init with o_proj zero: the hybrid starts as exactly the source
    model's function and learns what the attention adds."""
    out = {k: v for k, v in weights.items() if not k.startswith("backbone.layers.")}
    mamba_layers = [i for i, t in enumerate(cfg["layer_types"]) if t == "mamba"]
    for src, dst in enumerate(mamba_layers):
        prefix = f"backbone.layers.{src}."
        for k, v in weights.items():
            if k.startswith(prefix):
                out[f"backbone.layers.{dst}." + k[len(prefix):]] = v
    fresh = model.state_dict()
    for i, t in enumerate(cfg["layer_types"]):
        if t == "sliding_attention":
            for k, v in fresh.items():
                if k.startswith(f"backbone.layers.{i}."):
                    out[k] = torch.zeros_like(v) if ".o_proj." in k else v
    return out


def is_decayed(name: str, p: torch.nn.Parameter) -> bool:
    """Weight decay on matrices only; not on the embeddings, and not on A_log and D, which
    are matrices/vectors of dynamics, not of features. Decaying A_log pulls every state's
    decay rate A = -exp(A_log) towards -1 and erases the spread of time scales the S4D
    init gives (the second demo model's A range shrank from 1..16 to about 1..5); the
    Mamba reference keeps both out of weight decay for that reason."""
    if name.endswith(".A_log") or name.endswith(".D"):
        return False
    return p.dim() >= 2 and "embeddings" not in name


def value_accuracy(logits: torch.Tensor, tgt: torch.Tensor, wt: torch.Tensor, wt_prev: torch.Tensor) -> dict:
    """Teacher-forced argmax accuracy on a chunk's value tokens (weight > 1): all of them, and
    only each value's first token (the previous target was not a value), counted as
    (right, total). The first token is the real test of memory ("Your locker code is _");
    later ones are often implied by it (a name's second letter). Both move long before
    greedy recall of whole values does, and cost nothing to compute."""
    hit = logits.argmax(-1) == tgt
    m = wt > 1
    first = m & ~(torch.cat([wt_prev.unsqueeze(1), wt[:, :-1]], 1) > 1)
    return {"value": (int(hit[m].sum()), int(m.sum())), "first": (int(hit[first].sum()), int(first.sum()))}


def lr_at(step: int, frac: float, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def progress(pos: dict, args) -> float:
    """How far through training we are, 0..1. With --max-minutes the schedule (curriculum and
    learning rate) follows whichever runs out first, steps or time: the CPU is shared and
    its speed varies several-fold, and a run cut off before its long-session phase and its
    learning-rate decay would be wasted. Give --steps alone for a run that is reproducible
    step for step."""
    f = pos["step"] / args.steps
    if args.max_minutes:
        f = max(f, pos["seconds"] / (args.max_minutes * 60))
    return f


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "out", "run"))
    ap.add_argument("--export", help="write the final model directory here")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--state", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512, help="tokens per TBPTT chunk")
    ap.add_argument("--steps", type=int, default=3000, help="optimizer steps (= chunks) in all")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--prose-frac", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--dt-min", type=float, default=1e-3, help="smallest initial time step (log-uniform up to 0.1)")
    ap.add_argument("--attn-layers", default="",
                    help="comma-separated layer indices that are sliding-window attention (a hybrid), e.g. 2,5; "
                         "with --init-from a pure Mamba model, new attention layers inserted at these indices of "
                         "the result (its Mamba layers keep their weights in order, the new layers start as identity)")
    ap.add_argument("--copy-facts", action="store_true",
                    help="add facts whose values are in no list (any-length numbers, made-up names, codes) to the data")
    ap.add_argument("--window", type=int, default=256, help="attention window W of a hybrid")
    ap.add_argument("--heads", type=int, default=4, help="attention heads of a hybrid")
    ap.add_argument("--kv-heads", type=int, default=2, help="key/value heads of a hybrid (grouped-query attention)")
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--init-from", help="start from this HF-layout model directory's weights (fresh optimizer and schedule)")
    ap.add_argument("--curriculum-start", type=float, default=0.0,
                    help="begin the curriculum this far in (0.8: the longest sessions only), for a continued stage")
    ap.add_argument("--final-chunks", type=int, default=8, help="TBPTT chunks per session in the curriculum's last phase")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per process")
    ap.add_argument("--procs", type=int, default=1,
                    help="data-parallel processes (gloo all-reduce); each takes batch/procs lanes of every episode")
    ap.add_argument("--ckpt-minutes", type=float, default=5)
    ap.add_argument("--eval-minutes", type=float, default=20)
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="time budget: the schedule ends at this much training time if the steps are not done by then")
    args = ap.parse_args()
    if args.batch % args.procs:
        ap.error("--batch must be a multiple of --procs")
    os.makedirs(args.out, exist_ok=True)
    load_austen(os.path.join(HERE, "out", "data"))  # build the corpus cache once, before any worker reads it
    if args.procs == 1:
        train(0, args, 0)
    else:
        import torch.multiprocessing as mp
        mp.spawn(train, args=(args, free_port()), nprocs=args.procs)
    return 0


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(rank: int, args, port: int) -> None:
    """One training process. With --procs N, N of these run side by side on one episode at a
    time, each on its share of the batch lanes, and average gradients after every backward
    (DistributedDataParallel over gloo): on this 2-core CPU two single-threaded processes
    do ~1.5x the work of one process with two threads, whose small per-step ops do not
    split well across threads. Rank 0 alone logs, evaluates, checkpoints and exports; the
    time used for the schedule is rank 0's, broadcast every step, so that every rank picks
    the same curriculum phase and stops at the same step."""
    world = args.procs
    torch.set_num_threads(args.threads)
    if world > 1:
        import torch.distributed as dist
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    log_path = os.path.join(args.out, "log.jsonl")
    books = load_austen(os.path.join(HERE, "out", "data"))
    prose = ProseSampler([t for k, t in sorted(books.items()) if k != EVAL_BOOK])
    eval_distances = (100, 500, 2000)
    probes = [dict(p, distance_bucket=d) for d, p in
              zip([d for d in eval_distances for _ in range(8)], make_probes(eval_distances, 8, seed=7))]

    torch.manual_seed(args.seed)
    attention = None
    if args.attn_layers:
        attention = {"layers": [int(i) for i in args.attn_layers.split(",")], "window": args.window,
                     "heads": args.heads, "kv_heads": args.kv_heads, "rope_theta": args.rope_theta}
    source = None
    if args.init_from:  # the model's own shape; --hidden/--layers/--state/--dt-min do not apply
        with open(os.path.join(args.init_from, "config.json")) as f:
            cfg = source = json.load(f)
        if attention:
            cfg = with_attention(source, attention)
    else:
        cfg = hf_config(args.hidden, args.layers, N=args.state, vocab=VOCAB_SIZE, dt_min=args.dt_min, attention=attention)
    model = MambaLM(cfg)
    if args.init_from:
        weights = read_safetensors(os.path.join(args.init_from, "model.safetensors"))
        if cfg is not source:
            weights = insert_attention(model, source, cfg, weights)
        model.load_state_dict(weights)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if is_decayed(n, p) else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    pos = {"step": 0, "episode": 0, "tokens": 0, "seconds": 0.0}
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        pos = ck["pos"]
        if rank == 0 and os.path.exists(log_path):  # drop log lines from after the checkpoint: they will be redone
            with open(log_path) as f:
                keep = [ln for ln in f if json.loads(ln)["step"] <= pos["step"]]
            with open(log_path, "w") as f:
                f.writelines(keep)
        if rank == 0:
            print(f"resumed at step {pos['step']} ({pos['tokens']} tokens, {pos['seconds'] / 60:.1f} min)", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print(f"params {n_params}  config {json.dumps(cfg)}", flush=True)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model)

    def save():
        tmp = ckpt_path + ".tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "pos": pos, "config": cfg,
                    "args": vars(args)}, tmp)
        os.replace(tmp, ckpt_path)  # never a torn checkpoint, even if killed while writing

    logf = open(log_path, "a") if rank == 0 else None
    t_start = time.time()
    base_seconds = pos["seconds"]
    last_ckpt = last_eval = time.time()
    model.train()
    while progress(pos, args) < 1.0:
        f = args.curriculum_start + (1 - args.curriculum_start) * progress(pos, args)
        k, drill_frac, filler_chars = curriculum(f, args.final_chunks)
        x, w = episode(pos["episode"], args, prose, k * args.seq, drill_frac, filler_chars)
        x, w = x[rank::world], w[rank::world]
        state = None
        for c in range(k):
            if progress(pos, args) >= 1.0:
                break
            s = c * args.seq
            inp, tgt, wt = x[:, s:s + args.seq], x[:, s + 1:s + args.seq + 1], w[:, s + 1:s + args.seq + 1]
            for g in opt.param_groups:
                g["lr"] = lr_at(pos["step"], progress(pos, args), args.lr, args.warmup)
            logits, state = net(inp, state)
            state = detach_state(state)
            nll = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), tgt.reshape(-1), reduction="none")
            loss = (nll * wt.reshape(-1)).sum() / wt.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            acc = value_accuracy(logits.detach(), tgt, wt, w[:, s])
            # sums over every rank's lanes: weighted nll, weight, nll, tokens, value/first right and total
            sums = torch.tensor([float((nll * wt.reshape(-1)).sum()), float(wt.sum()), float(nll.sum()), nll.numel(),
                                 *acc["value"], *acc["first"]], dtype=torch.float64)
            seconds = torch.tensor([base_seconds + time.time() - t_start], dtype=torch.float64)
            if world > 1:
                dist.all_reduce(sums)
                dist.broadcast(seconds, 0)  # rank 0's clock drives everyone's schedule
            pos["step"] += 1
            pos["tokens"] += inp.numel() * world
            pos["seconds"] = float(seconds)
            if rank != 0:
                continue
            rec = {"step": pos["step"], "tokens": pos["tokens"], "minutes": round(pos["seconds"] / 60, 2),
                   "loss": round(float(sums[0] / sums[1]), 4), "nll": round(float(sums[2] / sums[3]), 4),
                   "lr": round(opt.param_groups[0]["lr"], 6), "grad_norm": round(float(gn), 3), "chunks": k,
                   "value_acc": round(float(sums[4] / sums[5]), 4) if sums[5] else None,
                   "first_acc": round(float(sums[6] / sums[7]), 4) if sums[7] else None}
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            if pos["step"] % 10 == 0:
                print(rec, flush=True)
        pos["episode"] += 1
        if rank != 0:
            continue
        if time.time() - last_eval > args.eval_minutes * 60:
            table = score(model, probes)
            model.train()
            rec = {"step": pos["step"], "minutes": round(pos["seconds"] / 60, 2),
                   "recall": {str(d): ok / n for d, (ok, n) in table.items()}}
            logf.write(json.dumps(rec) + "\n")
            print(rec, flush=True)
            last_eval = time.time()
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            save()
            last_ckpt = time.time()
    if rank != 0:
        return
    save()
    if args.export:
        export_model(model, args.export, {"steps": pos["step"], "tokens": pos["tokens"]})
        print(f"exported to {args.export}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
