"""The guard's jailbreak windows are the PII tagger's CHUNKS rows: the same tensors, so the trunk computes them once."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from services.common import model_io as io
from services.common.config import TritonConfig
from services.common.tokenizer import CHUNK_OVERLAP, TextTokenizer, Truncation
from services.common.triton import TritonModels

WORDS = [f"w{i}" for i in range(900)]


def word_tokenizer() -> TextTokenizer:
    """One token per word, so windows can be counted in words."""
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    return TextTokenizer(tokenizer)


class RecordingModels(TritonModels):
    """TritonModels whose Triton calls are recorded (model, ids) and answered with 0.5 everywhere."""

    def __init__(self) -> None:
        super().__init__(TritonConfig(grpc_port=1), word_tokenizer())
        self.sent: list[tuple[str, np.ndarray]] = []

    async def _infer_once(self, spec: io.ModelSpec, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.sent.append((spec.name, input_ids.copy()))
        dims = tuple(input_ids.shape[1] if d < 0 else d for d in spec.outputs[0].dims)
        return np.full((input_ids.shape[0], *dims), 0.5, dtype=np.float32)


def rows_sent(models: RecordingModels, model: str) -> list[tuple[int, ...]]:
    return sorted(tuple(row) for name, ids in models.sent if name == model for row in ids)


async def test_jailbreak_windows_are_the_pii_rows_of_a_long_text() -> None:
    long_text = " ".join(WORDS[:700])
    short_text = " ".join(WORDS[:40])
    models = RecordingModels()
    try:
        await models.tag_pii([short_text, long_text])
        windows = await models.jailbreak_window_scores([short_text, long_text])
    finally:
        await models.close()
    pii_rows = rows_sent(models, io.PII_TAGGER)
    jailbreak_rows = rows_sent(models, io.JAILBREAK_CLASSIFIER)
    chunks = word_tokenizer().encode([long_text], Truncation.CHUNKS)
    assert len(chunks) == 4 and CHUNK_OVERLAP == 64  # 700 tokens: windows of 254 starting every 190
    # The long text's windows are exactly the PII tagger's rows for it (the short text is scored whole only).
    assert jailbreak_rows == sorted(r for r in pii_rows if len(set(r) - {0}) > 45)
    assert len(jailbreak_rows) == 4
    assert [len(w) for w in windows] == [0, 4]


async def test_short_texts_send_no_window_request() -> None:
    models = RecordingModels()
    try:
        assert [len(w) for w in await models.jailbreak_window_scores(["w1 w2 w3", ""])] == [0, 0]
        assert [len(w) for w in await models.jailbreak_window_scores([])] == []
    finally:
        await models.close()
    assert models.sent == []
