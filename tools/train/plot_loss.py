#!/usr/bin/env python3
"""Plots training logs (log.jsonl from train.py) to a PNG: loss per step, smoothed, the
in-training recall probes, and the first-token accuracy of recalled values.

    /usr/bin/python3 tools/train/plot_loss.py tools/train/runs/demo-log.jsonl [MORE_LOGS ...] docs/demo-loss.png

Several logs are stages of one model (a run continued with --init-from): they are drawn one
after the other, steps counted on from where the previous stage ended, with a line where a
stage begins.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display here
import matplotlib.pyplot as plt  # noqa: E402


def moving_average(xs: list[float], k: int) -> list[float]:
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def main(log_paths: list[str], png_path: str) -> None:
    steps, loss, recall, first, boundaries = [], [], [], [], []
    offset = 0
    for path in log_paths:
        if offset:
            boundaries.append(offset)
        last = offset
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                step = offset + r["step"]
                last = max(last, step)
                if "loss" in r:
                    steps.append(step)
                    loss.append(r["nll"])
                    if r.get("first_acc") is not None:
                        first.append((step, r["first_acc"]))
                elif "recall" in r:
                    recall.append((step, r["recall"]))
        offset = last
    k = 25  # moving average: single chunks are noisy (different session lengths, prose vs chat)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(steps, loss, color="#bbb", lw=0.6, label="per chunk (4096 tokens)")
    ax.plot(steps, moving_average(loss, k), color="#1f77b4", lw=1.8, label=f"moving average ({k} chunks)")
    for b in boundaries:
        ax.axvline(b, color="#555", ls="--", lw=1)
        ax.text(b, 0.1, " continued (--init-from)", fontsize=7, color="#555")
    ax.set_xlabel("optimizer step (one 8 x 512-token chunk each)")
    ax.set_ylabel("cross-entropy per byte token (nats)")
    ax.set_ylim(0, max(4.0, min(6.0, max(loss[:5] or [4]))))
    ax.grid(alpha=0.3)
    top = ax.secondary_xaxis("top", functions=(lambda s: s * 8 * 512 / 1e6, lambda t: t * 1e6 / (8 * 512)))
    top.set_xlabel("training tokens (millions)")
    if recall or first:
        ax2 = ax.twinx()
        for d in sorted({d for _, rr in recall for d in rr}, key=int):
            ax2.plot([s for s, _ in recall], [100 * rr.get(d, 0) for _, rr in recall], marker="o", lw=1,
                     label=f"recall @ {d} tokens (8 probes)")
        if first:
            ax2.plot([s for s, _ in first], [100 * a for a in moving_average([a for _, a in first], 200)],
                     color="#d62728", lw=1.2, label="first value token right, teacher-forced (200-chunk avg)")
        ax2.set_ylabel("recall (%)")
        ax2.set_ylim(-5, 105)
        ax2.legend(loc="upper left", bbox_to_anchor=(0.03, 0.8), fontsize=7)  # the empty plateau, left
    ax.legend(loc="upper left", bbox_to_anchor=(0.03, 0.97), fontsize=8)
    ax.set_title("mamba-serve demo model: training loss")
    fig.tight_layout()
    fig.savefig(png_path)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: plot_loss.py LOG [LOG ...] OUT.png")
    main(sys.argv[1:-1], sys.argv[-1])
