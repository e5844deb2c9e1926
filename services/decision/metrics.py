"""Prometheus metrics of the decision service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


# Seconds per classifier call (the same buckets as the guard's and the front's latency histograms).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class DecisionMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter("switchyard_decision_decisions", "Decisions by how they were made.",
                                 ["source", "category", "model"], registry=r)
        self.category_classifications = Counter("llm_category_classifications", "Classified requests by category.",
                                                ["category"], registry=r)
        self.reasoning = Counter("llm_reasoning_decisions", "Reasoning mode chosen per model.",
                                 ["category", "model", "enabled"], registry=r)
        self.confidence = Histogram("switchyard_decision_confidence", "Top category probability.",
                                    buckets=CONFIDENCE_BUCKETS, registry=r)
        self.classifier_latency = Histogram("llm_classifier_latency_seconds", "Triton classifier call latency.",
                                            ["classifier"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("switchyard_decision_errors", "Decide calls that failed, by reason.",
                              ["reason"], registry=r)
