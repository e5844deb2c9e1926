"""The guard's verdict on one request: jailbreak score and PII entities, from plain inputs to plain data."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.common.config import GuardConfig
from services.common.text_units import count_words
from services.common.telemetry import decision_span, set_decision_attributes
from services.guard.chunking import Chunker
from services.guard.jailbreak import JAILBREAK_TYPE, JailbreakResult, JailbreakScorer, score_messages
from services.guard.metrics import JAILBREAK, PII_PATTERNS, PII_TAGGER, GuardMetrics
from services.guard.pii import PiiTagger, TaggedSpan, entities_in_text
from services.guard.policy import blocking_types
from services.guard.scope import select_messages
from services.guard.spans import Entity
from switchyard.v1 import common_pb2, guard_pb2

log = logging.getLogger("switchyard.guard")


@dataclass(frozen=True)
class MessageEntity:
    message_index: int
    entity: Entity


@dataclass
class GuardVerdict:
    checked: bool  # False when both checks are disabled: the guard then has no opinion
    jailbreak: JailbreakResult = field(default_factory=lambda: JailbreakResult(0.0, -1, 0))
    jailbreak_blocked: bool = False
    pii: list[MessageEntity] = field(default_factory=list)
    blocking_pii_types: list[str] = field(default_factory=list)

    @property
    def pii_types(self) -> set[str]:
        return {m.entity.type for m in self.pii}

    def to_proto(self) -> guard_pb2.CheckResponse:
        return guard_pb2.CheckResponse(
            has_opinion=self.checked,
            jailbreak=self.jailbreak_blocked,
            jailbreak_score=self.jailbreak.score,
            jailbreak_type=JAILBREAK_TYPE if self.jailbreak_blocked else "",
            pii=[
                guard_pb2.PiiEntity(type=m.entity.type, message_index=m.message_index, start=m.entity.start,
                                    end=m.entity.end, confidence=m.entity.confidence, source=m.entity.source)
                for m in self.pii
            ],
            blocking_pii_types=self.blocking_pii_types,
        )

    def summary(self) -> str:
        """Types and counts only: safe to log (no text, no values)."""
        counts = Counter(m.entity.type for m in self.pii)
        pii = ",".join(f"{t}x{n}" for t, n in sorted(counts.items())) or "none"
        return (f"jailbreak={self.jailbreak.score:.3f} blocked={self.jailbreak_blocked} "
                f"windows={self.jailbreak.windows} pii={pii} blocking={','.join(self.blocking_pii_types) or 'none'}")


class RequestGuard:
    """Runs the configured checks on a request's messages; Triton errors propagate to the caller."""

    def __init__(self, config: GuardConfig, scorer: JailbreakScorer, tagger: PiiTagger, chunker: Chunker,
                 metrics: GuardMetrics | None = None) -> None:
        self._config = config
        self._scorer = scorer
        self._tagger = tagger
        self._chunker = chunker
        self._metrics = metrics or GuardMetrics()

    def reconfigure(self, config: GuardConfig) -> None:
        """A new policy (hot reload); checks already running keep the one they started with."""
        self._config = config

    async def check(self, messages: Sequence[common_pb2.ChatMessage]) -> GuardVerdict:
        config = self._config
        if not config.jailbreak.enabled and not config.pii.enabled:
            return GuardVerdict(checked=False)
        with decision_span("guard.check", service="guard") as span:
            verdict = await self._check(config, messages)
            set_decision_attributes(
                span, pii_types=sorted(verdict.pii_types),
                block_reason="jailbreak" if verdict.jailbreak_blocked else ("pii" if verdict.blocking_pii_types else ""))
        return verdict

    async def _check(self, config: GuardConfig, messages: Sequence[common_pb2.ChatMessage]) -> GuardVerdict:
        jailbreak_cfg, pii_cfg = config.jailbreak, config.pii
        started = time.perf_counter()
        jailbreak_indices = select_messages(messages, jailbreak_cfg.scope) if jailbreak_cfg.enabled else []
        pii_indices = select_messages(messages, pii_cfg.scope) if pii_cfg.enabled else []
        # Both Triton calls go out together; if either fails the whole check fails, because half a
        # verdict would read as "clean" for the half that was not checked.
        jailbreak, tagged = await asyncio.gather(
            self._score_jailbreak([(i, messages[i].text) for i in jailbreak_indices
                                   if count_words(messages[i].text) >= jailbreak_cfg.min_words]),
            self._tag([messages[i].text for i in pii_indices]),
        )
        verdict = GuardVerdict(checked=True, jailbreak=jailbreak)
        verdict.jailbreak_blocked = jailbreak_cfg.enabled and jailbreak.blocked(jailbreak_cfg.threshold)

        patterns_started = time.perf_counter()
        for index, spans in zip(pii_indices, tagged):
            for entity in entities_in_text(messages[index].text, spans, pii_cfg.threshold, pii_cfg.type_thresholds):
                verdict.pii.append(MessageEntity(index, entity))
        if pii_indices:
            self._metrics.classifier_latency.labels(PII_PATTERNS).observe(time.perf_counter() - patterns_started)
        verdict.blocking_pii_types = blocking_types(verdict.pii_types, pii_cfg.block_types, pii_cfg.mask_types)
        self._record(verdict, time.perf_counter() - started)
        return verdict

    async def _score_jailbreak(self, texts: list[tuple[int, str]]) -> JailbreakResult:
        if not texts:
            return JailbreakResult(0.0, -1, 0)
        started = time.perf_counter()
        with decision_span("guard.jailbreak", classifier=JAILBREAK):
            result = await score_messages(texts, self._scorer, self._chunker)
        self._metrics.classifier_latency.labels(JAILBREAK).observe(time.perf_counter() - started)
        self._metrics.jailbreak_windows.observe(result.windows)
        return result

    async def _tag(self, texts: list[str]) -> Sequence[Sequence[TaggedSpan]]:
        if not texts:
            return []
        started = time.perf_counter()
        with decision_span("guard.pii_tagger", classifier=PII_TAGGER):
            tagged = await self._tagger.tag_pii(texts)
        self._metrics.classifier_latency.labels(PII_TAGGER).observe(time.perf_counter() - started)
        if len(tagged) != len(texts):
            raise ValueError(f"PII tagger returned {len(tagged)} results for {len(texts)} texts")
        return tagged

    def _record(self, verdict: GuardVerdict, seconds: float) -> None:
        metrics = self._metrics
        metrics.check_latency.observe(seconds)
        metrics.count_pii(verdict.pii_types)
        if verdict.jailbreak_blocked:
            metrics.jailbreak_blocks.inc()
            outcome = "jailbreak"
        elif verdict.blocking_pii_types:
            metrics.pii_blocks.inc()
            outcome = "pii_block"
        else:
            outcome = "pii" if verdict.pii else "clean"
        metrics.checks.labels(outcome).inc()
