"""Writes a trained MambaLM as an HF-layout model directory (what models/demo/ ships)."""
from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))

from chat_format import tokenizer_config  # noqa: E402
from mamba_model import MambaLM, hf_tensors  # noqa: E402
from mamba_ref import write_safetensors  # noqa: E402


def export_model(model: MambaLM, out_dir: str, metadata: dict | None = None) -> None:
    os.makedirs(out_dir, exist_ok=True)
    cfg = {k: v for k, v in model.cfg.items()}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(out_dir, "model.safetensors"), hf_tensors(model),
                      {"format": "pt", **(metadata or {})})
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(), f, indent=2)
        f.write("\n")
