"""The cache's embedder runs the encoder once per text: the answer's write reuses the lookup's vector."""

from __future__ import annotations

import numpy as np

from services.cache.embedder import TritonEmbedder
from services.common.config import TritonConfig


class _FakeModels:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def get(self) -> _FakeModels:
        return self

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([np.full(384, float(len(t)), dtype=np.float32) for t in texts])


async def test_write_reuses_the_lookup_vector() -> None:
    embedder = TritonEmbedder(TritonConfig(), recent=2)
    fake = _FakeModels()
    embedder._models = fake  # type: ignore[assignment]
    lookup = await embedder.embed(["what is 2+2?"])
    write = await embedder.embed(["what is 2+2?", "new"])
    assert fake.calls == [["what is 2+2?"], ["new"]]
    np.testing.assert_array_equal(write[0], lookup[0])
    await embedder.embed(["third"])  # capacity 2: the oldest entry goes
    await embedder.embed(["what is 2+2?"])
    assert fake.calls[-1] == ["what is 2+2?"]
    assert (await embedder.embed([])).shape == (0, 384)
