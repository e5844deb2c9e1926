"""The pair classifier the cache asks "does the stored question's answer serve the new one?": a protocol and
its Triton implementation (`cache_pair_classifier`, a head on the shared trunk)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from services.common.triton import (LazyTritonModels, ModelNotAvailableError, TritonError, TritonTimeoutError,
                                    TritonUnavailableError)


class PairModelUnavailableError(RuntimeError):
    """The pair classifier did not answer (Triton down, model not loaded, past the deadline).

    `reason` is a metrics label: timeout, unavailable or error.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class PairScorer(Protocol):
    async def same_scores(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """p("same") [len(pairs)] for (stored question, new question) pairs; raises PairModelUnavailableError."""
        ...


class TritonPairScorer:
    """`TritonModels.pair_same_scores`, one batched call per lookup, bounded by the served call's deadline."""

    def __init__(self, models: LazyTritonModels) -> None:
        self._models = models

    async def same_scores(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        try:
            return await self._models.get().pair_same_scores(pairs)
        except TritonTimeoutError as exc:
            raise PairModelUnavailableError("timeout", str(exc)) from exc
        except (ModelNotAvailableError, TritonUnavailableError) as exc:
            raise PairModelUnavailableError("unavailable", str(exc)) from exc
        except TritonError as exc:
            raise PairModelUnavailableError("error", str(exc)) from exc
