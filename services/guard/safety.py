"""Content safety: the safety head's harm category of the checked messages, and the action policy gives it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np

from services.common.config import SafetyAction, SafetyActionKind, SafetyPolicy
from services.common.model_io import SAFETY_LABELS, SAFETY_NONE

_NONE_COLUMN = SAFETY_LABELS.index(SAFETY_NONE)


class SafetyScorer(Protocol):
    """What the guard needs from the Triton client (services.common.triton.TritonModels has it)."""

    async def safety_probabilities(self, texts: list[str]) -> np.ndarray: ...


class SafetyState(str, Enum):
    CHECKED = "checked"
    DISABLED = "disabled"  # guard.safety.enabled: false
    # The model repository has no safety_classifier (the per-task layout): the request goes on, marked
    # x-vsr-safety: unverified, instead of reading as safe.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class SafetyScore:
    """The most harmful of the scored texts: its unsafe score 1 - p(none) and its top harm category."""

    score: float  # 0.0 when nothing was scored
    category: str  # argmax over the harm columns; "" when nothing was scored
    message_index: int  # -1 when nothing was scored
    texts: int


NOTHING_SCORED = SafetyScore(0.0, "", -1, 0)


@dataclass(frozen=True)
class SafetyVerdict:
    state: SafetyState
    score: SafetyScore = NOTHING_SCORED
    # Set when the score reached the threshold: the category and what the policy does with it.
    category: str = ""
    action: SafetyAction | None = None

    @property
    def blocked(self) -> bool:
        return self.action is not None and self.action.kind is SafetyActionKind.BLOCK


def most_harmful(texts: Sequence[tuple[int, str]], probabilities: np.ndarray) -> SafetyScore:
    """The text with the highest unsafe score, from the head's [n, len(SAFETY_LABELS)] probabilities."""
    if len(texts) == 0:
        return NOTHING_SCORED
    if probabilities.shape != (len(texts), len(SAFETY_LABELS)):
        raise ValueError(f"safety scorer returned shape {probabilities.shape} for {len(texts)} texts "
                         f"and {len(SAFETY_LABELS)} labels")
    unsafe = 1.0 - probabilities[:, _NONE_COLUMN]
    row = int(np.argmax(unsafe))
    harms = probabilities[row].copy()
    harms[_NONE_COLUMN] = -1.0
    return SafetyScore(float(unsafe[row]), SAFETY_LABELS[int(np.argmax(harms))], texts[row][0], len(texts))


def judge(score: SafetyScore, policy: SafetyPolicy) -> SafetyVerdict:
    """At or above the threshold the request is in `score.category` and gets that category's action."""
    if score.texts == 0 or score.score < policy.threshold:
        return SafetyVerdict(SafetyState.CHECKED, score)
    return SafetyVerdict(SafetyState.CHECKED, score, score.category, policy.action_for(score.category))
