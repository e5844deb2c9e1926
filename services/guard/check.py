"""The guard's verdict on one request: jailbreak score, safety category and PII entities, as plain data."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.common.config import GuardConfig, JailbreakPolicy, SafetyActionKind
from services.common.text_units import count_words
from services.common.telemetry import decision_span, set_decision_attributes
from services.common.triton import ModelNotAvailableError
from services.guard.jailbreak import JAILBREAK_TYPE, JailbreakResult, JailbreakScorer, score_messages
from services.guard.metrics import JAILBREAK, PII_PATTERNS, PII_TAGGER, SAFETY, GuardMetrics
from services.guard.pii import PiiTagger, TaggedSpan, entities_in_text
from services.guard.policy import blocking_types
from services.guard.safety import SafetyScorer, SafetyState, SafetyVerdict, judge, most_harmful
from services.guard.scope import select_messages
from services.guard.spans import Entity
from switchyard.v1 import common_pb2, guard_pb2

log = logging.getLogger("switchyard.guard")


@dataclass(frozen=True)
class MessageEntity:
    message_index: int
    entity: Entity


_PROTO_ACTIONS = {None: guard_pb2.SAFETY_ACTION_NONE, SafetyActionKind.ALLOW: guard_pb2.SAFETY_ACTION_ALLOW,
                  SafetyActionKind.BLOCK: guard_pb2.SAFETY_ACTION_BLOCK, SafetyActionKind.ROUTE: guard_pb2.SAFETY_ACTION_ROUTE}
_PROTO_STATES = {SafetyState.CHECKED: guard_pb2.SAFETY_STATE_CHECKED, SafetyState.DISABLED: guard_pb2.SAFETY_STATE_DISABLED,
                 SafetyState.UNAVAILABLE: guard_pb2.SAFETY_STATE_UNAVAILABLE}


def scored_texts(messages: Sequence[common_pb2.ChatMessage], policy: JailbreakPolicy) -> list[tuple[int, str]]:
    """(message index, text) of what the jailbreak and safety checks score: `policy.scope`, at least `min_words`."""
    return [(i, messages[i].text) for i in select_messages(messages, policy.scope)
            if count_words(messages[i].text) >= policy.min_words]


@dataclass
class GuardVerdict:
    checked: bool  # False when every check is disabled: the guard then has no opinion
    jailbreak: JailbreakResult = field(default_factory=lambda: JailbreakResult(0.0, -1, 0))
    jailbreak_blocked: bool = False
    safety: SafetyVerdict = field(default_factory=lambda: SafetyVerdict(SafetyState.DISABLED))
    pii: list[MessageEntity] = field(default_factory=list)
    blocking_pii_types: list[str] = field(default_factory=list)

    @property
    def block_reason(self) -> str:
        if self.jailbreak_blocked:
            return "jailbreak"
        if self.blocking_pii_types:
            return "pii"
        return "safety" if self.safety.blocked else ""

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
            safety=guard_pb2.SafetyVerdict(
                state=_PROTO_STATES[self.safety.state], score=self.safety.score.score, category=self.safety.category,
                action=_PROTO_ACTIONS[self.safety.action.kind if self.safety.action else None],
                route_model=(self.safety.action.model or "") if self.safety.action else "",
                message_index=self.safety.score.message_index),
        )

    def summary(self) -> str:
        """Types and counts only: safe to log (no text, no values)."""
        counts = Counter(m.entity.type for m in self.pii)
        pii = ",".join(f"{t}x{n}" for t, n in sorted(counts.items())) or "none"
        safety = self.safety.category or self.safety.state.value
        action = str(self.safety.action) if self.safety.action else "none"
        return (f"jailbreak={self.jailbreak.score:.3f} blocked={self.jailbreak_blocked} "
                f"windows={self.jailbreak.windows} safety={safety}:{self.safety.score.score:.3f} action={action} "
                f"pii={pii} blocking={','.join(self.blocking_pii_types) or 'none'}")


class RequestGuard:
    """Runs the configured checks on a request's messages; Triton errors propagate to the caller."""

    def __init__(self, config: GuardConfig, scorer: JailbreakScorer, tagger: PiiTagger, safety: SafetyScorer,
                 metrics: GuardMetrics | None = None) -> None:
        self._config = config
        self._scorer = scorer
        self._tagger = tagger
        self._safety = safety
        self._metrics = metrics or GuardMetrics()

    def reconfigure(self, config: GuardConfig) -> None:
        """A new policy (hot reload); checks already running keep the one they started with."""
        self._config = config

    async def check(self, messages: Sequence[common_pb2.ChatMessage]) -> GuardVerdict:
        config = self._config
        if not config.jailbreak.enabled and not config.pii.enabled and not config.safety.enabled:
            return GuardVerdict(checked=False)
        with decision_span("guard.check", service="guard") as span:
            verdict = await self._check(config, messages)
            set_decision_attributes(span, pii_types=sorted(verdict.pii_types), block_reason=verdict.block_reason)
        return verdict

    async def _check(self, config: GuardConfig, messages: Sequence[common_pb2.ChatMessage]) -> GuardVerdict:
        jailbreak_cfg, pii_cfg = config.jailbreak, config.pii
        started = time.perf_counter()
        # Safety reads what jailbreak reads: the same whole-text rows, computed once by the trunk.
        texts = scored_texts(messages, jailbreak_cfg)
        pii_indices = select_messages(messages, pii_cfg.scope) if pii_cfg.enabled else []
        # The Triton calls go out together; if one fails the whole check fails, because half a
        # verdict would read as "clean" for the half that was not checked.
        jailbreak, safety, tagged = await asyncio.gather(
            self._score_jailbreak(texts if jailbreak_cfg.enabled else []),
            self._score_safety(texts, config),
            self._tag([messages[i].text for i in pii_indices]),
        )
        verdict = GuardVerdict(checked=True, jailbreak=jailbreak, safety=safety)
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
            result = await score_messages(texts, self._scorer)
        self._metrics.classifier_latency.labels(JAILBREAK).observe(time.perf_counter() - started)
        self._metrics.jailbreak_windows.observe(result.windows)
        return result

    async def _score_safety(self, texts: list[tuple[int, str]], config: GuardConfig) -> SafetyVerdict:
        if not config.safety.enabled:
            return SafetyVerdict(SafetyState.DISABLED)
        if not texts:
            return SafetyVerdict(SafetyState.CHECKED)
        started = time.perf_counter()
        with decision_span("guard.safety", classifier=SAFETY):
            try:
                probabilities = await self._safety.safety_probabilities([text for _, text in texts])
            except ModelNotAvailableError as exc:
                # A repository without the safety head (per-task layout): say so, never read as safe.
                log.warning("safety check unavailable, requests are marked x-vsr-safety: unverified: %s", exc)
                return SafetyVerdict(SafetyState.UNAVAILABLE)
        self._metrics.classifier_latency.labels(SAFETY).observe(time.perf_counter() - started)
        return judge(most_harmful(texts, np.asarray(probabilities)), config.safety)

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
        metrics.count_safety(verdict.safety)
        if verdict.jailbreak_blocked:
            metrics.jailbreak_blocks.inc()
            outcome = "jailbreak"
        elif verdict.blocking_pii_types:
            metrics.pii_blocks.inc()
            outcome = "pii_block"
        elif verdict.safety.blocked:
            outcome = "safety_block"
        else:
            outcome = "pii" if verdict.pii else "clean"
        metrics.checks.labels(outcome).inc()
