"""Synthetic multi-turn sessions that teach the demo model to remember what it was told.

A session is one long stream of chat messages, absorbed into the recurrent state turn
after turn. The user states facts ("My locker code is 4812."), then talks about other
things for a long while (shares passages of Austen, asks the assistant to continue them,
states other facts that act as distractors, sometimes changes a fact: "The meeting moved
to Tuesday."), and asks about a fact much later; the assistant answers with the latest
value. Everything is drawn from a seeded random.Random, so a seed gives the same session.

The answer always restates the question's key ("Your locker code is 4812.") so the model
only has to learn one thing well: copy the value last bound to that key.
"""
from __future__ import annotations

import random

from chat_format import encode_message, encode_text, ASSISTANT, END, NL

NAMES = ["Alice", "Bruno", "Chloe", "Dmitri", "Elena", "Farah", "George", "Hannah", "Ivan", "Julia",
         "Kenji", "Laila", "Marco", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Samir", "Tessa",
         "Umar", "Vera", "Walter", "Yusuf", "Zoe", "Ada", "Boris", "Clara", "Diego", "Emil"]
PETS = ["Biscuit", "Pepper", "Rex", "Luna", "Milo", "Daisy", "Shadow", "Mochi", "Bear", "Ziggy",
        "Pickle", "Nala", "Rocky", "Olive", "Toby", "Maple"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "teal", "crimson", "silver",
           "turquoise", "indigo", "maroon", "navy", "lavender", "gold", "pink"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Kyoto", "Lima", "Dublin", "Prague", "Hanoi", "Denver",
          "Cairo", "Quebec", "Seville", "Krakow", "Perth", "Bergen", "Tbilisi", "Munich", "Austin"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WORDS = ["falcon", "harbor", "meadow", "cobalt", "walnut", "ember", "juniper", "canyon", "velvet",
         "pebble", "orchid", "thunder", "lantern", "saffron", "glacier", "willow"]


def _digits(r, n):
    return "".join(r.choice("0123456789") for _ in range(n))


# key: (value generator, statements, questions, answer). {v} is the value.
FACTS = {
    "locker code": (lambda r: _digits(r, 4),
                    ["My locker code is {v}.", "Remember this: my locker code is {v}.", "Note that my locker code is {v}."],
                    ["What is my locker code?", "What was my locker code again?", "Can you remind me of my locker code?"],
                    "Your locker code is {v}."),
    "meeting day": (lambda r: r.choice(DAYS),
                    ["The meeting moved to {v}.", "Our meeting is on {v}.", "Heads up, the meeting is now on {v}."],
                    ["What day is the meeting?", "When is the meeting?", "Which day did the meeting move to?"],
                    "The meeting is on {v}."),
    "sister's name": (lambda r: r.choice(NAMES),
                      ["My sister's name is {v}.", "My sister is called {v}."],
                      ["What is my sister's name?", "What is my sister called?"],
                      "Your sister's name is {v}."),
    "favourite colour": (lambda r: r.choice(COLOURS),
                         ["My favourite colour is {v}.", "I love {v}, it is my favourite colour."],
                         ["What is my favourite colour?", "Which colour do I like best?"],
                         "Your favourite colour is {v}."),
    "hotel city": (lambda r: r.choice(CITIES),
                   ["I am staying at a hotel in {v}.", "My hotel is in {v} this week."],
                   ["Which city is my hotel in?", "Where is my hotel?"],
                   "Your hotel is in {v}."),
    "flight number": (lambda r: r.choice(["BA", "LH", "AF", "KL", "IB", "SK", "TP", "AZ"]) + _digits(r, 3),
                      ["My flight number is {v}.", "I am flying on flight {v}."],
                      ["What is my flight number?", "Which flight am I on?"],
                      "Your flight number is {v}."),
    "parking spot": (lambda r: r.choice("ABCDEFGH") + _digits(r, 2),
                     ["I parked in spot {v}.", "My car is in parking spot {v}."],
                     ["Where did I park?", "Which parking spot is my car in?"],
                     "You parked in spot {v}."),
    "dog's name": (lambda r: r.choice(PETS),
                   ["My dog is called {v}.", "We named our dog {v}."],
                   ["What is my dog called?", "What is my dog's name?"],
                   "Your dog is called {v}."),
    "room number": (lambda r: _digits(r, 3),
                    ["My room number is {v}.", "I am in room {v}."],
                    ["What is my room number?", "Which room am I in?"],
                    "Your room number is {v}."),
    "wifi password": (lambda r: r.choice(WORDS) + _digits(r, 2),
                      ["The wifi password is {v}.", "Our wifi password is {v}."],
                      ["What is the wifi password?", "Remind me of the wifi password."],
                      "The wifi password is {v}."),
    "best friend": (lambda r: r.choice(NAMES),
                    ["My best friend is {v}.", "My best friend's name is {v}."],
                    ["Who is my best friend?", "What is my best friend's name?"],
                    "Your best friend is {v}."),
    "birthday month": (lambda r: r.choice(MONTHS),
                       ["My birthday is in {v}.", "I was born in {v}."],
                       ["When is my birthday?", "Which month is my birthday?"],
                       "Your birthday is in {v}."),
    "bike lock": (lambda r: _digits(r, 3),
                  ["The combination of my bike lock is {v}.", "My bike lock code is {v}."],
                  ["What is my bike lock code?", "What is the combination of my bike lock?"],
                  "Your bike lock code is {v}."),
    "train platform": (lambda r: str(r.randint(1, 19)),
                       ["My train leaves from platform {v}.", "The train is on platform {v}."],
                       ["Which platform is my train on?", "What platform does my train leave from?"],
                       "Your train leaves from platform {v}."),
}
FACT_KEYS = sorted(FACTS)


def _made_up_name(r):
    """A pronounceable name that is in no list, so it can only be copied, not recalled from training."""
    syllables = [r.choice("bcdfghjklmnprstvz") + r.choice("aeiou") + r.choice(["", "", "n", "r", "l"]) for _ in range(r.randint(2, 3))]
    return "".join(syllables).capitalize()


# Facts whose values are in no list (any length of digits, made-up names, random codes): the
# only way to repeat them is to copy them exactly from what was said. Off by default (the
# shipped pure-Mamba demo was trained without them; --copy-facts in train.py), so the data of
# earlier runs stays the same byte for byte.
COPY_FACTS = {
    "order number": (lambda r: _digits(r, r.randint(5, 10)),
                     ["My order number is {v}.", "The order number is {v}."],
                     ["What is my order number?", "What was the order number?"],
                     "Your order number is {v}."),
    "cousin's name": (_made_up_name,
                      ["My cousin's name is {v}.", "My cousin is called {v}."],
                      ["What is my cousin's name?", "What is my cousin called?"],
                      "Your cousin's name is {v}."),
    "booking reference": (lambda r: "".join(r.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(r.randint(5, 8))),
                          ["The booking reference is {v}.", "My booking reference is {v}."],
                          ["What is the booking reference?", "Remind me of the booking reference."],
                          "The booking reference is {v}."),
}
FACTS.update(COPY_FACTS)
FACT_KEYS_WITH_COPY = sorted(FACTS)

ACKS = ["Got it. {a}", "Noted. {a}", "I will remember that. {a}", "Okay. {a}"]
PROSE_ASKS = ["Here is a passage I am reading:\n", "What do you think of this?\n", "I found this in an old novel:\n",
              "Listen to this.\n", ""]
PROSE_REPLIES = ["What a lovely passage.", "Thank you for sharing that.", "Austen had a sharp eye for manners.",
                 "That is a vivid scene.", "I enjoyed reading that.", "The sentences are beautifully balanced."]
CONTINUE_ASKS = ["Please continue this text:\n", "Continue the story:\n", "What comes next?\n"]
SMALL_TALK = [
    ("How are you today?", "I am well, thank you. How can I help?"),
    ("Thanks!", "You are welcome."),
    ("Tell me something about the weather.", "Weather changes quickly; a light coat is rarely a bad idea."),
    ("Any tips for sleeping better?", "Keep a regular schedule, avoid screens late, and keep the room cool."),
    ("What should I cook tonight?", "A simple pasta with garlic, olive oil and greens is quick and good."),
    ("I am a bit tired.", "Take a short break and drink some water."),
    ("Can you recommend a book?", "Pride and Prejudice is a fine place to start."),
    ("Let's talk about something else.", "Of course. What would you like to talk about?"),
    ("Hello!", "Hello! What can I do for you?"),
    ("What is two plus two?", "Two plus two is four."),
]
SYSTEMS = ["You are a helpful assistant with a long memory.", "You are a friendly assistant.",
           "Remember what the user tells you."]


class ProseSampler:
    """Random passages (whole sentences) from a list of texts."""

    def __init__(self, texts: list[str]):
        self.paras = [p for t in texts for p in t.split("\n\n") if len(p) > 80 and not p.isupper()]

    def passage(self, r: random.Random, max_chars: int) -> str:
        i = r.randrange(len(self.paras))
        out = ""
        while len(out) < max_chars and i < len(self.paras):
            out = (out + "\n\n" + self.paras[i]) if out else self.paras[i]
            i += 1
        if len(out) > max_chars:  # cut at a sentence end when one is available
            cut = out.rfind(". ", 0, max_chars)
            out = out[:cut + 1] if cut > max_chars // 3 else out[:max_chars]
        return out


def _filler(r: random.Random, prose: ProseSampler, max_chars: int) -> list[dict]:
    kind = r.random()
    if kind < 0.45:
        p = prose.passage(r, r.randint(100, max_chars))
        return [{"role": "user", "content": r.choice(PROSE_ASKS) + p},
                {"role": "assistant", "content": r.choice(PROSE_REPLIES)}]
    if kind < 0.8:
        p = prose.passage(r, r.randint(200, max_chars))
        cut = p.rfind(". ", 0, len(p) // 2)
        cut = cut + 2 if cut > 0 else len(p) // 2
        return [{"role": "user", "content": r.choice(CONTINUE_ASKS) + p[:cut]},
                {"role": "assistant", "content": p[cut:]}]
    q, a = r.choice(SMALL_TALK)
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def _state(r, key, v):
    return r.choice(FACTS[key][1]).format(v=v)


def _ask(r, key):
    return r.choice(FACTS[key][2])


def _answer(key, v):
    return FACTS[key][3].format(v=v)


VALUE_WEIGHT = 10.0


def _add_valued_reply(ids: list[int], w: list[float], template: str, v: str) -> None:
    """An assistant message: `template` with `{v}` replaced by the value, whose tokens weigh
    VALUE_WEIGHT; the rest weighs 1."""
    head, tail = template.split("{v}")
    parts = [([ASSISTANT] + encode_text(head), 1.0), (encode_text(v), VALUE_WEIGHT),
             (encode_text(tail) + [END, NL], 1.0)]
    for t, weight in parts:
        ids.extend(t)
        w.extend([weight] * len(t))


def _add_message(ids: list[int], w: list[float], role: str, content: str) -> None:
    t = encode_message(role, content)
    ids.extend(t)
    w.extend([1.0] * len(t))


def _add_fact(ids: list[int], w: list[float], r: random.Random, key: str, v: str) -> None:
    """The user states a fact; the assistant acknowledges it, restating the value. That value
    is a copy from a few tokens back: the shortest-range version of the recall skill, and the
    first rung of the curriculum, so its tokens weigh as much as an answer's."""
    _add_message(ids, w, "user", _state(r, key, v))
    _add_valued_reply(ids, w, r.choice(ACKS).format(a=FACTS[key][3]), v)


def _add_question(ids: list[int], w: list[float], r: random.Random, key: str, v: str) -> None:
    """The user asks about `key`; the assistant answers with its latest value. Only the value's
    tokens weigh more: the rest of the answer ("Your locker code is ") follows from the
    question alone, while the value is the one place where the loss says whether the fact was
    remembered. Without this the recall signal drowns in the language-modelling loss (the
    first demo model, trained with the whole answer weighted 4x, learnt the format but
    recalled at chance)."""
    _add_message(ids, w, "user", _ask(r, key))
    _add_valued_reply(ids, w, FACTS[key][3], v)


def drill_session(r: random.Random, prose: ProseSampler, n_tokens: int, max_filler_chars: int,
                  fact_keys: list[str] = FACT_KEYS) -> tuple[list[int], list[float]]:
    """A dense recall drill: facts stated, changed and asked about every few messages, with
    short fillers between them (multi-query associative recall in the chat format). Many
    questions per session give the recall skill many gradient signals per step; the fillers'
    length (max_filler_chars) sets the distances, which the curriculum grows."""
    ids: list[int] = []
    w: list[float] = []
    known: dict[str, str] = {}
    if r.random() < 0.5:
        _add_message(ids, w, "system", r.choice(SYSTEMS))
    while len(ids) < n_tokens:
        x = r.random()
        if x < 0.3 or not known:  # a new fact, or a new value for a known key
            k = r.choice(fact_keys)
            known[k] = FACTS[k][0](r)
            _add_fact(ids, w, r, k, known[k])
        elif x < 0.7:
            k = r.choice(sorted(known))
            _add_question(ids, w, r, k, known[k])
        elif r.random() < 0.4:
            q, a = r.choice(SMALL_TALK)
            _add_message(ids, w, "user", q)
            _add_message(ids, w, "assistant", a)
        else:
            _add_message(ids, w, "user", r.choice(PROSE_ASKS) + prose.passage(r, r.randint(40, max_filler_chars)))
            _add_message(ids, w, "assistant", r.choice(PROSE_REPLIES))
    return ids[:n_tokens], w[:n_tokens]


def training_session(r: random.Random, prose: ProseSampler, n_tokens: int,
                     fact_keys: list[str] = FACT_KEYS) -> tuple[list[int], list[float]]:
    """One session of about n_tokens tokens (cut to exactly n_tokens): ids and per-token loss weights.

    Facts are stated mostly early, asked about at any later point, so question-to-fact
    distances cover the whole session; recalled values' tokens weigh more because they are
    the rare tokens that carry the skill we want.
    """
    ids: list[int] = []
    w: list[float] = []
    known: dict[str, str] = {}
    if r.random() < 0.5:
        _add_message(ids, w, "system", r.choice(SYSTEMS))
    n_facts = r.randint(2, 6)
    keys = r.sample(fact_keys, n_facts)
    max_chars = r.choice([300, 600, 1200])
    while len(ids) < n_tokens:
        x = r.random()
        early = len(ids) < n_tokens * 0.25
        if keys and (x < (0.35 if early else 0.06)):
            k = keys.pop()
            known[k] = FACTS[k][0](r)
            _add_fact(ids, w, r, k, known[k])
        elif known and x < (0.45 if early else 0.2):
            k = r.choice(sorted(known))
            if r.random() < 0.12:  # the fact changes; from now on the new value is the answer
                known[k] = FACTS[k][0](r)
                _add_fact(ids, w, r, k, known[k])
            else:
                _add_question(ids, w, r, k, known[k])
        else:
            for m in _filler(r, prose, max_chars):
                _add_message(ids, w, m["role"], m["content"])
    return ids[:n_tokens], w[:n_tokens]


def recall_probe(r: random.Random, prose: ProseSampler, distance_tokens: int) -> dict:
    """A fact, then about distance_tokens tokens of other conversation (with distractor
    facts of other kinds), then the question. Distance counts the tokens strictly between
    the end of the fact's message and the start of the question's message."""
    k = r.choice(FACT_KEYS)
    v = FACTS[k][0](r)
    msgs = []
    if r.random() < 0.5:
        msgs.append({"role": "system", "content": r.choice(SYSTEMS)})
    msgs.append({"role": "user", "content": _state(r, k, v)})
    between: list[dict] = [{"role": "assistant", "content": r.choice(ACKS).format(a=_answer(k, v))}]
    others = [o for o in FACT_KEYS if o != k]
    r.shuffle(others)

    def size(ms):
        return sum(len(encode_message(m["role"], m["content"])) for m in ms)

    while True:
        remaining = distance_tokens - size(between)
        if remaining <= 0:
            break
        if others and r.random() < 0.15:
            o = others.pop()
            ov = FACTS[o][0](r)
            block = [{"role": "user", "content": _state(r, o, ov)},
                     {"role": "assistant", "content": r.choice(ACKS).format(a=_answer(o, ov))}]
        else:
            block = _filler(r, prose, 1200)
        if size(block) > remaining:
            # close the gap with a passage of the right length so distances are accurate
            overhead = size([{"role": "user", "content": ""}, {"role": "assistant", "content": "Thank you."}])
            n = max(remaining - overhead, 1)
            p = prose.passage(r, n + 200).encode("utf-8")[:n].decode("utf-8", errors="ignore")
            block = [{"role": "user", "content": p}, {"role": "assistant", "content": "Thank you."}]
        between.extend(block)
    msgs.extend(between)
    msgs.append({"role": "user", "content": _ask(r, k)})
    return {"distance_tokens": size(between), "fact_key": k, "expected": v, "prompt_messages": msgs}


def _misspell(r: random.Random, name: str) -> str:
    """The name with two adjacent inner letters swapped ("Biscuit" -> "Bsicuit"): a name in no list."""
    while True:
        i = r.randrange(1, len(name) - 2)
        out = name[:i] + name[i + 1] + name[i] + name[i + 2:]
        if out != name and out not in NAMES and out not in PETS:
            return out


COPY_PROBE_KINDS = ("8-digit code", "misspelt name", "8-digit order number", "made-up name")


def copy_probe(r: random.Random, kind: str, where: str) -> dict:
    """Exact short-range copying of a value the model cannot have memorised: an 8-digit locker
    code (trained locker codes have 4 digits) or a misspelt name of a sister, best friend or dog
    (both against a habit the training data taught), and, in formats the copy facts train
    (train.py --copy-facts), an 8-digit order number or a made-up cousin's name.
    `where` = "ack": the reply right after the fact must restate it; "question": the fact, its
    acknowledgement (given), then the question, whose answer must contain it."""
    if kind == "8-digit code":
        k, v = "locker code", _digits(r, 8)
    elif kind == "8-digit order number":
        k, v = "order number", _digits(r, 8)
    elif kind == "made-up name":
        k, v = "cousin's name", _made_up_name(r)
    else:
        k = r.choice(["sister's name", "best friend", "dog's name"])
        v = _misspell(r, r.choice([n for n in (PETS if k == "dog's name" else NAMES) if len(n) >= 5]))
    msgs = [{"role": "user", "content": _state(r, k, v)}]
    if where == "question":
        msgs.append({"role": "assistant", "content": r.choice(ACKS).format(a=_answer(k, v))})
        msgs.append({"role": "user", "content": _ask(r, k)})
    distance = sum(len(encode_message(m["role"], m["content"])) for m in msgs[1:-1]) if where == "question" else 0
    return {"kind": f"{kind}, {'acknowledgement' if where == 'ack' else 'question right after'}",
            "distance_tokens": distance, "fact_key": k, "expected": v, "prompt_messages": msgs}
