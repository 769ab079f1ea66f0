#!/usr/bin/env python3
"""Plain reference implementation of Hugging Face `MambaForCausalLM` inference.

Written straight from the math (see the HF modeling_mamba "slow path" and the Mamba
paper), in float64 on the CPU by default, with no batching and no fused anything, so that
every line can be checked by eye. The TypeScript engines and the trainer's fast scan are
both held to its numbers.

Two ways to run, which must agree:
  full  - the whole prompt at once: causal conv over the sequence, then the scan;
  step  - one token at a time through a recurrent state (conv_state, ssm_state), exactly
          what a server does when it resumes a session.

CLI (prints one logits row per position, same shape as the TypeScript CLI):
  /usr/bin/python3 tools/reference/mamba_ref.py --model models/demo --tokens 1,2,3 [--mode step]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, JSON header, raw little-endian data.
# Our own reader so the reference needs nothing beyond torch.
# ---------------------------------------------------------------------------
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32}


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        t = torch.frombuffer(bytearray(raw[base + start:base + end]), dtype=dtype)
        out[name] = t.reshape(info["shape"]).clone()
    return out


def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Writes contiguous little-endian tensors in name order (deterministic bytes)."""
    names = sorted(tensors)
    header, blobs, off = {}, [], 0
    rev = {v: k for k, v in _DTYPES.items()}
    for name in names:
        t = tensors[name].detach().contiguous().cpu()
        b = t.numpy().tobytes()
        header[name] = {"dtype": rev[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------
def softplus(v: torch.Tensor) -> torch.Tensor:
    # torch's softplus with threshold 20, as HF uses: linear above 20
    return torch.where(v > 20, v, torch.log1p(torch.exp(torch.clamp(v, max=20))))


def silu(v: torch.Tensor) -> torch.Tensor:
    return v * torch.sigmoid(v)


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class MambaRef:
    def __init__(self, config: dict, tensors: dict[str, torch.Tensor], dtype=torch.float64):
        self.cfg = config
        self.dtype = dtype
        self.d = config["hidden_size"]
        self.n_layer = config["num_hidden_layers"]
        self.N = config["state_size"]
        self.K = config["conv_kernel"]
        self.d_inner = config.get("intermediate_size") or config["expand"] * self.d
        r = config.get("time_step_rank", "auto")
        self.R = math.ceil(self.d / 16) if r == "auto" else int(r)
        self.eps = config["layer_norm_epsilon"]
        t = {k: v.to(dtype) for k, v in tensors.items()}
        self.emb = t["backbone.embeddings.weight"]
        self.head = t.get("lm_head.weight", self.emb)  # tied when the file omits it
        self.norm_f = t["backbone.norm_f.weight"]
        self.layers = []
        for i in range(self.n_layer):
            p = f"backbone.layers.{i}."
            m = p + "mixer."
            L = {
                "norm": t[p + "norm.weight"],
                "in_proj": t[m + "in_proj.weight"],
                "in_proj_b": t.get(m + "in_proj.bias"),  # use_bias: trust the tensors present
                "conv_w": t[m + "conv1d.weight"][:, 0, :],  # [d_inner, K]
                "conv_b": t.get(m + "conv1d.bias"),
                "x_proj": t[m + "x_proj.weight"],
                "dt_w": t[m + "dt_proj.weight"],
                "dt_b": t[m + "dt_proj.bias"],
                "A": -torch.exp(t[m + "A_log"]),  # [d_inner, N]
                "D": t[m + "D"],
                "out_proj": t[m + "out_proj.weight"],
                "out_proj_b": t.get(m + "out_proj.bias"),
            }
            self.layers.append(L)

    @staticmethod
    def load(model_dir: str, dtype=torch.float64) -> "MambaRef":
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        tensors = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        return MambaRef(cfg, tensors, dtype)

    @staticmethod
    def _lin(x, w, b):
        y = x @ w.T
        return y if b is None else y + b

    # ---- full-sequence mode ------------------------------------------------
    def _mixer_full(self, L: dict, h: torch.Tensor) -> torch.Tensor:
        """h: [T, d] -> [T, d]; state starts at zero."""
        T = h.shape[0]
        xz = self._lin(h, L["in_proj"], L["in_proj_b"])  # [T, 2*d_inner]
        x, z = xz[:, :self.d_inner], xz[:, self.d_inner:]
        # causal depthwise conv: pad K-1 zeros on the left, keep the first T outputs
        xc = F.conv1d(x.T.unsqueeze(0), L["conv_w"].unsqueeze(1), L["conv_b"],
                      padding=self.K - 1, groups=self.d_inner)[0, :, :T].T
        x = silu(xc)
        dbc = x @ L["x_proj"].T
        dt, B, C = dbc[:, :self.R], dbc[:, self.R:self.R + self.N], dbc[:, self.R + self.N:]
        dt = softplus(dt @ L["dt_w"].T + L["dt_b"])  # [T, d_inner]
        s = torch.zeros(self.d_inner, self.N, dtype=self.dtype)
        ys = []
        for t in range(T):
            s = torch.exp(dt[t][:, None] * L["A"]) * s + (dt[t] * x[t])[:, None] * B[t][None, :]
            ys.append(s @ C[t] + L["D"] * x[t])
        y = torch.stack(ys) * silu(z)
        return self._lin(y, L["out_proj"], L["out_proj_b"])

    def forward(self, tokens: list[int]) -> torch.Tensor:
        h = self.emb[torch.tensor(tokens)]
        for L in self.layers:
            h = h + self._mixer_full(L, rmsnorm(h, L["norm"], self.eps))
        return rmsnorm(h, self.norm_f, self.eps) @ self.head.T

    # ---- recurrent mode ----------------------------------------------------
    def init_state(self) -> list[dict]:
        # conv_state holds the last K raw (pre-conv) inputs, oldest first, zero before the prompt
        return [{"conv": torch.zeros(self.d_inner, self.K, dtype=self.dtype),
                 "ssm": torch.zeros(self.d_inner, self.N, dtype=self.dtype)} for _ in self.layers]

    def step(self, token: int, state: list[dict]) -> torch.Tensor:
        """Consumes one token, updates `state` in place, returns logits [V]."""
        h = self.emb[token]
        for L, st in zip(self.layers, state):
            u = rmsnorm(h, L["norm"], self.eps)
            xz = self._lin(u, L["in_proj"], L["in_proj_b"])
            x, z = xz[:self.d_inner], xz[self.d_inner:]
            st["conv"] = torch.cat([st["conv"][:, 1:], x[:, None]], dim=1)
            xc = (st["conv"] * L["conv_w"]).sum(-1)
            if L["conv_b"] is not None:
                xc = xc + L["conv_b"]
            x = silu(xc)
            dbc = L["x_proj"] @ x
            dt, B, C = dbc[:self.R], dbc[self.R:self.R + self.N], dbc[self.R + self.N:]
            dt = softplus(L["dt_w"] @ dt + L["dt_b"])
            st["ssm"] = torch.exp(dt[:, None] * L["A"]) * st["ssm"] + (dt * x)[:, None] * B[None, :]
            y = (st["ssm"] @ C + L["D"] * x) * silu(z)
            h = h + self._lin(y, L["out_proj"], L["out_proj_b"])
        return rmsnorm(h, self.norm_f, self.eps) @ self.head.T

    def forward_steps(self, tokens: list[int], state: list[dict] | None = None) -> torch.Tensor:
        state = state if state is not None else self.init_state()
        return torch.stack([self.step(t, state) for t in tokens])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="directory with config.json and model.safetensors")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--mode", choices=["full", "step"], default="full")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    a = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    m = MambaRef.load(a.model, getattr(torch, a.dtype))
    toks = [int(t) for t in a.tokens.split(",") if t.strip()]
    logits = m.forward(toks) if a.mode == "full" else m.forward_steps(toks)
    json.dump({"logits": logits.tolist()}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
