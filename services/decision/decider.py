"""The decision service's logic: requested model, keyword rules, then the domain classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.common.config import HistoryPolicy
from services.decision.policy import Decision, RoutingPolicy
from services.decision.sticky import build_turns, replay
from switchyard.v1 import common_pb2


class DomainClassifier(Protocol):
    """Category probabilities for texts (one row per text, columns in `labels` order)."""

    labels: Sequence[str]

    async def classify(self, texts: list[str]) -> list[list[float]]: ...


def classification_turns(messages: Sequence[common_pb2.ChatMessage], history: HistoryPolicy) -> list[tuple[str, float]]:
    """(text, weight) of the user turns the classifier reads, latest first with weight 1."""
    user_texts = [m.text for m in messages if m.role == "user" and m.text.strip()]
    picked = list(reversed(user_texts))[: 1 + history.user_turns]
    return [(text, history.decay ** i) for i, text in enumerate(picked)]


def weighted_mean(rows: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    return [sum(w * row[j] for row, w in zip(rows, weights)) / total for j in range(len(rows[0]))]


class Decider:
    """Turns one request into a Decision; holds no state between requests."""

    def __init__(self, policy: RoutingPolicy, classifier: DomainClassifier) -> None:
        self.policy = policy
        self.classifier = classifier

    async def decide(self, context: common_pb2.RequestContext) -> Decision:
        # One policy for the whole call: a reload while the classifier runs does not mix two configs.
        policy = self.policy
        # Raises UnknownModelError for an unconfigured concrete model (when configured to reject).
        requested = policy.for_requested_model(context.requested_model)
        if requested is not None:
            return requested
        turns = classification_turns(context.messages, policy.routing.history)
        if not turns:
            return policy.default("empty_prompt")
        ruled = policy.for_rule(turns[0][0])
        if ruled is not None:
            return ruled
        sticky = policy.routing.sticky
        user_texts = [m.text for m in context.messages if m.role == "user" and m.text.strip()]
        if sticky.enabled and len(user_texts) >= 2:
            # The conversation's earlier turns decide with this one (sticky.py): one classifier call.
            window = user_texts[-sticky.window_turns:]
            rows = await self.classifier.classify(window)
            replayed = build_turns(window, rows, self.classifier.labels, policy.routing.history,
                                   policy.for_rule, policy.for_classification)
            decision, outcome = replay(replayed, sticky)
            decision.sticky = outcome.value
            return decision
        rows = await self.classifier.classify([text for text, _ in turns])
        probabilities = weighted_mean(rows, [weight for _, weight in turns])
        return policy.for_classification(self.classifier.labels, probabilities)
