"""The routing policy with a stub classifier: ranking, thresholds, pass-through, reasoning, rules, reload."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from services.common.config import parse_config
from services.common.model_io import DOMAIN_LABELS
from services.decision.decider import Decider, classification_turns
from services.decision.policy import RoutingPolicy, UnknownModelError, normalized_entropy
from services.decision.server import decision_to_proto
from switchyard.v1 import common_pb2, decision_pb2
from tests.conftest import example_config_data


class StubClassifier:
    """Returns scripted probabilities per text; records what it was asked."""

    labels = DOMAIN_LABELS

    def __init__(self, by_text: dict[str, dict[str, float]] | None = None, default: dict[str, float] | None = None):
        self.by_text = by_text or {}
        self.default = default or {"other": 1.0}
        self.calls: list[list[str]] = []

    async def classify(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(texts)
        rows = []
        for text in texts:
            wanted = self.by_text.get(text, self.default)
            rows.append([wanted.get(label, 0.0) for label in self.labels])
        return rows


def routing(**changes):
    data = copy.deepcopy(example_config_data())
    data["routing"].update(changes)
    return parse_config(data).routing


def context(*turns: tuple[str, str], model: str = "MoM") -> common_pb2.RequestContext:
    return common_pb2.RequestContext(requested_model=model,
                                     messages=[common_pb2.ChatMessage(role=r, text=t) for r, t in turns])


def peaked(category: str, p: float = 0.9) -> dict[str, float]:
    rest = (1 - p) / (len(DOMAIN_LABELS) - 1)
    return {label: (p if label == category else rest) for label in DOMAIN_LABELS}


async def test_candidates_are_ranked_by_score_with_reasoning() -> None:
    decider = Decider(RoutingPolicy(routing()), StubClassifier(default=peaked("math")))
    decision = await decider.decide(context(("user", "Solve 3x+5=20")))
    assert decision.category == "math" and decision.confidence == pytest.approx(0.9)
    assert [c.model for c in decision.candidates] == ["deepseek-r1", "qwen3-8b"]
    assert decision.candidates[0].use_reasoning and decision.candidates[0].reasoning_effort == "medium"
    assert decision.system_prompt.startswith("You are a mathematician")
    assert not decision.uncertain


async def test_low_confidence_falls_back_to_default_model() -> None:
    decider = Decider(RoutingPolicy(routing(confidence_threshold=0.6)), StubClassifier(default=peaked("law", 0.55)))
    decision = await decider.decide(context(("user", "something vague")))
    assert [c.model for c in decision.candidates] == ["qwen3-8b"]
    assert decision.fallback_reason == "low_confidence" and decision.category == "law"
    assert not decision.candidates[0].use_reasoning


async def test_concrete_model_passes_through_without_classifying() -> None:
    classifier = StubClassifier()
    decision = await Decider(RoutingPolicy(routing()), classifier).decide(context(("user", "hi"), model="llama-3.1-8b"))
    assert [c.model for c in decision.candidates] == ["llama-3.1-8b"]
    assert decision.fallback_reason == "requested_model" and classifier.calls == []


async def test_unknown_model_is_rejected_or_passed_through_by_config() -> None:
    with pytest.raises(UnknownModelError, match="'gpt-7' is not served by this router; use one of: MoM, auto"):
        await Decider(RoutingPolicy(routing()), StubClassifier()).decide(context(("user", "hi"), model="gpt-7"))
    passing = Decider(RoutingPolicy(routing(unknown_model="passthrough")), StubClassifier())
    decision = await passing.decide(context(("user", "hi"), model="gpt-7"))
    assert [c.model for c in decision.candidates] == ["gpt-7"]


@pytest.mark.parametrize("turns", [(), (("system", "be nice"),), (("user", "   "),), (("assistant", "hello"),)])
async def test_no_usable_user_text_gets_the_default_model(turns) -> None:
    classifier = StubClassifier()
    decision = await Decider(RoutingPolicy(routing()), classifier).decide(context(*turns))
    assert decision.fallback_reason == "empty_prompt"
    assert [c.model for c in decision.candidates] == ["qwen3-8b"] and classifier.calls == []


async def test_earlier_user_turns_keep_a_follow_up_with_its_topic() -> None:
    history = {"user_turns": 1, "decay": 0.8}
    classifier = StubClassifier(by_text={"Differentiate x^3 + 2x": peaked("math", 0.95),
                                         "and what about its derivative?": peaked("other", 0.3)})
    turns = (("user", "Differentiate x^3 + 2x"), ("assistant", "3x^2 + 2"), ("user", "and what about its derivative?"))
    # Sticky conversations off: this is history weighting alone (test_sticky.py has the replay).
    without = await Decider(RoutingPolicy(routing(confidence_threshold=0.4, sticky={"enabled": False})),
                            StubClassifier(by_text=classifier.by_text)).decide(context(*turns))
    assert without.fallback_reason == "low_confidence"
    # The threshold applies to the weighted mean: (0.95 * 0.8 + 0.054) / 1.8 = 0.45 for math.
    decision = await Decider(RoutingPolicy(routing(history=history, confidence_threshold=0.4,
                                                   sticky={"enabled": False})),
                             classifier).decide(context(*turns))
    assert classifier.calls == [["and what about its derivative?", "Differentiate x^3 + 2x"]]
    assert decision.category == "math" and decision.candidates[0].model == "deepseek-r1"


def test_classification_turns_weights_latest_first() -> None:
    messages = [common_pb2.ChatMessage(role="user", text=t) for t in ("a", "b", "c")]
    from services.common.config import HistoryPolicy
    assert classification_turns(messages, HistoryPolicy(user_turns=2, decay=0.5)) == [("c", 1.0), ("b", 0.5), ("a", 0.25)]


def test_entropy_is_normalized() -> None:
    assert normalized_entropy([1.0, 0.0, 0.0]) == 0.0
    assert normalized_entropy([0.25] * 4) == pytest.approx(1.0)


async def test_uncertain_classification_votes_on_reasoning() -> None:
    # math (best model reasons) 0.48 vs law (best model does not) 0.42: uncertain, math holds the majority -> on.
    probabilities = {"math": 0.48, "law": 0.42, "other": 0.10}
    decision = await Decider(RoutingPolicy(routing(confidence_threshold=0.4)),
                             StubClassifier(default=probabilities)).decide(context(("user", "q")))
    assert decision.uncertain and decision.category == "math"
    assert all(c.use_reasoning for c in decision.candidates)
    # law on top, math second: law holds the majority of the weight -> off even for math's models.
    probabilities = {"law": 0.48, "math": 0.42, "other": 0.10}
    decision = await Decider(RoutingPolicy(routing(confidence_threshold=0.4)),
                             StubClassifier(default=probabilities)).decide(context(("user", "q")))
    assert decision.uncertain and decision.category == "law"
    assert not any(c.use_reasoning for c in decision.candidates)


def test_uncertain_vote_tie_turns_reasoning_on() -> None:
    policy = RoutingPolicy(routing())
    assert policy.uncertain_reasoning([("math", 0.4), ("law", 0.4)]) is True


async def test_keyword_rules_short_circuit_by_priority() -> None:
    rules = [
        {"name": "code-fence", "keywords": ["```"], "category": "computer science", "priority": 5},
        {"name": "urgent", "keywords": ["urgent", "asap"], "model": "llama-3.1-8b", "priority": 10},
        {"name": "contract-and-breach", "keywords": ["contract", "breach"], "operator": "all",
         "category": "law"},
        {"name": "ticket", "keywords": [r"\bJIRA-\d+\b"], "regex": True, "case_sensitive": True,
         "model": "deepseek-r1"},
    ]
    classifier = StubClassifier(default=peaked("math"))
    decider = Decider(RoutingPolicy(routing(keyword_rules=rules)), classifier)
    urgent = await decider.decide(context(("user", "URGENT: fix this ```x = 1```")))
    assert urgent.matched_rule == "urgent" and urgent.candidates[0].model == "llama-3.1-8b"
    fence = await decider.decide(context(("user", "why does ```x = 1``` fail")))
    assert fence.matched_rule == "code-fence" and fence.category == "computer science"
    both = await decider.decide(context(("user", "Is a breach of contract a crime?")))
    assert both.matched_rule == "contract-and-breach" and both.category == "law"
    only_one = await decider.decide(context(("user", "Explain a contractual term")))
    assert only_one.matched_rule == "" and only_one.category == "math"  # word boundary: no "contract" alone
    assert (await decider.decide(context(("user", "see JIRA-42")))).candidates[0].model == "deepseek-r1"
    assert (await decider.decide(context(("user", "see jira-42")))).matched_rule == ""
    assert classifier.calls == [["Explain a contractual term"], ["see jira-42"]]


def test_bad_keyword_rules_are_config_errors() -> None:
    from services.common.config import ConfigError
    data = example_config_data()
    data["routing"]["keyword_rules"] = [{"name": "x", "keywords": ["("], "regex": True, "category": "mathz"}]
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "c.yaml")
    assert "routing.keyword_rules[0].category: unknown name 'mathz' (did you mean 'math'?)" in str(caught.value)
    assert "routing.keyword_rules[0].keywords[0]: not a valid regex" in str(caught.value)


def test_decision_converts_to_proto() -> None:
    policy = RoutingPolicy(routing())
    decision = policy.for_classification(DOMAIN_LABELS, [peaked("law")[label] for label in DOMAIN_LABELS])
    message = decision_to_proto(decision)
    assert message.has_opinion and message.category == "law"
    assert message.candidates[0].model == "llama-3.1-8b"
    assert message.system_prompt_mode == decision_pb2.SYSTEM_PROMPT_MODE_REPLACE
    assert len(message.probabilities) == 14
