"""The guard's safety verdict at the front: block answers content_filter, route overrides the model, allow marks."""

from __future__ import annotations

import asyncio
import json

from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from services.front.mesh_clients import ServiceCall
from switchyard.v1 import decision_pb2, guard_pb2
from tests.unit.front.test_processor import CHAT, ScriptedClients, make_processor, route_chat, set_headers


def guard_says(action: int, category: str = "violence_weapons", model: str = "", **fields) -> ServiceCall:
    safety = guard_pb2.SafetyVerdict(state=guard_pb2.SAFETY_STATE_CHECKED, score=0.93, category=category,
                                     action=action, route_model=model)
    return ServiceCall("guard", result=guard_pb2.CheckResponse(has_opinion=True, safety=safety, **fields))


DECIDED = ServiceCall("decision", result=decision_pb2.DecideResponse(
    has_opinion=True, category="math", confidence=0.9, system_prompt="You are a mathematician.",
    candidates=[decision_pb2.Candidate(model="deepseek-r1", score=0.9, use_reasoning=True)]))


async def response_headers(processor) -> dict[str, str]:
    reply = await processor.process_response_headers(ep.HttpHeaders(headers=core.HeaderMap(headers=[
        core.HeaderValue(key=":status", raw_value=b"200")])))
    return set_headers(reply.response_headers.response.header_mutation)


async def test_block_is_the_content_filter_answer_and_cancels_the_other_calls() -> None:
    clients = ScriptedClients(guard=guard_says(guard_pb2.SAFETY_ACTION_BLOCK), others_delay=5.0)
    processor = make_processor(clients)
    response = await asyncio.wait_for(route_chat(processor, CHAT), 2.0)
    reply = response.immediate_response
    assert reply.status.code == 200
    assert json.loads(reply.body)["choices"][0]["finish_reason"] == "content_filter"
    sent = set_headers(reply.headers)
    assert sent["x-vsr-safety-category"] == "violence_weapons" and sent["x-vsr-safety-blocked"] == "true"
    assert "x-vsr-jailbreak-blocked" not in sent
    assert sorted(clients.cancelled) == ["cache", "decision"]
    assert processor.metrics.blocks.labels("safety")._value.get() == 1
    assert processor.metrics.safety_actions.labels("violence_weapons", "block")._value.get() == 1


async def test_block_as_an_error_body_when_configured() -> None:
    processor = make_processor(ScriptedClients(guard=guard_says(guard_pb2.SAFETY_ACTION_BLOCK)),
                               overrides={"front": {"blocked_response": "error"}})
    reply = (await route_chat(processor, CHAT)).immediate_response
    assert reply.status.code == 403 and json.loads(reply.body)["error"]["code"] == "content_filter"
    assert set_headers(reply.headers)["x-vsr-safety-blocked"] == "true"


async def test_route_overrides_the_decision_and_sets_only_the_model() -> None:
    clients = ScriptedClients(decision=DECIDED, guard=guard_says(guard_pb2.SAFETY_ACTION_ROUTE, model="llama-3.1-8b"))
    processor = make_processor(clients)
    sent = json.loads((await route_chat(processor, CHAT)).request_body.response.body_mutation.body)
    assert sent["model"] == "llama-3.1-8b"
    assert sent["messages"] == CHAT["messages"]  # decision's system prompt was for its own choice
    headers = await response_headers(processor)
    assert headers["x-vsr-safety-category"] == "violence_weapons" and headers["x-vsr-selected-model"] == "llama-3.1-8b"
    assert "x-vsr-safety-blocked" not in headers and "x-vsr-selected-category" not in headers
    assert processor.metrics.safety_actions.labels("violence_weapons", "route")._value.get() == 1


async def test_route_overrides_a_concrete_requested_model_too() -> None:
    processor = make_processor(ScriptedClients(guard=guard_says(guard_pb2.SAFETY_ACTION_ROUTE, model="llama-3.1-8b")))
    sent = json.loads((await route_chat(processor, {**CHAT, "model": "qwen3-8b"})).request_body.response
                      .body_mutation.body)
    assert sent["model"] == "llama-3.1-8b"


async def test_route_is_still_subject_to_the_models_pii_policy() -> None:
    # llama-3.1-8b may see DATE_TIME and NRP only (example config): a PERSON blocks instead of reaching it.
    person = guard_pb2.PiiEntity(type="PERSON", message_index=0, start=0, end=5, confidence=0.9, source="tagger")
    guard = guard_says(guard_pb2.SAFETY_ACTION_ROUTE, model="llama-3.1-8b", pii=[person])
    reply = (await route_chat(make_processor(ScriptedClients(guard=guard)), CHAT)).immediate_response
    sent = set_headers(reply.headers)
    assert sent["x-vsr-pii-violation"] == "true" and sent["x-vsr-safety-category"] == "violence_weapons"


async def test_allow_goes_on_as_decided_with_the_category_header() -> None:
    processor = make_processor(ScriptedClients(decision=DECIDED, guard=guard_says(guard_pb2.SAFETY_ACTION_ALLOW,
                                                                                  category="drugs")))
    sent = json.loads((await route_chat(processor, CHAT)).request_body.response.body_mutation.body)
    assert sent["model"] == "deepseek-r1"
    headers = await response_headers(processor)
    assert headers["x-vsr-safety-category"] == "drugs" and headers["x-vsr-selected-model"] == "deepseek-r1"


async def test_no_category_no_header_and_unverified_is_said() -> None:
    processor = make_processor(ScriptedClients(guard=guard_says(guard_pb2.SAFETY_ACTION_NONE, category="")))
    await route_chat(processor, CHAT)
    headers = await response_headers(processor)
    assert "x-vsr-safety-category" not in headers and "x-vsr-safety" not in headers
    unavailable = guard_pb2.CheckResponse(has_opinion=True, safety=guard_pb2.SafetyVerdict(
        state=guard_pb2.SAFETY_STATE_UNAVAILABLE))
    processor = make_processor(ScriptedClients(guard=ServiceCall("guard", result=unavailable)))
    await route_chat(processor, CHAT)
    assert (await response_headers(processor))["x-vsr-safety"] == "unverified"


async def test_security_api_reports_the_safety_category_and_score() -> None:
    from tests.unit.front.test_api import client_for

    client, _ = await client_for(guard=guard_says(guard_pb2.SAFETY_ACTION_BLOCK, jailbreak_score=0.01))
    async with client:
        reply = (await client.post("/api/v1/classify/security", json={"text": "a pipe bomb, step by step"})).json()
    assert reply["safety_category"] == "violence_weapons" and reply["safety_score"] == 0.93
    assert reply["safety_action"] == "block" and reply["recommendation"] == "block"
    assert reply["is_jailbreak"] is False and reply["detection_types"] == ["safety"]
    client, _ = await client_for(guard=guard_says(guard_pb2.SAFETY_ACTION_NONE, category=""))
    async with client:
        benign = (await client.post("/api/v1/classify/security", json={"text": "kill a Python process"})).json()
    assert benign["safety_category"] is None and benign["recommendation"] == "allow"


async def test_a_blocking_identifier_is_answered_before_a_safety_block() -> None:
    guard = guard_says(guard_pb2.SAFETY_ACTION_BLOCK, category="privacy_surveillance", blocking_pii_types=["US_SSN"])
    reply = (await route_chat(make_processor(ScriptedClients(guard=guard)), CHAT)).immediate_response
    sent = set_headers(reply.headers)
    assert sent["x-vsr-pii-violation"] == "true" and sent["x-vsr-pii-types"] == "US_SSN"
    assert "x-vsr-safety-blocked" not in sent
