"""The versioned prompt set (bench/prompts.jsonl) and the chat bodies built from it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PROMPTS_FILE = Path(__file__).resolve().parent / "prompts.jsonl"
SIZES = ("short", "medium", "long")
SIZE_LABELS = {"short": "~30 tokens", "medium": "~300 tokens", "long": "~2,000 chars"}


@dataclass(frozen=True)
class Prompt:
    id: str
    size: str
    domain: str
    kind: str  # benign, jailbreak, pii
    expect: str  # routed or blocked
    text: str


def load_prompts(path: Path = PROMPTS_FILE) -> list[Prompt]:
    return [Prompt(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


# Stamped by the load generator (bench/httpload.py) with a different letter code on every send, so that no
# two requests carry the same text: the trunk's row cache, the tokenizer's memory and the semantic cache
# would otherwise answer a replayed prompt from memory and flatter every figure. Letters only: digits
# could read as PII.
UNIQUE_MARK = "qqqqqqq"


def chat_body(text: str, model: str = "MoM", unique: bool = True) -> str:
    """An OpenAI chat body; `unique` (default) ends the text with a reference the load generator varies."""
    content = f"{text} (ref {UNIQUE_MARK})" if unique else text
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}]})
