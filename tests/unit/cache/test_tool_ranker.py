"""The cache service's tool ranker: similarities in request order, each tool text embedded once."""

from __future__ import annotations

import numpy as np

from services.cache.tool_ranker import ToolRanker


class CountingEmbedder:
    name, dimension = "fake", 2

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(texts)
        vectors = {"q": [1.0, 0.0], "a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.6, 0.8]}
        return np.array([vectors[t] for t in texts], dtype=np.float32)


async def test_rank_and_cache_by_key() -> None:
    embedder = CountingEmbedder()
    ranker = ToolRanker(embedder, kept=2)
    assert await ranker.rank("q", [("ka", "a"), ("kb", "b")]) == [1.0, 0.0]
    scores = await ranker.rank("q", [("kb", "b"), ("kc", "c"), ("ka", "a")])
    assert np.allclose(scores, [0.0, 0.6, 1.0])
    assert embedder.calls == [["q", "a", "b"], ["q", "c"]]
    assert await ranker.rank("q", []) == []
