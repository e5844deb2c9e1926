"""Prometheus metrics of the guard, on the guard's own registry; labels are types, never values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.model_io import PII_ENTITY_TYPES, SAFETY_LABELS
from services.guard.patterns import PATTERN_TYPES
from services.guard.safety import SafetyState, SafetyVerdict

# Label values are limited to known types so that a misbehaving model cannot grow the series count.
KNOWN_PII_TYPES = frozenset(PII_ENTITY_TYPES) | frozenset(PATTERN_TYPES)
OTHER = "OTHER"

JAILBREAK = "jailbreak"
PII_TAGGER = "pii_tagger"
PII_PATTERNS = "pii_patterns"
SAFETY = "safety"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GuardMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.pii_violations = Counter(
            "llm_pii_violations", "Checked requests in which PII of this type was found",
            ["pii_type"], registry=self.registry)
        self.pii_blocks = Counter(
            "switchyard_guard_pii_blocks", "Requests the guard marked as blocked by pii.block_types",
            registry=self.registry)
        self.jailbreak_blocks = Counter(
            "switchyard_guard_jailbreak_blocks", "Requests the guard marked as jailbreak / prompt injection",
            registry=self.registry)
        self.checks = Counter(
            "switchyard_guard_checks", "Guard checks by outcome (clean, pii, pii_block, jailbreak, safety_block, error)",
            ["outcome"], registry=self.registry)
        self.classifier_latency = Histogram(
            "llm_classifier_latency_seconds", "Time spent in one classifier per request",
            ["classifier"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.check_latency = Histogram(
            "switchyard_guard_check_latency_seconds", "Time of a whole guard check",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.jailbreak_windows = Histogram(
            "switchyard_guard_jailbreak_windows", "Windows scored per request (long prompts are chunked)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)

        self.safety_verdicts = Counter(
            "switchyard_guard_safety", "Checked requests by safety category and action (category \"none\", action "
            "\"none\": below the threshold; \"unverified\": no safety model in the repository)",
            ["category", "action"], registry=self.registry)

    def count_safety(self, verdict: SafetyVerdict) -> None:
        if verdict.state is SafetyState.DISABLED:
            return
        if verdict.state is SafetyState.UNAVAILABLE:
            self.safety_verdicts.labels("unverified", "none").inc()
            return
        category = verdict.category if verdict.category in SAFETY_LABELS else "none"
        self.safety_verdicts.labels(category, verdict.action.kind.value if verdict.action else "none").inc()

    def count_pii(self, types: set[str]) -> None:
        for pii_type in types:
            self.pii_violations.labels(pii_type if pii_type in KNOWN_PII_TYPES else OTHER).inc()
