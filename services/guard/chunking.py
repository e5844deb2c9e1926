"""Overlapping windows over long texts, so a classifier with a 256-token input sees all of a prompt.

Windows are cut on token boundaries when a tokenizer is at hand (the same tokenizer.json the
Triton client uses, so a window re-tokenizes to about `chunk_tokens` pieces), else on characters
at about four characters per token. Each window is a (start, end) code-point span of the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from services.common.model_io import MAX_TOKENS
from services.common.tokenizer import TextTokenizer, Truncation

# Token budget of the tokenizer used only for offsets: whole texts, never truncated.
UNLIMITED = 2**31 - 1

# English word pieces average about four characters; used only when no tokenizer is available.
CHARS_PER_TOKEN = 4
# A window start is moved back to the start of its word (at most this far) so that the word
# is not re-tokenized from its middle.
MAX_WORD_BACKTRACK = 32


class Chunker(Protocol):
    def windows(self, text: str) -> list[tuple[int, int]]: ...


def token_windows(
    offsets: Sequence[tuple[int, int]], chunk_tokens: int, overlap_tokens: int
) -> list[tuple[int, int]]:
    """Character spans of windows of `chunk_tokens` tokens, each starting `chunk - overlap` after the last."""
    n = len(offsets)
    if n == 0:
        return []
    step = max(1, chunk_tokens - overlap_tokens)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        stop = min(start + chunk_tokens, n)
        spans.append((int(offsets[start][0]), int(offsets[stop - 1][1])))
        if stop >= n:
            return spans
        start += step


def char_windows(length: int, chunk_chars: int, overlap_chars: int) -> list[tuple[int, int]]:
    """Spans of `chunk_chars` characters overlapping by `overlap_chars`; one span for a short text."""
    if length == 0:
        return []
    step = max(1, chunk_chars - overlap_chars)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        stop = min(start + chunk_chars, length)
        spans.append((start, stop))
        if stop >= length:
            return spans
        start += step


def word_start(text: str, index: int) -> int:
    """The start of the word `index` falls in; `index` itself when the word is implausibly long."""
    start = index
    while start > 0 and not text[start - 1].isspace():
        start -= 1
        if index - start > MAX_WORD_BACKTRACK:
            return index
    return start


class TokenChunker:
    """Windows on token boundaries of the shared tokenizer."""

    def __init__(self, tokenizer: TextTokenizer, chunk_tokens: int, overlap_tokens: int) -> None:
        # The encoder reads at most MAX_TOKENS - 2 pieces ([CLS] and [SEP] take two); longer windows
        # would be truncated by the client, so the configured size is capped there.
        self.chunk_tokens = min(chunk_tokens, MAX_TOKENS - 2)
        self.overlap_tokens = min(overlap_tokens, self.chunk_tokens - 1)
        # `tokenizer` must not truncate: the whole text's offsets are needed (see from_repository).
        self._tokenizer = tokenizer

    @classmethod
    def from_repository(cls, model_repository: Path, chunk_tokens: int, overlap_tokens: int) -> TokenChunker:
        return cls(TextTokenizer.from_repository(model_repository, max_tokens=UNLIMITED), chunk_tokens, overlap_tokens)

    def windows(self, text: str) -> list[tuple[int, int]]:
        if not text:
            return []
        batch = self._tokenizer.encode([text], Truncation.HEAD)
        length = int(batch.attention_mask[0].sum())
        offsets = batch.offsets[0][1 : length - 1]
        spans = token_windows(offsets, self.chunk_tokens, self.overlap_tokens)
        if len(spans) == 1:
            return [(0, len(text))]
        return [(word_start(text, start), end) for start, end in spans]


class CharChunker:
    """Windows on characters, for when no tokenizer file is available."""

    def __init__(self, chunk_tokens: int, overlap_tokens: int) -> None:
        self.chunk_chars = chunk_tokens * CHARS_PER_TOKEN
        self.overlap_chars = overlap_tokens * CHARS_PER_TOKEN

    def windows(self, text: str) -> list[tuple[int, int]]:
        return char_windows(len(text), self.chunk_chars, self.overlap_chars)
