"""Overlapping windows over long prompts."""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from services.common.tokenizer import TextTokenizer
from services.guard.chunking import CharChunker, TokenChunker, char_windows, token_windows, word_start


def word_tokenizer(words: list[str]) -> TextTokenizer:
    """A whitespace word-level tokenizer: one token per word, so windows can be counted in words."""
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, **{w: i + 3 for i, w in enumerate(sorted(set(words)))}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    return TextTokenizer(tokenizer, max_tokens=2**31 - 1)


def test_token_windows_overlap_and_cover() -> None:
    offsets = [(i * 2, i * 2 + 1) for i in range(10)]  # ten one-character tokens, a space apart
    assert token_windows(offsets, 4, 1) == [(0, 7), (6, 13), (12, 19)]
    assert token_windows(offsets, 20, 5) == [(0, 19)]
    assert token_windows([], 4, 1) == []


def test_char_windows() -> None:
    assert char_windows(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert char_windows(3, 4, 2) == [(0, 3)]
    assert char_windows(0, 4, 2) == []


def test_every_token_is_inside_a_window_with_its_neighbours() -> None:
    words = [f"w{i}" for i in range(1000)]
    text = " ".join(words)
    chunker = TokenChunker(word_tokenizer(words), chunk_tokens=100, overlap_tokens=20)
    windows = chunker.windows(text)
    assert windows[0][0] == 0 and windows[-1][1] == len(text)
    for (_, end), (start, _) in zip(windows, windows[1:]):
        assert start < end  # consecutive windows overlap
        assert len(text[start:end].split()) == 20
    assert all(len(text[s:e].split()) <= 100 for s, e in windows)


def test_window_size_capped_at_the_encoder_input() -> None:
    chunker = TokenChunker(word_tokenizer(["a"]), chunk_tokens=512, overlap_tokens=64)
    assert chunker.chunk_tokens == 254


def test_short_text_is_one_window() -> None:
    chunker = TokenChunker(word_tokenizer(["hello", "world"]), chunk_tokens=100, overlap_tokens=20)
    assert chunker.windows("hello world") == [(0, 11)]
    assert chunker.windows("") == []


def test_window_starts_at_a_word_start() -> None:
    assert word_start("hello wonderful world", 9) == 6
    assert word_start("x" * 100, 90) == 90  # no word start in reach: keep the cut


def test_char_chunker_uses_four_chars_per_token() -> None:
    assert CharChunker(10, 2).windows("x" * 100)[:2] == [(0, 40), (32, 72)]
