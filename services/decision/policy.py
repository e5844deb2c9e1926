"""The routing policy: from a classification (or a rule, or the requested model) to ranked candidates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.common.config import Category, KeywordRule, RoutingConfig, SystemPromptMode
from services.decision.rules import CompiledRule, compile_rules, first_match


class UnknownModelError(ValueError):
    """The request names a concrete model that is not configured (and pass-through is off)."""


@dataclass(frozen=True)
class Candidate:
    model: str
    score: float
    use_reasoning: bool
    reasoning_effort: str = ""


@dataclass
class Decision:
    candidates: list[Candidate]
    category: str = ""
    confidence: float = 0.0
    probabilities: dict[str, float] = field(default_factory=dict)
    system_prompt: str = ""
    system_prompt_mode: SystemPromptMode = SystemPromptMode.REPLACE
    matched_rule: str = ""
    fallback_reason: str = ""
    uncertain: bool = False
    # What the conversation's earlier turns did to this route (sticky.StickyOutcome), "" for a first turn.
    sticky: str = ""


def normalized_entropy(probabilities: Sequence[float]) -> float:
    """Shannon entropy divided by its maximum, so 0 = certain and 1 = uniform."""
    if len(probabilities) < 2:
        return 0.0
    total = sum(probabilities) or 1.0
    entropy = -sum((p / total) * math.log(p / total) for p in probabilities if p > 0)
    return entropy / math.log(len(probabilities))


class RoutingPolicy:
    """Plain logic over the routing config; the classifier's output comes in as probabilities."""

    def __init__(self, routing: RoutingConfig) -> None:
        self.routing = routing
        self.categories: dict[str, Category] = {c.name: c for c in routing.categories}
        self.rules: list[CompiledRule] = compile_rules(routing.keyword_rules)

    # -- the three ways a decision is made ----------------------------------------------------
    def for_requested_model(self, requested: str) -> Decision | None:
        """A concrete model name passes through as the only candidate; None for the aliases."""
        if requested in self.routing.aliases:
            return None
        if requested not in self.routing.models and self.routing.unknown_model == "reject":
            known = ", ".join([*self.routing.aliases, *self.routing.models])
            # Only the head of the name: the message travels in gRPC metadata (16 KB at most).
            shown = requested if len(requested) <= 64 else requested[:64] + "..."
            raise UnknownModelError(f"model {shown!r} is not served by this router; use one of: {known}")
        return Decision(candidates=[Candidate(requested, 1.0, False)], fallback_reason="requested_model")

    def for_rule(self, text: str) -> Decision | None:
        rule = first_match(self.rules, text)
        if rule is None:
            return None
        decision = self._rule_decision(rule)
        decision.matched_rule = rule.name
        return decision

    def for_classification(self, labels: Sequence[str], probabilities: Sequence[float]) -> Decision:
        ranked = sorted(zip(labels, probabilities), key=lambda pair: -pair[1])
        top_label, top_probability = ranked[0]
        by_label = {label: float(p) for label, p in zip(labels, probabilities)}
        if top_probability < self.routing.confidence_threshold or top_label not in self.categories:
            decision = self.default("low_confidence" if top_label in self.categories else "unmapped_category")
            decision.category, decision.confidence, decision.probabilities = top_label, top_probability, by_label
            return decision
        decision = self._category_decision(self.categories[top_label])
        decision.confidence, decision.probabilities = float(top_probability), by_label
        second_probability = ranked[1][1] if len(ranked) > 1 else 0.0
        uncertainty = self.routing.uncertainty
        if (normalized_entropy(probabilities) > uncertainty.entropy
                or top_probability - second_probability < uncertainty.margin):
            decision.uncertain = True
            use = self.uncertain_reasoning(ranked[:2])
            decision.candidates = [
                Candidate(c.model, c.score, use, c.reasoning_effort or (self.routing.default_reasoning_effort if use else ""))
                for c in decision.candidates]
        return decision

    def default(self, reason: str) -> Decision:
        return Decision(candidates=[Candidate(self.routing.default_model, 1.0, False)], fallback_reason=reason)

    # -- helpers ------------------------------------------------------------------------------
    def uncertain_reasoning(self, top: Sequence[tuple[str, float]]) -> bool:
        """The documented rule: a probability-weighted vote of the top categories' best-model
        settings; reasoning is on when the categories that want it hold at least half the weight."""
        weight_on = weight_all = 0.0
        for label, probability in top:
            category = self.categories.get(label)
            if category is None:
                continue
            best = max(category.model_scores, key=lambda s: s.score)
            weight_all += probability
            weight_on += probability if best.use_reasoning else 0.0
        return weight_all > 0 and weight_on >= weight_all / 2

    def _category_decision(self, category: Category) -> Decision:
        candidates = [
            Candidate(s.model, s.score, s.use_reasoning,
                      (s.reasoning_effort or self.routing.default_reasoning_effort) if s.use_reasoning else "")
            for s in sorted(category.model_scores, key=lambda s: -s.score)
        ]
        return Decision(candidates=candidates, category=category.name, confidence=1.0,
                        system_prompt=category.system_prompt or "", system_prompt_mode=category.system_prompt_mode)

    def _rule_decision(self, rule: KeywordRule) -> Decision:
        if rule.category is not None:
            return self._category_decision(self.categories[rule.category])
        assert rule.model is not None
        return Decision(candidates=[Candidate(rule.model, 1.0, False)], confidence=1.0)
