"""Sticky conversations: the replay of a conversation's user turns keeps its model until a clear change."""

from __future__ import annotations

import pytest

from services.common.config import HistoryPolicy
from services.decision.decider import Decider
from services.decision.policy import RoutingPolicy
from services.decision.sticky import turn_probabilities
from services.decision.server import decision_to_proto
from tests.unit.decision.test_decider import StubClassifier, context, peaked, routing


def mixed(**weights: float) -> dict[str, float]:
    return weights


def conversation(*user_turns: str) -> tuple[tuple[str, str], ...]:
    turns: list[tuple[str, str]] = []
    for text in user_turns:
        turns += [("user", text), ("assistant", "...")]
    return tuple(turns[:-1])


PHYSICS = "How fast does a ball fall from 20 m?"
DRIFT = "And how much energy does the impact dissipate as heat?"
LAW = "Who owns the copyright of a photo a monkey took?"
SCRIPT = {
    PHYSICS: peaked("physics", 0.9),
    # Leans to engineering, but not clearly: physics keeps the conversation.
    DRIFT: mixed(engineering=0.55, physics=0.35, other=0.1),
    LAW: peaked("law", 0.9),
}


def decider(**changes) -> tuple[Decider, StubClassifier]:
    classifier = StubClassifier(by_text=SCRIPT)
    return Decider(RoutingPolicy(routing(**changes)), classifier), classifier


async def test_a_first_turn_is_not_sticky() -> None:
    decision = await decider()[0].decide(context(("user", PHYSICS)))
    assert decision.category == "physics" and decision.sticky == ""


async def test_a_slight_drift_keeps_the_conversation_model() -> None:
    d, classifier = decider()
    alone = await d.decide(context(("user", DRIFT)))
    assert alone.category == "engineering" and alone.candidates[0].model == "qwen3-8b" and not alone.fallback_reason
    decision = await d.decide(context(*conversation(PHYSICS, DRIFT, DRIFT)))
    assert decision.sticky == "kept"
    assert decision.category == "physics" and decision.candidates[0].model == "deepseek-r1"
    assert decision.system_prompt.startswith("You are a physicist")
    # The latest turn's own probabilities are reported, and one classifier call read every turn.
    assert decision.confidence == pytest.approx(0.35)
    assert classifier.calls[-1] == [PHYSICS, DRIFT, DRIFT]


async def test_a_clear_topic_change_moves_and_then_stays() -> None:
    d, _ = decider()
    moved = await d.decide(context(*conversation(PHYSICS, DRIFT, LAW)))
    assert moved.sticky == "moved" and moved.category == "law" and moved.candidates[0].model == "llama-3.1-8b"
    # After the move the conversation is a law conversation: a drift back is judged against law.
    after = await d.decide(context(*conversation(PHYSICS, LAW, LAW)))
    assert after.sticky == "agreed" and after.category == "law"


async def test_the_same_category_agrees() -> None:
    decision = await decider()[0].decide(context(*conversation(PHYSICS, PHYSICS)))
    assert decision.sticky == "agreed" and decision.category == "physics"


async def test_the_margin_is_the_hysteresis() -> None:
    # 0.55 - 0.35 = 0.20: kept with a margin of 0.3, moved with 0.1.
    loose, _ = decider(sticky={"margin": 0.1})
    decision = await loose.decide(context(*conversation(PHYSICS, DRIFT)))
    assert decision.sticky == "moved" and decision.category == "engineering"


async def test_a_doubtful_turn_never_moves_a_conversation() -> None:
    # Below the confidence threshold the turn alone would get the default model; the conversation stays.
    script = {PHYSICS: peaked("physics", 0.9), "ok, and?": peaked("law", 0.45)}
    d = Decider(RoutingPolicy(routing()), StubClassifier(by_text=script))
    decision = await d.decide(context(*conversation(PHYSICS, "ok, and?")))
    assert decision.sticky == "kept" and decision.category == "physics"


async def test_the_window_is_the_time_to_live() -> None:
    # With a window of 2 turns, the physics turn two turns back no longer holds the conversation.
    d, classifier = decider(sticky={"window_turns": 2})
    decision = await d.decide(context(*conversation(PHYSICS, DRIFT, DRIFT)))
    assert classifier.calls[-1] == [DRIFT, DRIFT]
    assert decision.category == "engineering" and decision.sticky == "agreed"


async def test_off_means_each_turn_alone() -> None:
    d, classifier = decider(sticky={"enabled": False})
    decision = await d.decide(context(*conversation(PHYSICS, DRIFT)))
    assert decision.category == "engineering" and decision.sticky == ""
    assert classifier.calls[-1] == [DRIFT]


async def test_a_keyword_rule_moves_a_conversation() -> None:
    rules = [{"name": "legal", "keywords": ["statute"], "category": "law"}]
    d = Decider(RoutingPolicy(routing(keyword_rules=rules)),
                StubClassifier(by_text={**SCRIPT, "the statute again": peaked("physics", 0.9)}))
    decision = await d.decide(context(*conversation(PHYSICS, "the statute again", PHYSICS)))
    assert decision.category == "physics" and decision.sticky == "moved"


async def test_replicas_agree_by_construction() -> None:
    """No state: two deciders (two replicas) give the same answer for the same conversation."""
    turns = conversation(PHYSICS, DRIFT, DRIFT)
    first = await decider()[0].decide(context(*turns))
    second = await decider()[0].decide(context(*turns))
    assert decision_to_proto(first) == decision_to_proto(second)
    assert decision_to_proto(first).sticky == "kept"


def test_turn_probabilities_follow_the_history_policy() -> None:
    rows = [[1.0, 0.0], [0.0, 1.0]]
    assert turn_probabilities(rows, HistoryPolicy(user_turns=0)) == [[1.0, 0.0], [0.0, 1.0]]
    second = turn_probabilities(rows, HistoryPolicy(user_turns=1, decay=0.5))[1]
    assert second == pytest.approx([1 / 3, 2 / 3])
