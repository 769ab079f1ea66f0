#!/usr/bin/env python3
"""Golden logits from Hugging Face transformers' MambaForCausalLM, the model our engines mirror.

Reads a checkpoint directory in HF layout (config.json + model.safetensors), e.g. one written by
worker/model/testing/random-checkpoint.ts or the committed worker/engine/testing/golden/<case>/,
and writes a JSON fixture with the logits of every position in two modes:
  full  one forward pass over the whole sequence (use_cache=False)
  step  one token at a time through MambaCache (the recurrent path a server decodes with)
computed in float64 by default (the weights upcast exactly), so the fixture is a reference the
fp32 engines are held to within 1e-4. Runs on the GPU machine, whose image has torch and
transformers (no network needed); works on CPU as well.

  python3 tools/gpu/hf_golden.py --model-dir DIR [--tokens-from golden.json | --tokens 1,2,3]
                                 [--dtype float64|float32] [--device cpu|cuda] --out FILE

The output has the same shape as golden.json ({tokens, full, step}) plus provenance, so
worker/engine/hf-golden.test.ts can hold every engine to it once it is committed beside the
checkpoint as hf-golden.json.
"""
import argparse
import hashlib
import json
import os
import sys

import torch
import transformers
from transformers import MambaConfig, MambaForCausalLM


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--tokens-from", help="a JSON file with a 'tokens' list (e.g. the case's golden.json)")
    p.add_argument("--tokens", help="comma-separated token ids")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True)
    return p.parse_args()


def load_tokens(args):
    if args.tokens_from:
        with open(args.tokens_from) as f:
            return [int(t) for t in json.load(f)["tokens"]]
    if args.tokens:
        return [int(t) for t in args.tokens.split(",")]
    sys.exit("give --tokens-from or --tokens")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def main():
    args = parse_args()
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    torch.backends.cudnn.allow_tf32 = False
    config = MambaConfig.from_pretrained(args.model_dir)
    # The slow (pure torch) path: mamba_ssm's kernels are not installed there, and they would
    # not run in float64 anyway.
    model = MambaForCausalLM.from_pretrained(args.model_dir, torch_dtype=dtype).to(args.device).eval()
    tokens = load_tokens(args)
    ids = torch.tensor([tokens], dtype=torch.long, device=args.device)
    vocab = model.config.vocab_size

    full = model(input_ids=ids, use_cache=False).logits[0, :, :vocab]

    # Step mode: the first call creates the cache; later calls pass cache_position explicitly
    # (transformers >= 4.44 requires it and uses it to pick the single-step conv update).
    step_rows = []
    out = model(input_ids=ids[:, :1], use_cache=True)
    cache = out.cache_params
    step_rows.append(out.logits[0, -1, :vocab])
    for i in range(1, len(tokens)):
        out = model(
            input_ids=ids[:, i : i + 1],
            cache_params=cache,
            use_cache=True,
            cache_position=torch.tensor([i], device=args.device),
        )
        cache = out.cache_params
        step_rows.append(out.logits[0, -1, :vocab])
    step = torch.stack(step_rows)

    diff = (full - step).abs().max().item()
    print(f"{args.model_dir}: {len(tokens)} tokens, vocab {vocab}, {args.dtype} on {args.device}; max|full - step| = {diff:.3e}")
    weights = os.path.join(args.model_dir, "model.safetensors")
    fixture = {
        "source": "transformers.MambaForCausalLM",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": args.dtype,
        "device": args.device,
        "model_safetensors_sha256": sha256_of(weights) if os.path.exists(weights) else None,
        "full_vs_step_max_abs": diff,
        "tokens": tokens,
        "full": full.double().cpu().tolist(),
        "step": step.double().cpu().tolist(),
    }
    with open(args.out, "w") as f:
        json.dump(fixture, f)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
