"""Sticky conversations: a conversation keeps its model until its topic clearly changes (hysteresis).

Stateless by design: the conversation is its own state. Every request of a chat carries the user turns
before it, so the decision replays them (one batched classifier call): the first turn of the window
picks the conversation's route, each later turn keeps it unless its own top category beats the
conversation's category by `routing.sticky.margin`. Every decision replica computes the same answer
from the same messages, with nothing to store, share, expire or lose; the window
(`routing.sticky.window_turns`) is the time to live: turns older than it no longer count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from services.common.config import HistoryPolicy, StickyPolicy
from services.decision.policy import Decision


class StickyOutcome(str, Enum):
    """What the conversation's history did to this turn's route (header x-vsr-sticky)."""

    AGREED = "agreed"  # this turn alone would have chosen the same route
    KEPT = "kept"  # this turn alone would have moved; the conversation kept its model
    MOVED = "moved"  # a clear change of topic: the conversation moved to this turn's route


@dataclass(frozen=True)
class Turn:
    """One user turn as the replay sees it: its own decision and the category probabilities behind it."""

    decision: Decision
    probabilities: dict[str, float]


def turn_probabilities(rows: Sequence[Sequence[float]], history: HistoryPolicy) -> list[list[float]]:
    """For each turn (oldest first), the probabilities the decider would use had it been the latest:
    its own row and up to `history.user_turns` earlier ones, weighted by `history.decay`."""
    out: list[list[float]] = []
    for i in range(len(rows)):
        picked = [rows[j] for j in range(i, max(-1, i - 1 - history.user_turns), -1)]
        weights = [history.decay ** k for k in range(len(picked))]
        total = sum(weights)
        out.append([sum(w * row[c] for row, w in zip(picked, weights)) / total for c in range(len(rows[i]))])
    return out


def _routed(decision: Decision) -> bool:
    """A decision a conversation may move to: a category's or a rule's, not the default for doubt."""
    return not decision.fallback_reason


def replay(turns: Sequence[Turn], policy: StickyPolicy) -> tuple[Decision, StickyOutcome]:
    """The route of the latest turn given the turns before it (oldest first, at least two)."""
    assert len(turns) >= 2
    state = turns[0].decision
    outcome = StickyOutcome.AGREED
    for turn in turns[1:]:
        own = turn.decision
        if _same_route(own, state):
            state, outcome = own, StickyOutcome.AGREED
            continue
        held = turn.probabilities.get(state.category, 0.0) if state.category else 0.0
        challenger = turn.probabilities.get(own.category, 0.0) if own.category else 0.0
        clear = bool(own.matched_rule) or (_routed(own) and challenger - held >= policy.margin)
        if clear:
            state, outcome = own, StickyOutcome.MOVED
        else:
            outcome = StickyOutcome.KEPT
    latest = turns[-1]
    if outcome is StickyOutcome.KEPT:
        return kept_decision(state, latest.probabilities), outcome
    return latest.decision, outcome


def _same_route(a: Decision, b: Decision) -> bool:
    return [c.model for c in a.candidates[:1]] == [c.model for c in b.candidates[:1]] and a.category == b.category


def kept_decision(state: Decision, probabilities: dict[str, float]) -> Decision:
    """The conversation's route, with the latest turn's probabilities (what the classifier saw now)."""
    return replace(state, candidates=list(state.candidates),
                   confidence=probabilities.get(state.category, state.confidence), probabilities=probabilities)


def build_turns(texts: Sequence[str], rows: Sequence[Sequence[float]], labels: Sequence[str],
                history: HistoryPolicy, rule_for: Callable[[str], Decision | None],
                classify: Callable[[Sequence[str], Sequence[float]], Decision]) -> list[Turn]:
    """Each turn's own decision: a keyword rule when one matches its text, else the classifier's."""
    turns = []
    for text, probabilities in zip(texts, turn_probabilities(rows, history)):
        by_label = {label: float(p) for label, p in zip(labels, probabilities)}
        decision = rule_for(text) or classify(labels, probabilities)
        turns.append(Turn(decision, by_label))
    return turns
