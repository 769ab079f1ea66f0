"""Correctness of the trainer's fast scan against the plain reference (needs torch; not in CI).

    /usr/bin/python3 -m unittest tools/train/test_scan.py -v

Checks, in float64 on a small random model:
  - LinearScan's hand-written backward equals autograd through a naive loop (gradcheck);
  - the training model's logits equal tools/reference/mamba_ref.py in full mode and in
    step mode, for several scan chunk sizes, and when the sequence is fed in pieces with
    the recurrent state carried across (what truncated BPTT does);
  - the C scan (scan_kernel.c, float32) equals autograd through a naive float64 loop,
    forward and backward, and the float32 model that uses it matches the reference;
  - a checkpoint written by the trainer's exporter loads in the reference with the same logits;
  - the attention hybrid: the training model equals the reference (full and step, pieces
    carried across the window's edge, grouped KV heads, biases, with and without RoPE), and
    the reference's full and ring-buffer modes agree at position 10,000,000.
"""
from __future__ import annotations

import os
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))

from mamba_model import FusedScan, LinearScan, MambaLM, fused_kernel, hf_config, hf_tensors, rope_tables  # noqa: E402
from mamba_ref import MambaRef, read_safetensors, write_safetensors  # noqa: E402
import export  # noqa: E402


def small_model(seed=0):
    torch.manual_seed(seed)
    cfg = hf_config(d=32, n_layer=2, N=8, vocab=264)
    m = MambaLM(cfg).double()
    # move the parameters off their tidy init so every term of the math matters
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if "A_log" in name or "dt_proj.bias" in name else 0.05))
    return cfg, m


class ScanTest(unittest.TestCase):
    def test_linear_scan_grad(self):
        torch.manual_seed(1)
        a = torch.rand(7, 2, 3, 4, dtype=torch.float64, requires_grad=True)
        b = torch.randn(7, 2, 3, 4, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
        self.assertTrue(torch.autograd.gradcheck(LinearScan.apply, (a, b, h0)))

        def naive(a, b, h):
            out = []
            for t in range(a.shape[0]):
                h = a[t] * h + b[t]
                out.append(h)
            return torch.stack(out)

        torch.testing.assert_close(LinearScan.apply(a, b, h0), naive(a, b, h0))

    def test_fused_scan_matches_naive_loop(self):
        if fused_kernel() is None:
            self.skipTest("no C compiler: the trainer falls back to the Python scan")
        torch.manual_seed(4)
        Bsz, L, D, N = 2, 37, 8, 16
        args = (torch.randn(Bsz, L, D), torch.rand(Bsz, L, D) * 0.5, -torch.rand(D, N) * 3,
                torch.randn(Bsz, L, N), torch.randn(Bsz, L, N), torch.randn(Bsz, D, N))
        args = tuple(a.requires_grad_() for a in args)

        def naive(x, dt, A, Bm, Cm, h):
            ys = []
            for t in range(L):
                h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t, :, None] * x[:, t, :, None]) * Bm[:, t, None, :]
                ys.append((h * Cm[:, t, None, :]).sum(-1))
            return torch.stack(ys, 1), h

        y, h = FusedScan.apply(*args)
        gy, gh = torch.randn_like(y), torch.randn_like(h)
        got = torch.autograd.grad((y * gy).sum() + (h * gh).sum(), args)
        ref_args = tuple(a.detach().double().requires_grad_() for a in args)
        y64, h64 = naive(*ref_args)
        want = torch.autograd.grad((y64 * gy.double()).sum() + (h64 * gh.double()).sum(), ref_args)
        torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h.double(), h64, rtol=1e-5, atol=1e-5)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4 * float(w.abs().max()))

        cfg, m = small_model(5)
        ref = MambaRef(cfg, hf_tensors(m, torch.float64), torch.float64)
        toks = torch.randint(0, 264, (1, 30))
        with torch.no_grad():
            out, _ = m.float()(toks)  # float32: the fused path
        torch.testing.assert_close(out[0].double(), ref.forward(toks[0].tolist()), rtol=1e-4, atol=1e-4)

    def test_model_matches_reference(self):
        cfg, m = small_model()
        ref = MambaRef(cfg, hf_tensors(m, torch.float64), torch.float64)
        torch.manual_seed(2)
        toks = torch.randint(0, 264, (1, 45))
        want_full = ref.forward(toks[0].tolist())
        want_step = ref.forward_steps(toks[0].tolist())
        torch.testing.assert_close(want_full, want_step, rtol=1e-9, atol=1e-9)
        with torch.no_grad():
            for chunk in (1, 8, 13, 64):
                got, _ = m(toks, chunk=chunk)
                torch.testing.assert_close(got[0], want_full, rtol=1e-9, atol=1e-9)
            # pieces with the state carried, as in truncated BPTT (pieces shorter than the conv too)
            state, outs = None, []
            for s, e in ((0, 2), (2, 20), (20, 21), (21, 45)):
                o, state = m(toks[:, s:e], state, chunk=8)
                outs.append(o[0])
            torch.testing.assert_close(torch.cat(outs), want_full, rtol=1e-9, atol=1e-9)

    def test_export_roundtrip(self):
        cfg, m = small_model(3)
        with tempfile.TemporaryDirectory() as d:
            export.export_model(m.float(), d)
            names = set(read_safetensors(os.path.join(d, "model.safetensors")))
            self.assertNotIn("lm_head.weight", names)
            self.assertIn("backbone.layers.1.mixer.x_proj.weight", names)
            ref = MambaRef.load(d, torch.float64)
            toks = list(range(250, 264)) + [72, 105]
            with torch.no_grad():
                got, _ = m.double()(torch.tensor([toks]))
            torch.testing.assert_close(ref.forward(toks), got[0], rtol=1e-6, atol=1e-6)

    def test_safetensors_roundtrip(self):
        t = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.ones(1, 2, 2)}
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "x.safetensors")
            write_safetensors(p, t)
            r = read_safetensors(p)
            for k in t:
                torch.testing.assert_close(r[k], t[k])


def small_hybrid(seed=0, bias=False, rope_theta=10000.0, window=5):
    torch.manual_seed(seed)
    cfg = hf_config(d=32, n_layer=3, N=8, vocab=264, attention={
        "layers": [1], "window": window, "heads": 4, "kv_heads": 2, "head_dim": 8, "bias": bias, "rope_theta": rope_theta})
    m = MambaLM(cfg).double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if "A_log" in name or "dt_proj.bias" in name or "_proj" in name else 0.05))
    return cfg, m


class HybridTest(unittest.TestCase):
    def check_model(self, cfg, m):
        names = set(hf_tensors(m, torch.float64))
        self.assertIn("backbone.layers.1.mixer.q_proj.weight", names)
        self.assertNotIn("backbone.layers.1.mixer.A_log", names)
        self.assertFalse(any("inv_freq" in n for n in names))
        ref = MambaRef(cfg, hf_tensors(m, torch.float64), torch.float64)
        torch.manual_seed(2)
        toks = torch.randint(0, 264, (1, 23))
        want_full = ref.forward(toks[0].tolist())
        torch.testing.assert_close(ref.forward_steps(toks[0].tolist()), want_full, rtol=1e-9, atol=1e-9)
        with torch.no_grad():
            got, _ = m(toks, chunk=8)
            torch.testing.assert_close(got[0], want_full, rtol=1e-9, atol=1e-9)
            state, outs = None, []
            for s, e in ((0, 2), (2, 9), (9, 10), (10, 23)):  # pieces shorter and longer than the window
                o, state = m(toks[:, s:e], state, chunk=8)
                outs.append(o[0])
            torch.testing.assert_close(torch.cat(outs), want_full, rtol=1e-9, atol=1e-9)
            self.assertEqual(state[1][2], 23)  # the attention layer's absolute position
            self.assertEqual(state[1][0].shape[1], min(cfg["sliding_window"] - 1, 23))  # W-1 keys carried

    def test_hybrid_matches_reference(self):
        self.check_model(*small_hybrid(1))

    def test_hybrid_with_biases(self):
        self.check_model(*small_hybrid(2, bias=True))

    def test_hybrid_without_rope(self):
        self.check_model(*small_hybrid(3, rope_theta=None))

    def test_window_wider_than_the_sequence(self):
        self.check_model(*small_hybrid(4, window=64))

    def test_far_positions_full_equals_step(self):
        cfg, m = small_hybrid(5)
        ref = MambaRef(cfg, hf_tensors(m, torch.float64), torch.float64)
        toks = list(range(40, 52))
        for position in (3, 10_000_000):
            torch.testing.assert_close(ref.forward(toks, position), ref.forward_steps(toks, position=position),
                                       rtol=1e-9, atol=1e-9)

    def test_rope_tables_are_float64_exact(self):
        inv = torch.tensor([10000.0 ** (-2.0 * i / 8) for i in range(4)], dtype=torch.float64)
        cos, _ = rope_tables(range(10_000_000, 10_000_001), inv, torch.float64)
        import math
        want = math.cos(10_000_000 * 1.0)  # inv_freq[0] = 1
        self.assertAlmostEqual(float(cos[0, 0]), want, places=9)
        # what a float32 angle would cost there: errors of a sizeable fraction of a radian
        pos = torch.arange(10_000_000, 10_000_064)
        naive = torch.cos(pos.float()[:, None] * inv.float()[None, :])
        exact, _ = rope_tables(range(10_000_000, 10_000_064), inv, torch.float64)
        self.assertGreater(float((naive.double() - exact[:, :4]).abs().max()), 1e-2)

    def test_hybrid_export_roundtrip(self):
        cfg, m = small_hybrid(6)
        with tempfile.TemporaryDirectory() as d:
            export.export_model(m.float(), d)
            ref = MambaRef.load(d, torch.float64)
            toks = list(range(250, 264)) + [72, 105]
            with torch.no_grad():
                got, _ = m.double()(torch.tensor([toks]))
            torch.testing.assert_close(ref.forward(toks), got[0], rtol=1e-6, atol=1e-6)


if __name__ == "__main__":
    unittest.main()
