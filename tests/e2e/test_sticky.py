"""Sticky conversations through the real Envoy and the real classifier, and two decision replicas.

The texts were picked with the classifier (the front's /api/v1/classify/intent): the physics opener and
its follow-up are clearly physics (deepseek-r1); the crumple-zone turn alone is a doubtful physics (0.30,
below the confidence threshold: the default model qwen3-8b); the landlord turn is law (llama-3.1-8b).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from services.common.config import TritonConfig
from services.common.health import grpc_serving
from services.mesh.supervisor import ProcessSpec
from switchyard.v1 import common_pb2, decision_pb2, decision_pb2_grpc
from tests.conftest import config_on_free_ports, free_ports
from tests.mesh_runner import MeshRunner

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
OPENER = "How fast does a ball fall from a height of 20 meters if we ignore air resistance?"
FOLLOW_UP = "Would the ball fall faster on the Moon or on Earth?"
DRIFT = "How do car crumple zones use this to protect passengers?"
TOPIC_CHANGE = "Is it legal for my landlord to keep my security deposit without a court order?"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, triton_server: TritonConfig):
    directory = tmp_path_factory.mktemp("sticky")
    data = config_on_free_ports({"decision": {"deadline_ms": 3000}})
    # A second decision replica: the same config on other ports, started beside the mesh.
    runner = MeshRunner(data, directory, triton=triton_server)
    second = yaml.safe_load(runner.config_path.read_text())
    port, metrics_port = free_ports(2)
    second["decision"].update(port=port, metrics_port=metrics_port)
    second_path = directory / "second-decision.yaml"
    second_path.write_text(yaml.safe_dump(second, sort_keys=False))
    address = f"127.0.0.1:{port}"
    runner.mesh.extra_specs.append(ProcessSpec(
        "decision-2", [sys.executable, "-m", "services.cli", "serve", "decision", "--config", str(second_path)],
        ready=lambda: grpc_serving(address), endpoint=f"grpc://{address}"))
    runner.second_decision = address  # type: ignore[attr-defined]
    runner.start()
    yield runner
    runner.stop()


@pytest.fixture(scope="module")
def client(mesh: MeshRunner):
    with httpx.Client(base_url=mesh.envoy_url, timeout=60, trust_env=False) as http:
        yield http


def messages(*user_turns: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for text in user_turns:
        out += [{"role": "user", "content": text}, {"role": "assistant", "content": "(an answer)"}]
    return out[:-1]


def turn(client: httpx.Client, *user_turns: str) -> httpx.Response:
    response = client.post(CHAT, json={"model": "MoM", "messages": messages(*user_turns)},
                           headers={"cache-control": "no-store"})
    assert response.status_code == 200, response.text
    assert "x-vsr-degraded" not in response.headers
    return response


def test_a_turn_alone_would_move(client: httpx.Client) -> None:
    assert turn(client, OPENER).headers["x-vsr-selected-model"] == "deepseek-r1"
    assert "x-vsr-sticky" not in turn(client, OPENER).headers
    assert turn(client, DRIFT).headers["x-vsr-selected-model"] == "qwen3-8b"


def test_a_slight_drift_stays_on_the_conversation_model(client: httpx.Client) -> None:
    second = turn(client, OPENER, FOLLOW_UP)
    assert second.headers["x-vsr-selected-model"] == "deepseek-r1" and second.headers["x-vsr-sticky"] == "agreed"
    third = turn(client, OPENER, FOLLOW_UP, DRIFT)
    assert third.headers["x-vsr-selected-model"] == "deepseek-r1"
    assert third.headers["x-vsr-sticky"] == "kept"
    assert third.headers["x-vsr-selected-category"] == "physics"


def test_a_clear_topic_change_moves(client: httpx.Client) -> None:
    third = turn(client, OPENER, FOLLOW_UP, TOPIC_CHANGE)
    assert third.headers["x-vsr-sticky"] == "moved"
    assert third.headers["x-vsr-selected-category"] == "law"
    assert third.headers["x-vsr-selected-model"] == "llama-3.1-8b"


def test_two_decision_replicas_agree(mesh: MeshRunner) -> None:
    """Nothing is stored: any replica replays the same conversation to the same route."""

    async def decide(address: str, *user_turns: str) -> decision_pb2.DecideResponse:
        context = common_pb2.RequestContext(requested_model="MoM", messages=[
            common_pb2.ChatMessage(role=m["role"], text=m["content"]) for m in messages(*user_turns)])
        async with grpc.aio.insecure_channel(address) as channel:
            return await decision_pb2_grpc.DecisionStub(channel).Decide(
                decision_pb2.DecideRequest(request=context), timeout=30)

    async def both() -> list[tuple[decision_pb2.DecideResponse, decision_pb2.DecideResponse]]:
        first = f"127.0.0.1:{mesh.config.decision.port}"
        out = []
        for turns in ((OPENER, FOLLOW_UP), (OPENER, FOLLOW_UP, DRIFT), (OPENER, FOLLOW_UP, TOPIC_CHANGE)):
            out.append((await decide(first, *turns), await decide(mesh.second_decision, *turns)))
        return out

    answers = asyncio.run(both())
    for one, other in answers:
        assert (one.sticky, one.category, [c.model for c in one.candidates]) == \
               (other.sticky, other.category, [c.model for c in other.candidates])
    assert [a.sticky for a, _ in answers] == ["agreed", "kept", "moved"]
