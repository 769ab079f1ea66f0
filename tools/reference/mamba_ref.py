#!/usr/bin/env python3
"""Plain reference implementation of Hugging Face `MambaForCausalLM` inference, and of
mamba-serve's attention hybrid (README "Hybrid models": sliding-window attention layers in
chosen places of a MambaForCausalLM checkpoint).

Written straight from the math (see the HF modeling_mamba "slow path" and the Mamba
paper), in float64 on the CPU by default, with no batching and no fused anything, so that
every line can be checked by eye. The TypeScript engines and the trainer's fast scan are
both held to its numbers.

Two ways to run, which must agree:
  full  - the whole prompt at once: causal conv over the sequence, then the scan;
  step  - one token at a time through a recurrent state (conv_state, ssm_state), exactly
          what a server does when it resumes a session.

For an attention layer of a hybrid, `full` is a masked window over the whole sequence
(token t sees t-W < j <= t) and `step` keeps a ring buffer of the last W rotated keys and
values (slot = position mod W), as a server does. RoPE angles are computed in float64 from
the absolute position, so `--position 10000000` is as exact as position 10.

CLI (prints one logits row per position, same shape as the TypeScript CLI):
  /usr/bin/python3 tools/reference/mamba_ref.py --model models/demo --tokens 1,2,3 [--mode step] [--position P]
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
        self.layer_types = config.get("layer_types") or ["mamba"] * self.n_layer
        assert len(self.layer_types) == self.n_layer, "layer_types must have one entry per layer"
        if "sliding_attention" in self.layer_types:
            self.W = int(config["sliding_window"])
            self.H = int(config["num_attention_heads"])
            self.KV = int(config.get("num_key_value_heads") or self.H)
            self.hd = int(config.get("head_dim") or self.d // self.H)
            theta = config.get("rope_theta")
            # inv_freq[i] = theta^(-2i/hd), in float64 (HF computes it in float32, which at
            # position 10^7 moves angles by tenths of a radian)
            self.inv_freq = None if theta is None else torch.tensor(
                [float(theta) ** (-2.0 * i / self.hd) for i in range(self.hd // 2)], dtype=torch.float64)
        t = {k: v.to(dtype) for k, v in tensors.items()}
        self.emb = t["backbone.embeddings.weight"]
        self.head = t.get("lm_head.weight", self.emb)  # tied when the file omits it
        self.norm_f = t["backbone.norm_f.weight"]
        self.layers = []
        for i in range(self.n_layer):
            p = f"backbone.layers.{i}."
            m = p + "mixer."
            if self.layer_types[i] == "sliding_attention":
                self.layers.append({"type": "attention", "norm": t[p + "norm.weight"],
                                    **{f"{n}": t[m + f"{n}_proj.weight"] for n in "qkvo"},
                                    **{f"{n}_b": t.get(m + f"{n}_proj.bias") for n in "qkvo"}})
                continue
            L = {
                "type": "mamba",
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

    # ---- attention (hybrid layers) ---------------------------------------------
    def _rope(self, x: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """x: [T, heads, hd] at absolute positions -> rotated (HF LLaMA rotate-half convention)."""
        if self.inv_freq is None:
            return x
        pos = torch.tensor(positions, dtype=torch.float64)
        angle = pos[:, None] * self.inv_freq[None, :]  # float64: exact at any realistic position
        emb = torch.cat([angle, angle], -1)
        cos, sin = torch.cos(emb).to(self.dtype)[:, None, :], torch.sin(emb).to(self.dtype)[:, None, :]
        half = self.hd // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    def _qkv(self, L: dict, u: torch.Tensor, positions: list[int]):
        T = u.shape[0]
        q = self._lin(u, L["q"], L["q_b"]).reshape(T, self.H, self.hd)
        k = self._lin(u, L["k"], L["k_b"]).reshape(T, self.KV, self.hd)
        v = self._lin(u, L["v"], L["v_b"]).reshape(T, self.KV, self.hd)
        return self._rope(q, positions), self._rope(k, positions), v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """q [T, H, hd], k/v [S, KV, hd], allowed [T, S] bool -> [T, H*hd]. Query head h reads
        key/value head h // (H / KV)."""
        g = self.H // self.KV
        kh, vh = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # [S, H, hd]
        scores = torch.einsum("thd,shd->hts", q, kh) / math.sqrt(self.hd)
        scores = scores.masked_fill(~allowed[None], float("-inf"))
        p = torch.softmax(scores, -1)
        return torch.einsum("hts,shd->thd", p, vh).reshape(q.shape[0], self.H * self.hd)

    def _attention_full(self, L: dict, u: torch.Tensor, start: int) -> torch.Tensor:
        """Every position of the sequence at once: token t sees keys j with t-W < j <= t.
        Positions before `start` hold zero keys and values (a zero state that has counted
        `start` tokens, exactly what the ring of such a state holds)."""
        T = u.shape[0]
        q, k, v = self._qkv(L, u, list(range(start, start + T)))
        n0 = min(start, self.W - 1)
        k = torch.cat([torch.zeros(n0, self.KV, self.hd, dtype=self.dtype), k])
        v = torch.cat([torch.zeros(n0, self.KV, self.hd, dtype=self.dtype), v])
        t = torch.arange(T)[:, None] + n0  # query i sits at row n0 + i of the keys
        j = torch.arange(n0 + T)[None, :]
        allowed = (j <= t) & (t - j < self.W)
        return self._lin(self._attend(q, k, v, allowed), L["o"], L["o_b"])

    def forward(self, tokens: list[int], position: int = 0) -> torch.Tensor:
        """Logits of every position of `tokens`, the first at absolute position `position`
        with nothing before it (a state of zeros that has counted `position` tokens)."""
        h = self.emb[torch.tensor(tokens)]
        for L in self.layers:
            u = rmsnorm(h, L["norm"], self.eps)
            h = h + (self._attention_full(L, u, position) if L["type"] == "attention" else self._mixer_full(L, u))
        return rmsnorm(h, self.norm_f, self.eps) @ self.head.T

    # ---- recurrent mode ----------------------------------------------------
    def init_state(self, position: int = 0) -> list[dict]:
        # conv_state holds the last K raw (pre-conv) inputs, oldest first, zero before the prompt;
        # an attention layer holds a ring of W rotated keys and values, slot = position mod W
        def layer_state(L):
            if L["type"] == "attention":
                return {"k": torch.zeros(self.W, self.KV, self.hd, dtype=self.dtype),
                        "v": torch.zeros(self.W, self.KV, self.hd, dtype=self.dtype), "pos": position}
            return {"conv": torch.zeros(self.d_inner, self.K, dtype=self.dtype),
                    "ssm": torch.zeros(self.d_inner, self.N, dtype=self.dtype)}
        return [layer_state(L) for L in self.layers]

    def _attention_step(self, L: dict, u: torch.Tensor, st: dict) -> torch.Tensor:
        t = st["pos"]
        q, k, v = self._qkv(L, u[None, :], [t])
        st["k"][t % self.W], st["v"][t % self.W] = k[0], v[0]
        st["pos"] = t + 1
        # the slots of positions max(0, t-W+1)..t (a zero state at position P counts its zeros as keys)
        valid = min(t + 1, self.W)
        slots = [p % self.W for p in range(t + 1 - valid, t + 1)]
        ks, vs = st["k"][slots], st["v"][slots]
        out = self._attend(q, ks, vs, torch.ones(1, len(slots), dtype=torch.bool))
        return self._lin(out[0], L["o"], L["o_b"])

    def step(self, token: int, state: list[dict]) -> torch.Tensor:
        """Consumes one token, updates `state` in place, returns logits [V]."""
        h = self.emb[token]
        for L, st in zip(self.layers, state):
            u = rmsnorm(h, L["norm"], self.eps)
            if L["type"] == "attention":
                h = h + self._attention_step(L, u, st)
                continue
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

    def forward_steps(self, tokens: list[int], state: list[dict] | None = None, position: int = 0) -> torch.Tensor:
        state = state if state is not None else self.init_state(position)
        return torch.stack([self.step(t, state) for t in tokens])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="directory with config.json and model.safetensors")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--mode", choices=["full", "step"], default="full")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--position", type=int, default=0,
                    help="absolute position of the first token (a zero state that has counted this many)")
    a = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    m = MambaRef.load(a.model, getattr(torch, a.dtype))
    toks = [int(t) for t in a.tokens.split(",") if t.strip()]
    logits = m.forward(toks, a.position) if a.mode == "full" else m.forward_steps(toks, position=a.position)
    json.dump({"logits": logits.tolist()}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
