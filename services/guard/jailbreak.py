"""Jailbreak / prompt-injection scoring: each checked message whole and in windows, highest score wins."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.guard.chunking import Chunker

JAILBREAK_TYPE = "jailbreak"


class JailbreakScorer(Protocol):
    """What the guard needs from the Triton client (services.common.triton.TritonModels has it)."""

    async def jailbreak_scores(self, texts: list[str]) -> Sequence[float]: ...


@dataclass(frozen=True)
class JailbreakResult:
    score: float  # highest score of any text or window; 0.0 when nothing was scored
    message_index: int  # message holding the highest score; -1 when none
    windows: int  # how many texts and windows were scored

    def blocked(self, threshold: float) -> bool:
        return self.windows > 0 and self.score >= threshold


async def score_messages(
    texts: Sequence[tuple[int, str]], scorer: JailbreakScorer, chunker: Chunker
) -> JailbreakResult:
    """Score (message_index, text) pairs.

    Every text is scored whole (the client keeps its head and tail): a role-play set-up spread
    over a long prompt is recognisable only as a whole. A text longer than one window is also
    scored window by window: an injection buried in a long document is diluted past detection
    in a whole-text pass, but dominates the window it falls in. Whole texts and windows go in
    two concurrent calls, so that short windows are not padded to the length of whole texts.
    """
    wholes = [text for _, text in texts]
    whole_owners = [index for index, _ in texts]
    windows: list[str] = []
    window_owners: list[int] = []
    for message_index, text in texts:
        spans = chunker.windows(text)
        if len(spans) > 1:
            windows.extend(text[start:end] for start, end in spans)
            window_owners.extend([message_index] * len(spans))
    if not wholes:
        return JailbreakResult(0.0, -1, 0)
    whole_scores, window_scores = await asyncio.gather(_scores(scorer, wholes), _scores(scorer, windows))
    scores = whole_scores + window_scores
    owners = whole_owners + window_owners
    best = max(range(len(scores)), key=scores.__getitem__)
    return JailbreakResult(scores[best], owners[best], len(scores))


async def _scores(scorer: JailbreakScorer, texts: list[str]) -> list[float]:
    if not texts:
        return []
    scores = [float(s) for s in await scorer.jailbreak_scores(texts)]
    if len(scores) != len(texts):
        raise ValueError(f"jailbreak scorer returned {len(scores)} scores for {len(texts)} texts")
    return scores
