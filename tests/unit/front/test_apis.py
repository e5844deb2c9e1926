"""The Responses and Anthropic translators: parse, rewrite, mask, replies, stream reassembly and replay."""

from __future__ import annotations

import asyncio
import json

import pytest
from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from services.common.config import parse_config
from services.common.sse import typed_payloads
from services.front.apis import ANTHROPIC, CHAT, RESPONSES
from services.front.apis.anthropic import message_to_events
from services.front.apis.responses import response_to_events
from services.front.chat_request import RequestError
from services.front.merge import Route
from services.front.metrics import FrontMetrics
from services.front.processor import FrontContext, RequestProcessor
from switchyard.v1 import decision_pb2, guard_pb2
from tests.conftest import example_config_data

ROUTING = parse_config(example_config_data()).routing


def body(value: dict) -> bytes:
    return json.dumps(value).encode()


def test_responses_parse_string_and_items() -> None:
    request = RESPONSES.parse(body({"model": "MoM", "instructions": "Be brief.", "input": [
        {"role": "developer", "content": "Use metric units."},
        {"role": "user", "content": [{"type": "input_text", "text": "How far is Oslo?"}]},
        {"type": "function_call", "call_id": "c1", "name": "distance", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "500 km"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "500 km."}]},
        "And Bergen?"]}))
    assert [(m.role, m.text) for m in request.messages] == [
        ("system", "Be brief."), ("system", "Use metric units."), ("user", "How far is Oslo?"), ("tool", "500 km"),
        ("assistant", "500 km."), ("user", "And Bergen?")]
    assert request.content_paths[2] == ("input", 1, "content")
    assert request.view["api"] == "responses" and len(request.view["messages"]) == 6
    assert RESPONSES.called_tools(request.body) == {"distance"}


@pytest.mark.parametrize("value, code", [({"model": "MoM"}, "missing_input"),
                                         ({"model": "MoM", "input": 3}, "invalid_input"),
                                         ({"input": "hi"}, "missing_model")])
def test_responses_bad_bodies(value: dict, code: str) -> None:
    with pytest.raises(RequestError) as caught:
        RESPONSES.parse(body(value))
    assert caught.value.code == code


def test_responses_rewrite_sets_model_instructions_and_reasoning() -> None:
    original = {"model": "MoM", "input": "hi", "instructions": "Be brief.", "reasoning": {"summary": "auto"}}
    route = Route(model="deepseek-r1", system_prompt="You are a mathematician.", use_reasoning=True,
                  system_prompt_mode=decision_pb2.SYSTEM_PROMPT_MODE_INSERT)
    out = RESPONSES.rewrite(original, route, ROUTING, decided=True)
    assert out["model"] == "deepseek-r1" and out["instructions"] == "You are a mathematician.\n\nBe brief."
    assert out["chat_template_kwargs"] == {"thinking": True} and "reasoning" not in out
    assert original["instructions"] == "Be brief."  # the client's body is not changed in place
    undecided = RESPONSES.rewrite(original, route, ROUTING, decided=False)
    assert undecided == {**original, "model": "deepseek-r1"}


def test_responses_mask_writes_placeholders_where_the_text_lives() -> None:
    request = RESPONSES.parse(body({"model": "MoM", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Thank John Smith"}]}]}))
    entity = guard_pb2.PiiEntity(type="PERSON", start=6, end=16, message_index=0)
    masked, mapping = RESPONSES.mask(request, request.body, [entity], {"PERSON"})
    assert masked["input"][0]["content"][0]["text"] == "Thank <PERSON_1>"
    assert request.body["input"][0]["content"][0]["text"] == "Thank John Smith"
    assert mapping.original("<PERSON_1>") == "John Smith"


def test_responses_blocked_and_replayed_in_its_own_shape() -> None:
    blocked = json.loads(RESPONSES.blocked_reply("MoM", "blocked", stream=False).body)
    assert blocked["status"] == "incomplete" and blocked["incomplete_details"] == {"reason": "content_filter"}
    events = typed_payloads(RESPONSES.blocked_reply("MoM", "blocked", stream=True).body)
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.incomplete"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_responses_stream_round_trip_and_cache_form() -> None:
    response = RESPONSES.from_completion({"id": "resp_1", "model": "m", "created": 5, "choices": [
        {"message": {"content": "The answer is four."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    events = response_to_events(response)
    deltas = "".join(e["delta"] for e in typed_payloads(events) if e["type"] == "response.output_text.delta")
    assert deltas == "The answer is four."
    assert RESPONSES.reassemble(events) == response
    assert RESPONSES.usage(response) == {"prompt_tokens": 3, "completion_tokens": 4}
    stored = RESPONSES.stored_answer(response)
    assert stored["choices"][0]["message"]["content"] == "The answer is four." and stored["id"] == "resp_1"
    tool_call = {**response, "output": [{"type": "function_call", "name": "f", "arguments": "{}"}]}
    assert RESPONSES.stored_answer(tool_call) is None
    assert RESPONSES.stored_answer({**response, "status": "incomplete"}) is None


def test_anthropic_parse_system_blocks_and_tool_results() -> None:
    request = ANTHROPIC.parse(body({"model": "MoM", "max_tokens": 100,
                                    "system": [{"type": "text", "text": "Be brief."}], "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "Sunny, 20 C"},
                                     {"type": "text", "text": "And tomorrow?"}]}]}))
    assert [(m.role, m.text) for m in request.messages] == [
        ("system", "Be brief."), ("user", "Weather in Oslo?"), ("assistant", ""), ("user", "And tomorrow?"),
        ("tool", "Sunny, 20 C")]
    assert request.content_paths[4] == ("messages", 2, "content", 0, "content")
    assert ANTHROPIC.called_tools(request.body) == {"get_weather"}
    assert request.view["max_tokens"] == 100 and request.view["api"] == "anthropic"


@pytest.mark.parametrize("value, code", [
    ({"model": "MoM", "messages": [{"role": "user", "content": "hi"}]}, "invalid_max_tokens"),
    ({"model": "MoM", "max_tokens": 5, "messages": []}, "missing_messages"),
    ({"model": "MoM", "max_tokens": 5, "messages": [{"role": "system", "content": "hi"}]}, "invalid_message")])
def test_anthropic_bad_bodies(value: dict, code: str) -> None:
    with pytest.raises(RequestError) as caught:
        ANTHROPIC.parse(body(value))
    assert caught.value.code == code


def test_anthropic_errors_and_blocks_in_its_shape() -> None:
    reply = ANTHROPIC.error_reply(RequestError(429, "slow down", "router_overloaded",
                                               headers=(("retry-after", "1"),)))
    assert reply.status == 429 and ("retry-after", "1") in reply.headers
    assert json.loads(reply.body) == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    blocked = json.loads(ANTHROPIC.blocked_reply("MoM", "blocked", stream=False).body)
    assert blocked["stop_reason"] == "refusal" and blocked["content"] == [{"type": "text", "text": "blocked"}]


def test_anthropic_rewrite_thinking_and_system() -> None:
    original = {"model": "MoM", "max_tokens": 8000, "system": "Be brief.", "messages": []}
    route = Route(model="deepseek-r1", system_prompt="You are a chemist.", use_reasoning=True,
                  reasoning_effort="high")
    out = ANTHROPIC.rewrite(original, route, ROUTING, decided=True)
    assert out["system"] == "You are a chemist." and out["thinking"] == {"type": "enabled", "budget_tokens": 7999}
    off = ANTHROPIC.rewrite({**original, "thinking": {"type": "enabled", "budget_tokens": 2000}},
                            Route(model="qwen3-8b"), ROUTING, decided=True)
    assert "thinking" not in off


def test_anthropic_stream_round_trip_usage_and_cache_form() -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
               "content": [{"type": "text", "text": "Four, since two plus two is four."}],
               "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 7, "output_tokens": 9}}
    events = message_to_events(message)
    kinds = [e["type"] for e in typed_payloads(events)]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert ANTHROPIC.reassemble(events) == message
    assert ANTHROPIC.stream_usage(events) == {"prompt_tokens": 7, "completion_tokens": 9}
    assert ANTHROPIC.reassemble(events.rsplit(b"event: message_stop", 1)[0]) is None  # cut off
    assert ANTHROPIC.stored_answer({**message, "stop_reason": "max_tokens"}) is None
    replayed = ANTHROPIC.from_completion(ANTHROPIC.stored_answer(message))
    assert replayed["content"] == message["content"] and replayed["usage"] == message["usage"]


def test_anthropic_reassembles_tool_use_from_json_deltas() -> None:
    raw = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in [
        {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [],
                                              "usage": {"input_tokens": 3, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f",
                                                                      "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"a\": "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "1}"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
        {"type": "message_stop"}])
    message = ANTHROPIC.reassemble(raw)
    assert message["content"][0]["input"] == {"a": 1} and message["usage"]["output_tokens"] == 12
    assert ANTHROPIC.stored_answer(message) is None


def test_chat_translator_is_the_chat_pipeline() -> None:
    request = CHAT.parse(body({"model": "MoM", "messages": [{"role": "user", "content": "hi"}]}))
    assert request.api is CHAT and request.view is None


def test_a_failing_phase_answers_in_the_clients_api_shape() -> None:
    config = parse_config(example_config_data())
    processor = RequestProcessor(FrontContext(config, clients=None, metrics=FrontMetrics()))  # type: ignore[arg-type]
    headers = ep.HttpHeaders(headers=core.HeaderMap(headers=[
        core.HeaderValue(key=":method", raw_value=b"POST"), core.HeaderValue(key=":path", raw_value=b"/v1/messages")]))
    asyncio.run(processor.process_request_headers(headers))
    answer = processor.failure_response("request_body").immediate_response
    assert answer.status.code == 500 and json.loads(answer.body)["type"] == "error"


def test_a_stored_response_is_asked_of_the_backend_that_answered_it() -> None:
    data = example_config_data()
    data["backends"] = [{"name": "simulator"}, {"name": "other", "port": 8101}]
    for name, model in data["routing"]["models"].items():
        model["backend"] = "other" if name == "deepseek-r1" else "simulator"
    config = parse_config(data)
    context = FrontContext(config, clients=None, metrics=FrontMetrics())  # type: ignore[arg-type]
    context.router.conversations.remember("resp_1", "deepseek-r1")

    def backend_for(path: str) -> list[str]:
        processor = RequestProcessor(context)
        headers = ep.HttpHeaders(headers=core.HeaderMap(headers=[
            core.HeaderValue(key=":method", raw_value=b"GET"), core.HeaderValue(key=":path", raw_value=path.encode()),
            core.HeaderValue(key="x-selected-backend", raw_value=b"simulator")]))
        mutation = asyncio.run(processor.process_request_headers(headers)).request_headers.response.header_mutation
        assert "x-selected-backend" in mutation.remove_headers  # the client's is never kept
        return [h.header.raw_value.decode() for h in mutation.set_headers if h.header.key == "x-selected-backend"]

    assert backend_for("/v1/responses/resp_1") == ["other"]
    assert backend_for("/v1/responses/resp_1/input_items?limit=5") == ["other"]
    assert backend_for("/v1/responses/resp_unknown") == []
