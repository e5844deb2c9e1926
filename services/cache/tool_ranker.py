"""How close each of a request's tools is to the conversation, by embedding; tool embeddings kept by digest."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from services.cache.embedder import Embedder

# Tools are few and repeat with every request of an agent: a bounded memory of their embeddings means
# each distinct tool text costs one encoder row, once.
TOOL_EMBEDDINGS_KEPT = 20_000


class ToolRanker:
    """Cosine similarity of tool texts to a query; the query is embedded per call, tools once per digest."""

    def __init__(self, embedder: Embedder, kept: int = TOOL_EMBEDDINGS_KEPT) -> None:
        self.embedder = embedder
        self.kept = kept
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    async def rank(self, query: str, tools: list[tuple[str, str]]) -> list[float]:
        """`tools`: (digest, text) pairs; one similarity per tool, in order. Raises EmbedderUnavailableError."""
        if not tools:
            return []
        missing = [(key, text) for key, text in dict(tools).items() if key not in self._vectors]
        vectors = await self.embedder.embed([query, *(text for _, text in missing)])
        query_vector = vectors[0]
        # This call's vectors, held apart from the bounded memory so an eviction mid-call cannot lose one.
        found = {key: self._vectors[key] for key, _ in tools if key in self._vectors}
        for (key, _), vector in zip(missing, vectors[1:]):
            found[key] = vector
            self._remember(key, vector)
        for key in found:
            if key in self._vectors:
                self._vectors.move_to_end(key)
        return [float(np.dot(query_vector, found[key])) for key, _ in tools]

    def _remember(self, key: str, vector: np.ndarray) -> None:
        self._vectors[key] = np.asarray(vector, dtype=np.float32)
        while len(self._vectors) > self.kept:
            self._vectors.popitem(last=False)
