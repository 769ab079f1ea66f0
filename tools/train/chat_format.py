"""The demo model's byte-level tokenizer and chat template (the runtime implements the same).

Token ids 0..255 are raw UTF-8 bytes; 256..259 are the special tokens below; 260..263
exist only to pad the vocabulary to a multiple of 8 and are never produced.
"""
from __future__ import annotations

SYSTEM, USER, ASSISTANT, END = 256, 257, 258, 259
SPECIAL = {SYSTEM: "<|system|>", USER: "<|user|>", ASSISTANT: "<|assistant|>", END: "<|end|>"}
VOCAB_SIZE = 264
ROLE_TOKEN = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
NL = 10

# Jinja form of the template for Hugging Face users (apply_chat_template).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def encode_text(s: str) -> list[int]:
    return list(s.encode("utf-8"))


def decode(ids: list[int]) -> str:
    out, buf = [], bytearray()
    for i in ids:
        if i < 256:
            buf.append(i)
        else:
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            out.append(SPECIAL.get(i, ""))
    out.append(buf.decode("utf-8", errors="replace"))
    return "".join(out)


def encode_message(role: str, content: str) -> list[int]:
    """`<|role|>content<|end|>\\n` — one message as the session absorbs it."""
    return [ROLE_TOKEN[role]] + encode_text(content) + [END, NL]


def encode_messages(messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    ids = []
    for m in messages:
        ids += encode_message(m["role"], m["content"])
    if add_generation_prompt:
        ids.append(ASSISTANT)
    return ids


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "ByteLevelChat",  # no tokenizer.json: bytes are ids 0..255
        "byte_level": True,
        "added_tokens_decoder": {str(i): {"content": s, "special": True, "lstrip": False, "rstrip": False,
                                          "normalized": False, "single_word": False}
                                 for i, s in SPECIAL.items()},
        "bos_token": None,
        "eos_token": "<|end|>",
        "pad_token": "<|end|>",
        "model_max_length": 1000000000,
        "chat_template": CHAT_TEMPLATE,
    }
