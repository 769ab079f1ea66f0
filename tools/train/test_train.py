"""Checks of the trainer's bookkeeping (needs Debian's python3-torch):

    /usr/bin/python3 -m unittest tools/train/test_train.py -v
"""
from __future__ import annotations

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from chat_format import VOCAB_SIZE  # noqa: E402
from mamba_model import MambaLM, hf_config  # noqa: E402
from conversations import COPY_FACTS, FACT_KEYS, FACT_KEYS_WITH_COPY  # noqa: E402
from train import insert_attention, is_decayed, value_accuracy, with_attention  # noqa: E402


class TrainBookkeepingTest(unittest.TestCase):
    def test_dynamics_and_embeddings_are_not_decayed(self):
        model = MambaLM(hf_config(16, 2, N=4, vocab=VOCAB_SIZE))
        decayed = {n for n, p in model.named_parameters() if is_decayed(n, p)}
        self.assertIn("backbone.layers.0.mixer.in_proj.weight", decayed)
        self.assertIn("backbone.layers.1.mixer.x_proj.weight", decayed)
        for name in ("backbone.layers.0.mixer.A_log", "backbone.layers.0.mixer.D", "backbone.embeddings.weight",
                     "backbone.layers.0.mixer.dt_proj.bias", "backbone.norm_f.weight"):
            self.assertNotIn(name, decayed)

    def test_value_accuracy_counts_values_and_their_first_tokens(self):
        # one lane, 6 targets; values (weight 10) are targets 0, 2-3 and 5, and target 0
        # continues a value begun in the previous chunk (wt_prev = 10)
        tgt = torch.tensor([[5, 6, 7, 8, 9, 3]])
        wt = torch.tensor([[10.0, 1, 10, 10, 1, 10]])
        wt_prev = torch.tensor([10.0])
        pred = torch.tensor([[5, 0, 7, 0, 0, 0]])  # right on targets 0 and 2
        logits = torch.nn.functional.one_hot(pred, 16).float()
        acc = value_accuracy(logits, tgt, wt, wt_prev)
        self.assertEqual(acc["value"], (2, 4))  # targets 0, 2, 3, 5 are values; 0 and 2 right
        self.assertEqual(acc["first"], (1, 2))  # first tokens: 2 and 5 (0 continues); 2 right


if __name__ == "__main__":
    unittest.main()

    def test_attention_inserted_into_a_trained_model_starts_as_the_identity(self):
        torch.manual_seed(0)
        source_cfg = hf_config(16, 2, N=4, vocab=VOCAB_SIZE)
        source = MambaLM(source_cfg)
        attention = {"layers": [1], "window": 4, "heads": 2, "kv_heads": 1, "rope_theta": 10000.0}
        cfg = with_attention(source_cfg, attention)
        self.assertEqual(cfg["layer_types"], ["mamba", "sliding_attention", "mamba"])
        self.assertEqual(cfg["num_hidden_layers"], 3)
        hybrid = MambaLM(cfg)
        weights = insert_attention(hybrid, source_cfg, cfg, {k: v for k, v in source.state_dict().items()})
        hybrid.load_state_dict(weights)
        self.assertTrue(torch.equal(weights["backbone.layers.2.mixer.A_log"], source.state_dict()["backbone.layers.1.mixer.A_log"]))
        tokens = torch.randint(0, VOCAB_SIZE, (2, 9))
        with torch.no_grad():
            torch.testing.assert_close(hybrid(tokens)[0], source(tokens)[0])
        with self.assertRaises(SystemExit):  # only into a pure model
            with_attention(cfg, attention)


class CopyFactsTest(unittest.TestCase):
    def test_copy_facts_are_opt_in_and_leave_the_default_data_alone(self):
        self.assertTrue(set(COPY_FACTS).isdisjoint(FACT_KEYS))
        self.assertEqual(sorted(FACT_KEYS_WITH_COPY), sorted([*FACT_KEYS, *COPY_FACTS]))
