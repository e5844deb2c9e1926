"""Jailbreak / prompt-injection scoring: each checked message whole and in windows, highest score wins."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

JAILBREAK_TYPE = "jailbreak"


class JailbreakScorer(Protocol):
    """What the guard needs from the Triton client (services.common.triton.TritonModels has it)."""

    async def jailbreak_scores(self, texts: list[str]) -> Sequence[float]: ...

    async def jailbreak_window_scores(self, texts: list[str]) -> Sequence[Sequence[float]]: ...


@dataclass(frozen=True)
class JailbreakResult:
    score: float  # highest score of any text or window; 0.0 when nothing was scored
    message_index: int  # message holding the highest score; -1 when none
    windows: int  # how many texts and windows were scored

    def blocked(self, threshold: float) -> bool:
        return self.windows > 0 and self.score >= threshold


async def score_messages(texts: Sequence[tuple[int, str]], scorer: JailbreakScorer) -> JailbreakResult:
    """Score (message_index, text) pairs.

    Every text is scored whole (the client keeps its head and tail): a role-play set-up spread
    over a long prompt is recognisable only as a whole. A text longer than one window is also
    scored window by window: an injection buried in a long document is diluted past detection
    in a whole-text pass, but dominates the window it falls in. The windows are the PII tagger's
    (services/common/tokenizer.py, Truncation.CHUNKS), so the trunk computes them once for both
    checks; whole texts and windows go in two concurrent calls.
    """
    if not texts:
        return JailbreakResult(0.0, -1, 0)
    plain = [text for _, text in texts]
    whole_scores, window_scores = await asyncio.gather(scorer.jailbreak_scores(plain),
                                                       scorer.jailbreak_window_scores(plain))
    if len(whole_scores) != len(texts) or len(window_scores) != len(texts):
        raise ValueError(f"jailbreak scorer returned {len(whole_scores)} scores and {len(window_scores)} window "
                         f"lists for {len(texts)} texts")
    scores: list[float] = []
    owners: list[int] = []
    for (message_index, _), whole, windows in zip(texts, whole_scores, window_scores):
        for score in (whole, *windows):
            scores.append(float(score))
            owners.append(message_index)
    best = max(range(len(scores)), key=scores.__getitem__)
    return JailbreakResult(scores[best], owners[best], len(scores))
