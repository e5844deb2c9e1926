"""Truncation policies, offsets and BIO decoding of the shared tokenizer wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.model_io import MAX_TOKENS, PII_BIO_LABELS
from services.common.tokenizer import (
    LENGTH_BUCKETS,
    EntitySpan,
    TextTokenizer,
    TokenizerNotFoundError,
    Truncation,
    bucket_width,
    decode_bio,
    merge_chunk_spans,
)
from services.models.encoder_export import base_model_dir


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.from_file(base_model_dir() / "tokenizer.json")


def test_short_texts_are_padded_with_offsets(tokenizer: TextTokenizer) -> None:
    batch = tokenizer.encode(["Hello John", "x"])
    assert batch.input_ids.shape == (2, 32)  # the smallest length bucket
    assert batch.input_ids[0, 0] == 101 and batch.input_ids[0, 3] == 102  # [CLS] ... [SEP]
    assert batch.attention_mask[:, :4].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert not batch.attention_mask[:, 4:].any() and not batch.input_ids[:, 4:].any()
    assert batch.offsets[0, 2].tolist() == [6, 10]


def test_long_prompt_keeps_head_and_tail(tokenizer: TextTokenizer) -> None:
    text = " ".join(f"w{i}" for i in range(3000))
    batch = tokenizer.encode([text], Truncation.HEAD_TAIL)
    assert batch.input_ids.shape == (1, MAX_TOKENS)
    last_word = text[batch.offsets[0, MAX_TOKENS - 2, 0] : batch.offsets[0, MAX_TOKENS - 2, 1]]
    assert text.endswith(last_word)
    assert batch.offsets[0, 1, 0] == 0


def test_chunks_cover_the_whole_text(tokenizer: TextTokenizer) -> None:
    text = "word " * 3000
    batch = tokenizer.encode([text, "short"], Truncation.CHUNKS)
    rows = batch.text_index.tolist()
    assert rows.count(0) > 10 and rows.count(1) == 1
    assert batch.offsets[rows.count(0) - 1].max() == len(text.rstrip())


def test_missing_tokenizer_says_how_to_fix(tmp_path) -> None:
    with pytest.raises(TokenizerNotFoundError, match="switchyard models build"):
        TextTokenizer.from_repository(tmp_path)


def test_decode_bio_merges_word_pieces_and_entities() -> None:
    labels = PII_BIO_LABELS
    text = "Ms. Mackay in Paris"
    # [CLS] ms . mack ##ay in paris [SEP]
    offsets = np.array([[0, 0], [0, 2], [2, 3], [4, 8], [8, 10], [11, 13], [14, 19], [0, 0]])
    words = np.array([-1, 0, 1, 2, 2, 3, 4, -1])
    tags = ["O", "B-TITLE", "O", "B-PERSON", "B-PERSON", "O", "B-LOCATION", "O"]
    probs = np.full((8, len(labels)), 0.01, dtype=np.float32)
    for t, tag in enumerate(tags):
        probs[t, labels.index(tag)] = 0.9
    probs[2, labels.index("I-TITLE")] = 0.95  # the glued "." continues the title
    spans = decode_bio(offsets, probs, np.ones(8, dtype=np.int64), labels, words)
    assert [(text[s.start : s.end], s.label) for s in spans] == [("Ms.", "TITLE"), ("Mackay", "PERSON"), ("Paris", "LOCATION")]


def test_merge_chunk_spans_drops_duplicates() -> None:
    spans = [EntitySpan(10, 20, "PERSON", 0.9), EntitySpan(10, 20, "PERSON", 0.8), EntitySpan(30, 35, "PERSON", 0.7)]
    assert merge_chunk_spans(spans) == [EntitySpan(10, 20, "PERSON", 0.9), EntitySpan(30, 35, "PERSON", 0.7)]


def test_rows_are_padded_to_length_buckets(tokenizer: TextTokenizer) -> None:
    assert [bucket_width(n) for n in (1, 16, 17, 64, 65, 200, 256, 300)] == [32, 32, 32, 64, 128, 256, 256, 300]
    text = "The quick brown fox jumps over the lazy dog. " * 4
    alone = tokenizer.encode([text])
    together = tokenizer.encode([text, "short"])
    # The same text is the same tensor whatever it is batched with (here both pad to 64).
    assert alone.input_ids.shape[1] in LENGTH_BUCKETS
    np.testing.assert_array_equal(alone.input_ids[0], together.input_ids[0])


def test_recent_texts_are_word_pieced_once(tokenizer: TextTokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The guard encodes one prompt four ways at once; the second to fourth reuse the word pieces.
    text = "Email jane.doe@example.com about the 3 invoices. " * 30
    first = {t: tokenizer.encode([text, "short"], t) for t in Truncation}
    calls: list[list[str]] = []
    inner = tokenizer._tokenizer
    monkeypatch.setattr(tokenizer, "_tokenizer", type("Counting", (), {
        "encode_batch": lambda self, texts, **kw: calls.append(texts) or inner.encode_batch(texts, **kw)})())
    for truncation, batch in first.items():
        again = tokenizer.encode([text, "short"], truncation)
        for name in ("input_ids", "attention_mask", "offsets", "text_index", "word_ids"):
            np.testing.assert_array_equal(getattr(again, name), getattr(batch, name))
    assert calls == []
    tokenizer.encode(["a text not seen before", text], Truncation.CHUNKS)
    assert calls == [["a text not seen before"]]


def test_an_mpnet_vocabulary_gets_its_declared_special_tokens() -> None:
    """MPNet's vocabulary also holds [CLS]/[SEP]/[PAD] as ordinary words: the declared <s>, </s>, <pad> win."""
    from tokenizers import AddedToken, Tokenizer, models

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "[PAD]": 4, "[CLS]": 5, "[SEP]": 6, "hello": 7}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in ("<s>", "<pad>", "</s>", "<unk>")])
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer.pre_tokenizer = Whitespace()
    batch = TextTokenizer(tokenizer).encode(["hello"])
    assert batch.input_ids[0, :3].tolist() == [0, 7, 2]
    assert set(batch.input_ids[0, 3:].tolist()) == {1}
