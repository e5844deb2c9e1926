"""The benchmarks' load generator sends every request with a text of its own (no replay from memory)."""

from __future__ import annotations

import json

from bench.httpload import UNIQUE_MARK, stamped
from bench.prompts import UNIQUE_MARK as PROMPT_MARK
from bench.prompts import chat_body


def test_every_send_gets_a_different_letter_code_of_the_same_width() -> None:
    raw = b"POST / HTTP/1.1\r\ncontent-length: 60\r\n\r\n" + chat_body("What is 2+2?").encode()
    sent = {stamped(raw, n) for n in range(2000)}
    assert len(sent) == 2000 and all(len(r) == len(raw) for r in sent)
    body = json.loads(stamped(raw, 7).split(b"\r\n\r\n", 1)[1])
    text = body["messages"][0]["content"]
    assert text.startswith("What is 2+2? (ref ") and UNIQUE_MARK.decode() not in text
    assert not any(ch.isdigit() for ch in text.removeprefix("What is 2+2?"))  # digits could read as PII


def test_bodies_meant_to_repeat_stay_as_they_are() -> None:
    assert PROMPT_MARK.encode() == UNIQUE_MARK
    raw = chat_body("What is 2+2?", unique=False).encode()
    assert stamped(raw, 5) == raw
