"""The domain classifier behind the decision service: Triton's `domain_classifier` ensemble."""

from __future__ import annotations

from prometheus_client.metrics import Histogram

from services.common.config import TritonConfig
from services.common.model_io import DOMAIN_LABELS


class ClassifierUnavailableError(RuntimeError):
    """Triton (or the model) cannot answer; the front applies the decision's failure mode."""


class TritonDomainClassifier:
    labels = DOMAIN_LABELS

    def __init__(self, triton: TritonConfig, latency: Histogram) -> None:
        self.triton = triton
        self.latency = latency

    async def classify(self, texts: list[str]) -> list[list[float]]:
        raise ClassifierUnavailableError("the Triton client is not wired yet")
