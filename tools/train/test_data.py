"""Data and chat-format checks (pure Python; jinja2 optional):

    /usr/bin/python3 -m unittest tools/train/test_data.py -v
"""
from __future__ import annotations

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from chat_format import CHAT_TEMPLATE, decode, encode_messages  # noqa: E402
from conversations import FACTS, VALUE_WEIGHT, ProseSampler, drill_session, recall_probe, training_session  # noqa: E402

PROSE = ProseSampler(["\n\n".join(f"Paragraph {i} is here. It has two sentences of plain text, and then some more words."
                                  for i in range(200))])


class DataTest(unittest.TestCase):
    def test_sessions_are_deterministic(self):
        a = training_session(random.Random("s/1"), PROSE, 3000)
        b = training_session(random.Random("s/1"), PROSE, 3000)
        self.assertEqual(a, b)
        self.assertEqual(len(a[0]), 3000)
        self.assertEqual(len(a[1]), 3000)

    def test_answers_give_the_latest_value(self):
        ids, _ = training_session(random.Random("s/2"), PROSE, 8000)
        text = decode(ids)
        self.assertIn("<|assistant|>", text)
        # every answer in the session repeats the value most recently stated for its key
        latest: dict[str, str] = {}
        for line in text.split("\n"):
            for key, (_, states, questions, answer) in FACTS.items():
                prefix, suffix = answer.split("{v}")
                if line.startswith("<|assistant|>" + prefix) and line.endswith(suffix + "<|end|>"):
                    v = line[len("<|assistant|>" + prefix):-len(suffix + "<|end|>")]
                    if key in latest:
                        self.assertEqual(v, latest[key])
                for st in states:
                    p, s = st.split("{v}")
                    if line.startswith("<|user|>" + p) and line.endswith(s + "<|end|>"):
                        latest[key] = line[len("<|user|>" + p):-len(s + "<|end|>")]

    def test_only_recalled_values_weigh_more(self):
        for ids, w in (drill_session(random.Random("d/1"), PROSE, 4000, 300),
                       training_session(random.Random("s/3"), PROSE, 4000)):
            self.assertEqual(set(w), {1.0, VALUE_WEIGHT})
            runs, cur = [], []
            for i, wt in zip(ids, w):
                if wt > 1:
                    cur.append(i)
                elif cur:
                    runs.append(decode(cur))
                    cur = []
            self.assertGreater(len(runs), 5)
            text = decode(ids)
            for v in runs:  # each heavy run is a value the user stated before it was repeated
                stated = text.find(v)
                self.assertGreaterEqual(stated, 0)
                self.assertEqual(text.rfind("<|user|>", 0, stated) > text.rfind("<|assistant|>", 0, stated), True, v)

    def test_probe_distance_is_what_it_says(self):
        for d in (100, 1000, 4000):
            p = recall_probe(random.Random(f"p/{d}"), PROSE, d)
            self.assertGreaterEqual(p["distance_tokens"], d)
            self.assertLess(p["distance_tokens"], d + 40)
            msgs = p["prompt_messages"]
            fact_i = next(i for i, m in enumerate(msgs) if m["role"] == "user")
            between = encode_messages(msgs[fact_i + 1:-1])
            self.assertEqual(len(between), p["distance_tokens"])
            self.assertIn(p["expected"], msgs[fact_i]["content"])

    def test_template_matches_jinja(self):
        try:
            import jinja2
        except ImportError:
            self.skipTest("jinja2 not installed")
        msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi é"},
                {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"}]
        rendered = jinja2.Template(CHAT_TEMPLATE).render(messages=msgs, add_generation_prompt=True)
        self.assertEqual(rendered, decode(encode_messages(msgs, add_generation_prompt=True)))


if __name__ == "__main__":
    unittest.main()
