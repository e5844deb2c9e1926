"""The domain classifier behind the decision service: Triton's `domain_classifier` ensemble."""

from __future__ import annotations

import time

from prometheus_client.metrics import Histogram

from services.common.config import TritonConfig
from services.common.model_io import DOMAIN_LABELS
from services.common.triton import LazyTritonModels, TritonError


class ClassifierUnavailableError(RuntimeError):
    """Triton (or the model) cannot answer; the front applies the decision's failure mode."""


class TritonDomainClassifier:
    """Adapts TritonModels.classify_domain to the decider's DomainClassifier protocol."""

    labels = DOMAIN_LABELS

    def __init__(self, triton: TritonConfig, latency: Histogram) -> None:
        self.latency = latency
        self._models = LazyTritonModels(triton)

    async def classify(self, texts: list[str]) -> list[list[float]]:
        started = time.perf_counter()
        try:
            _, probabilities = await self._models.get().classify_domain(texts)
        except TritonError as exc:
            raise ClassifierUnavailableError(f"domain classifier unavailable: {exc}") from None
        finally:
            self.latency.observe(time.perf_counter() - started)
        return probabilities.tolist()

    async def close(self) -> None:
        await self._models.close()
