"""The embedding model the cache keys on: a small protocol, and its Triton implementation."""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import numpy as np

from services.common import model_io as io
from services.common.config import TritonConfig
from services.common.triton import LazyTritonModels, TritonError


class EmbedderUnavailableError(RuntimeError):
    """The embedding model cannot answer now (Triton down, model not loaded, timeout)."""


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors; `name` and `dimension` pick the collection."""

    name: str
    dimension: int

    async def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dimension] float32; raises EmbedderUnavailableError."""
        ...


# Vectors of recent lookups, so that writing the answer reuses the lookup's vector instead of
# running the encoder again (1.5 KB each).
RECENT_VECTORS = 4096


class TritonEmbedder:
    """The `embedder` ensemble on Triton (all-MiniLM-L6-v2, mean pooled, normalised)."""

    name = "minilm"
    dimension = io.HIDDEN_SIZE

    def __init__(self, triton: TritonConfig, recent: int = RECENT_VECTORS,
                 models: LazyTritonModels | None = None) -> None:
        # `models`: a client shared with the pair classifier (services/cache/pair_model.py); closed here.
        self._models = models or LazyTritonModels(triton)
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._capacity = recent

    async def embed(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._recent))
        if missing:
            try:
                vectors = await self._models.get().embed(missing)
            except TritonError as exc:
                raise EmbedderUnavailableError(str(exc)) from exc
            for text, vector in zip(missing, vectors):
                self._recent[text] = vector
        out = np.stack([self._recent[t] for t in texts]) if texts else np.zeros((0, self.dimension), np.float32)
        for text in texts:
            self._recent.move_to_end(text)
        while len(self._recent) > self._capacity:
            self._recent.popitem(last=False)
        return out

    async def close(self) -> None:
        await self._models.close()
