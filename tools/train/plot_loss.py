#!/usr/bin/env python3
"""Plots a training log (log.jsonl from train.py) to a PNG: loss per step, smoothed, and
the in-training recall probes.

    /usr/bin/python3 tools/train/plot_loss.py tools/train/out/demo/log.jsonl docs/demo-loss.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display here
import matplotlib.pyplot as plt  # noqa: E402


def main(log_path: str, png_path: str) -> None:
    steps, loss, tokens, recall = [], [], [], []
    with open(log_path) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                steps.append(r["step"])
                loss.append(r["nll"])
                tokens.append(r["tokens"] / 1e6)
            elif "recall" in r:
                recall.append((r["step"], r["recall"]))
    k = 25  # moving average: single chunks are noisy (different session lengths, prose vs chat)
    smooth = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(steps, loss, color="#bbb", lw=0.6, label="per chunk (4096 tokens)")
    ax.plot(steps, smooth, color="#1f77b4", lw=1.8, label=f"moving average ({k} chunks)")
    ax.set_xlabel("optimizer step (one 8 x 512-token chunk each)")
    ax.set_ylabel("cross-entropy per byte token (nats)")
    ax.set_ylim(0, max(4.0, min(6.0, max(loss[:5] or [4]))))
    ax.grid(alpha=0.3)
    top = ax.secondary_xaxis("top", functions=(lambda s: s * 8 * 512 / 1e6, lambda t: t * 1e6 / (8 * 512)))
    top.set_xlabel("training tokens (millions)")
    if recall:
        ax2 = ax.twinx()
        for d in sorted({d for _, rr in recall for d in rr}, key=int):
            ax2.plot([s for s, _ in recall], [100 * rr.get(d, 0) for _, rr in recall], marker="o", lw=1,
                     label=f"recall @ {d} tokens (8 probes)")
        ax2.set_ylabel("recall probes passed (%)")
        ax2.set_ylim(-5, 105)
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("mamba-serve demo model: training loss")
    fig.tight_layout()
    fig.savefig(png_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
