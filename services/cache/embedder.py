"""The embedding model the cache keys on: a small protocol, and its Triton implementation."""

from __future__ import annotations

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


class TritonEmbedder:
    """The `embedder` ensemble on Triton (all-MiniLM-L6-v2, mean pooled, normalised)."""

    name = "minilm"
    dimension = io.HIDDEN_SIZE

    def __init__(self, triton: TritonConfig) -> None:
        self._models = LazyTritonModels(triton)

    async def embed(self, texts: list[str]) -> np.ndarray:
        try:
            return await self._models.get().embed(texts)
        except TritonError as exc:
            raise EmbedderUnavailableError(str(exc)) from exc

    async def close(self) -> None:
        await self._models.close()
