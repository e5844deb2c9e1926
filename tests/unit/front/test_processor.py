"""The ext_proc processor phase by phase, with protobuf messages built by hand and scripted services."""

from __future__ import annotations

import asyncio
import json

import pytest
from envoy.config.core.v3 import base_pb2 as core
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from services.common.cache_fingerprint import route_fingerprint
from services.common.config import parse_config
from services.front.mesh_clients import ServiceCall
from services.front.metrics import FrontMetrics
from services.front.processor import FrontContext, RequestProcessor
from switchyard.v1 import cache_pb2, decision_pb2, guard_pb2
from tests.conftest import example_config_data


class ScriptedClients:
    """Stands in for MeshClients: each service answers what the test scripted."""

    def __init__(self, decision=None, guard=None, cache=None, guard_delay=0.0, others_delay=0.0):
        self.answers = {
            "decision": decision or ServiceCall("decision", result=decision_pb2.DecideResponse()),
            "guard": guard or ServiceCall("guard", result=guard_pb2.CheckResponse(has_opinion=True)),
            "cache": cache or ServiceCall("cache", result=cache_pb2.LookupResponse()),
        }
        self.delays = {"guard": guard_delay, "decision": others_delay, "cache": others_delay}
        self.cancelled: list[str] = []
        self.contexts = []
        self.stored = []
        self.timeouts = {}

    async def _answer(self, name, context):
        self.contexts.append(context)
        try:
            await asyncio.sleep(self.delays[name])
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        return self.answers[name]

    async def decide(self, context, timeout_s=None):
        self.timeouts["decision"] = timeout_s
        return await self._answer("decision", context)

    async def check(self, context, timeout_s=None):
        self.timeouts["guard"] = timeout_s
        return await self._answer("guard", context)

    async def lookup(self, context, timeout_s=None):
        self.timeouts["cache"] = timeout_s
        return await self._answer("cache", context)

    async def store(self, request):
        self.stored.append(request)
        return ServiceCall("cache", result=cache_pb2.StoreResponse(stored=True))


def make_processor(clients=None, overrides=None) -> RequestProcessor:
    data = example_config_data()
    for section, values in (overrides or {}).items():
        data[section].update(values)
    config = parse_config(data)
    return RequestProcessor(FrontContext(config, clients or ScriptedClients(), FrontMetrics()))


def headers(method: str, path: str, end_of_stream: bool = False, **extra: str) -> ep.HttpHeaders:
    pairs = {":method": method, ":path": path, "content-type": "application/json", **extra}
    return ep.HttpHeaders(headers=core.HeaderMap(headers=[core.HeaderValue(key=k, raw_value=v.encode())
                                                          for k, v in pairs.items()]),
                          end_of_stream=end_of_stream)


def body(value: object | bytes) -> ep.HttpBody:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return ep.HttpBody(body=raw, end_of_stream=True)


def set_headers(mutation: ep.HeaderMutation) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


CHAT = {"model": "MoM", "messages": [{"role": "user", "content": "Solve 3x+5=20"}], "temperature": 0.25,
        "x_unknown_field": {"nested": [1, 2.5, "ünïcode ✓"]}}


async def test_models_endpoint_is_answered_by_the_router() -> None:
    response = await make_processor().process_request_headers(headers("GET", "/v1/models"))
    assert response.WhichOneof("response") == "immediate_response"
    listed = [m["id"] for m in json.loads(response.immediate_response.body)["data"]]
    assert listed == ["MoM", "auto", "qwen3-8b", "llama-3.1-8b", "deepseek-r1"]


async def test_non_chat_path_passes_through_and_skips_later_phases() -> None:
    response = await make_processor().process_request_headers(headers("POST", "/v1/embeddings"))
    assert response.WhichOneof("response") == "request_headers"
    assert response.mode_override.request_body_mode == pm.ProcessingMode.NONE
    assert response.mode_override.response_header_mode == pm.ProcessingMode.SKIP
    assert "x-selected-model" in response.request_headers.response.header_mutation.remove_headers


async def test_chat_without_body_is_a_400() -> None:
    response = await make_processor().process_request_headers(
        headers("POST", "/v1/chat/completions", end_of_stream=True))
    assert response.immediate_response.status.code == 400
    assert json.loads(response.immediate_response.body)["error"]["code"] == "empty_body"


async def test_alias_routes_to_default_model_and_keeps_other_fields() -> None:
    processor = make_processor()
    await processor.process_request_headers(headers("POST", "/v1/chat/completions", **{"x-request-id": "abc"}))
    response = await processor.process_request_body(body(CHAT))
    common = response.request_body.response
    assert common.clear_route_cache
    new_body = json.loads(common.body_mutation.body)
    assert new_body["model"] == "qwen3-8b"
    assert new_body["temperature"] == 0.25 and new_body["x_unknown_field"] == CHAT["x_unknown_field"]
    assert new_body["messages"] == CHAT["messages"]
    mutated = set_headers(common.header_mutation)
    assert mutated["x-selected-model"] == "qwen3-8b"
    assert mutated["content-length"] == str(len(common.body_mutation.body))


async def test_concrete_model_passes_through_without_decision() -> None:
    processor = make_processor()
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    response = await processor.process_request_body(body({**CHAT, "model": "deepseek-r1"}))
    assert json.loads(response.request_body.response.body_mutation.body)["model"] == "deepseek-r1"


@pytest.mark.parametrize(("raw", "code", "status"), [
    (b"{not json", "invalid_json", 400),
    (b"[1, 2]", "invalid_body", 400),
    (b'{"model": "MoM"}', "missing_messages", 400),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "missing_model", 400),
    (b'{"model": "MoM", "messages": [{"role": "user", "content": 5}]}', "invalid_content", 400),
    (b'{"model": "MoM", "messages": ["hi"]}', "invalid_message", 400),
])
async def test_malformed_bodies_get_openai_errors(raw: bytes, code: str, status: int) -> None:
    processor = make_processor()
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    response = await processor.process_request_body(body(raw))
    reply = response.immediate_response
    assert reply.status.code == status
    error = json.loads(reply.body)["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


async def test_body_over_the_limit_is_413() -> None:
    processor = make_processor(overrides={"front": {"max_body_bytes": 100}})
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    response = await processor.process_request_body(body({**CHAT, "pad": "x" * 200}))
    assert response.immediate_response.status.code == 413


async def test_content_parts_are_flattened_for_the_services() -> None:
    clients = ScriptedClients()
    processor = make_processor(clients)
    await processor.process_request_headers(headers("POST", "/v1/chat/completions", **{"x-user-id": "team-a"}))
    parts = [{"type": "text", "text": "first"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "second"}]
    await processor.process_request_body(body({"model": "MoM", "messages": [{"role": "user", "content": parts}]}))
    context = clients.contexts[0]
    assert context.messages[0].text == "first\nsecond" and context.messages[0].from_parts
    assert context.tenant == "team-a" and context.requested_model == "MoM"


async def test_failed_service_fails_open_with_degraded_header() -> None:
    clients = ScriptedClients(decision=ServiceCall("decision", failure="unavailable"))
    processor = make_processor(clients)
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    response = await processor.process_request_body(body(CHAT))
    assert json.loads(response.request_body.response.body_mutation.body)["model"] == "qwen3-8b"
    reply = await processor.process_response_headers(ep.HttpHeaders(headers=core.HeaderMap(headers=[
        core.HeaderValue(key=":status", raw_value=b"200")])))
    assert set_headers(reply.response_headers.response.header_mutation)["x-vsr-degraded"] == "decision"


async def test_failed_service_fails_closed_with_503() -> None:
    clients = ScriptedClients(guard=ServiceCall("guard", failure="timeout"))
    processor = make_processor(clients, overrides={"guard": {"on_failure": "closed"}})
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    response = await processor.process_request_body(body(CHAT))
    assert response.immediate_response.status.code == 503
    assert json.loads(response.immediate_response.body)["error"]["code"] == "guard_unavailable"


def status_of(response: ep.ProcessingResponse) -> int:
    return response.immediate_response.status.code


def error_of(response: ep.ProcessingResponse) -> dict:
    return json.loads(response.immediate_response.body)["error"]


async def route_chat(processor: RequestProcessor, chat: dict) -> ep.ProcessingResponse:
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    return await processor.process_request_body(body(chat))


@pytest.mark.parametrize("failure", ["timeout", "unavailable", "error", "circuit_open"])
async def test_guard_fails_closed_by_default_with_retry_after(failure: str) -> None:
    # Only an open breaker knows when the service may be asked again; otherwise Retry-After is 1 s.
    retry_after_s = 2.4 if failure == "circuit_open" else 0.0
    clients = ScriptedClients(guard=ServiceCall("guard", failure=failure, retry_after_s=retry_after_s))
    response = await route_chat(make_processor(clients), CHAT)
    assert status_of(response) == 503
    error = error_of(response)
    assert error["code"] == "guard_unavailable" and "guard.on_failure" in error["message"]
    retry_after = set_headers(response.immediate_response.headers)["retry-after"]
    assert retry_after == ("3" if failure == "circuit_open" else "1")


async def test_guard_open_routes_but_marks_every_response_unverified() -> None:
    clients = ScriptedClients(guard=ServiceCall("guard", failure="timeout"))
    processor = make_processor(clients, overrides={"guard": {"on_failure": "open"}})
    response = await route_chat(processor, CHAT)
    assert json.loads(response.request_body.response.body_mutation.body)["model"] == "qwen3-8b"
    reply = await processor.process_response_headers(ep.HttpHeaders(headers=core.HeaderMap(headers=[
        core.HeaderValue(key=":status", raw_value=b"200")])))
    sent = set_headers(reply.response_headers.response.header_mutation)
    assert sent["x-vsr-guard"] == "unverified" and sent["x-vsr-degraded"] == "guard"
    assert processor.metrics.unverified.labels("timeout")._value.get() == 1


@pytest.mark.parametrize("guard", [ServiceCall("guard", failure="disabled"),
                                   ServiceCall("guard", result=guard_pb2.CheckResponse(has_opinion=False))])
async def test_a_guard_without_opinion_is_unverified_not_clean(guard: ServiceCall) -> None:
    processor = make_processor(ScriptedClients(guard=guard))
    await route_chat(processor, CHAT)
    reply = await processor.process_response_headers(ep.HttpHeaders(headers=core.HeaderMap(headers=[
        core.HeaderValue(key=":status", raw_value=b"200")])))
    assert set_headers(reply.response_headers.response.header_mutation)["x-vsr-guard"] == "unverified"


async def test_a_verified_request_has_no_unverified_mark() -> None:
    processor = make_processor()
    await route_chat(processor, CHAT)
    reply = await processor.process_response_headers(ep.HttpHeaders(headers=core.HeaderMap(headers=[
        core.HeaderValue(key=":status", raw_value=b"200")])))
    assert "x-vsr-guard" not in set_headers(reply.response_headers.response.header_mutation)


@pytest.mark.parametrize(("model", "code"), [("x" * 20_000, "invalid_model"), ("gpt-unknown", "model_not_found"),
                                              ("bad\nname", "invalid_model")])
async def test_model_names_are_checked_before_any_service_is_asked(model: str, code: str) -> None:
    clients = ScriptedClients()
    response = await route_chat(make_processor(clients), {**CHAT, "model": model})
    assert status_of(response) == 400 and error_of(response)["code"] == code
    assert len(error_of(response)["message"]) < 400  # never echoes a huge name
    assert clients.contexts == []  # decision (or its absence) cannot widen what is accepted


async def test_unknown_model_passes_when_the_operator_allows_it() -> None:
    processor = make_processor(overrides={"routing": {"unknown_model": "passthrough"}})
    response = await route_chat(processor, {**CHAT, "model": "gpt-unknown"})
    assert json.loads(response.request_body.response.body_mutation.body)["model"] == "gpt-unknown"
    assert processor.metrics.model_requests.labels("other")._value.get() == 1  # no client text as a label


async def test_deadlines_grow_with_the_prompt() -> None:
    short, long = ScriptedClients(), ScriptedClients()
    await route_chat(make_processor(short), CHAT)
    await route_chat(make_processor(long), {**CHAT, "messages": [{"role": "user", "content": "word " * 1500}]})
    for service in ("guard", "decision", "cache"):
        assert long.timeouts[service] > short.timeouts[service] + 1.0
    assert long.timeouts["guard"] <= 6.0  # front.max_routing_ms


async def test_a_prompt_too_long_for_the_routing_budget_is_400_naming_the_key() -> None:
    clients = ScriptedClients()
    processor = make_processor(clients, overrides={"front": {"max_body_bytes": 10_000_000}})
    response = await route_chat(processor, {**CHAT, "messages": [{"role": "user", "content": "word " * 20_000}]})
    assert status_of(response) == 400
    assert error_of(response)["code"] == "prompt_too_long" and "front.max_routing_ms" in error_of(response)["message"]
    assert clients.contexts == []


async def test_overload_is_answered_429_with_retry_after_before_any_work() -> None:
    clients = ScriptedClients(guard_delay=0.5, others_delay=0.5)
    context = FrontContext(make_processor().config, clients, FrontMetrics())
    # Three of these fit under the routing budget, a fourth does not.
    long_chat = {**CHAT, "messages": [{"role": "user", "content": "word " * int(context.admission.max_work / 3.3)}]}
    busy = [RequestProcessor(context) for _ in range(3)]
    tasks = [asyncio.create_task(route_chat(p, long_chat)) for p in busy]
    await asyncio.sleep(0.1)
    assert context.admission.inflight_requests == 3
    response = await route_chat(RequestProcessor(context), long_chat)
    assert status_of(response) == 429
    assert error_of(response)["code"] == "router_overloaded"
    assert int(set_headers(response.immediate_response.headers)["retry-after"]) >= 1
    assert len(clients.contexts) == 9  # three services for each of the three admitted ones, none for it
    await asyncio.gather(*tasks)
    assert context.admission.inflight_requests == 0 and context.admission.inflight_work == 0
    assert status_of(await route_chat(RequestProcessor(context), CHAT)) == 0  # routed again


async def test_guard_block_cancels_the_other_calls() -> None:
    guard = ServiceCall("guard", result=guard_pb2.CheckResponse(
        has_opinion=True, jailbreak=True, jailbreak_score=0.97, jailbreak_type="jailbreak"))
    clients = ScriptedClients(guard=guard, others_delay=5.0)
    processor = make_processor(clients)
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    response = await asyncio.wait_for(processor.process_request_body(body(CHAT)), 2.0)
    reply = response.immediate_response
    assert reply.status.code == 200
    completion = json.loads(reply.body)
    assert completion["choices"][0]["finish_reason"] == "content_filter"
    assert set_headers(reply.headers)["x-vsr-jailbreak-blocked"] == "true"
    assert sorted(clients.cancelled) == ["cache", "decision"]
    assert "x-vsr-degraded" not in set_headers(reply.headers)  # cancelled is not degraded


async def test_decision_candidates_reasoning_and_system_prompt_are_applied() -> None:
    decision = ServiceCall("decision", result=decision_pb2.DecideResponse(
        has_opinion=True, category="math", confidence=0.93,
        candidates=[decision_pb2.Candidate(model="qwen3-8b", score=0.9, use_reasoning=True)],
        system_prompt="You are a mathematician.", system_prompt_mode=decision_pb2.SYSTEM_PROMPT_MODE_REPLACE))
    processor = make_processor(ScriptedClients(decision=decision))
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    request = {**CHAT, "reasoning_effort": "high",
               "messages": [{"role": "system", "content": "old"}, *CHAT["messages"]]}
    response = await processor.process_request_body(body(request))
    sent = json.loads(response.request_body.response.body_mutation.body)
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}
    assert "reasoning_effort" not in sent
    assert sent["messages"][0] == {"role": "system", "content": "You are a mathematician."}
    reply = await processor.process_response_headers(ep.HttpHeaders(headers=core.HeaderMap(headers=[
        core.HeaderValue(key=":status", raw_value=b"200"),
        core.HeaderValue(key="content-type", raw_value=b"text/event-stream")])))
    assert reply.mode_override.response_body_mode == pm.ProcessingMode.STREAMED
    added = set_headers(reply.response_headers.response.header_mutation)
    assert added["x-vsr-selected-category"] == "math"
    assert added["x-vsr-selected-reasoning"] == "on"
    assert added["x-vsr-injected-system-prompt"] == "true"


async def test_response_usage_is_counted_per_model() -> None:
    processor = make_processor()
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    await processor.process_request_body(body(CHAT))
    await processor.process_response_headers(ep.HttpHeaders(headers=core.HeaderMap(headers=[
        core.HeaderValue(key=":status", raw_value=b"200")])))
    await processor.process_response_body(body({"usage": {"prompt_tokens": 7, "completion_tokens": 3}}))
    metrics = processor.metrics
    assert metrics.prompt_tokens.labels("qwen3-8b")._value.get() == 7
    assert metrics.completion_tokens.labels("qwen3-8b")._value.get() == 3


COMPLETION = {"id": "c1", "object": "chat.completion", "created": 1, "model": "qwen3-8b",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "x = 5"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


# What the router changes in the body for the default route (no system prompt, no reasoning).
PLAIN_ROUTE = route_fingerprint("", 0, False, "")


def cache_hit(model: str = "qwen3-8b", route: str = PLAIN_ROUTE) -> ServiceCall:
    return ServiceCall("cache", result=cache_pb2.LookupResponse(has_opinion=True, matches=[
        cache_pb2.CacheMatch(model="deepseek-r1", similarity=0.99, body=b'{"wrong": true}', route_fingerprint=route),
        cache_pb2.CacheMatch(model=model, similarity=0.95, body=json.dumps(COMPLETION).encode(),
                             route_fingerprint=route, check="paraphrase")]))


async def test_a_stored_answer_given_under_another_system_prompt_is_not_served() -> None:
    other = route_fingerprint("You are a pirate.", 1, True, "high")
    processor = make_processor(ScriptedClients(cache=cache_hit(route=other)))
    response = await route_chat(processor, CHAT)
    assert response.WhichOneof("response") == "request_body"  # went on to the backend


async def test_cache_hit_for_the_routed_model_is_answered_by_the_router() -> None:
    processor = make_processor(ScriptedClients(cache=cache_hit()))
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    reply = (await processor.process_request_body(body(CHAT))).immediate_response
    assert reply.status.code == 200 and json.loads(reply.body) == COMPLETION
    added = set_headers(reply.headers)
    assert added["x-vsr-cache-hit"] == "true" and added["x-vsr-cache-similarity"] == "0.9500"
    assert added["x-vsr-cache-check"] == "paraphrase"


async def test_cache_hit_for_another_model_is_not_used() -> None:
    processor = make_processor(ScriptedClients(cache=cache_hit(model="llama-3.1-8b")))
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    response = await processor.process_request_body(body(CHAT))
    assert response.WhichOneof("response") == "request_body"


async def test_streaming_cache_hit_is_replayed_as_sse() -> None:
    processor = make_processor(ScriptedClients(cache=cache_hit()))
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    reply = (await processor.process_request_body(body({**CHAT, "stream": True}))).immediate_response
    assert set_headers(reply.headers)["content-type"] == "text/event-stream"
    events = [e for e in reply.body.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "x = 5" and chunks[-1]["usage"]["total_tokens"] == 8


async def _respond(processor: RequestProcessor, status: bytes, content_type: bytes, chunks: list[bytes]) -> None:
    await processor.process_response_headers(ep.HttpHeaders(headers=core.HeaderMap(headers=[
        core.HeaderValue(key=":status", raw_value=status), core.HeaderValue(key="content-type", raw_value=content_type)])))
    for i, chunk in enumerate(chunks):
        await processor.process_response_body(ep.HttpBody(body=chunk, end_of_stream=i == len(chunks) - 1))
    await asyncio.sleep(0)  # let the fire-and-forget write run


async def test_finished_answers_are_written_to_the_cache() -> None:
    clients = ScriptedClients()
    processor = make_processor(clients)
    await processor.process_request_headers(headers("POST", "/v1/chat/completions", **{"x-user-id": "t1"}))
    await processor.process_request_body(body(CHAT))
    await _respond(processor, b"200", b"application/json", [json.dumps(COMPLETION).encode()])
    assert len(clients.stored) == 1
    stored = clients.stored[0]
    assert stored.model == "qwen3-8b" and stored.request.tenant == "t1"
    assert json.loads(stored.body)["choices"][0]["message"]["content"] == "x = 5"


async def test_streamed_answers_are_reassembled_for_the_cache() -> None:
    clients = ScriptedClients()
    processor = make_processor(clients)
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    await processor.process_request_body(body({**CHAT, "stream": True}))
    from services.common.sse import completion_to_sse
    stream = completion_to_sse(COMPLETION)
    await _respond(processor, b"200", b"text/event-stream", [stream[:40], stream[40:120], stream[120:]])
    assert len(clients.stored) == 1
    assert json.loads(clients.stored[0].body)["choices"][0]["message"]["content"] == "x = 5"
    assert processor.metrics.completion_tokens.labels("qwen3-8b")._value.get() == 3


@pytest.mark.parametrize(("status", "completion", "directive"), [
    (b"500", COMPLETION, None),
    (b"200", {**COMPLETION, "choices": [{**COMPLETION["choices"][0], "finish_reason": "content_filter"}]}, None),
    (b"200", COMPLETION, "no-store"),
])
async def test_unfit_answers_are_not_cached(status, completion, directive) -> None:
    clients = ScriptedClients()
    processor = make_processor(clients)
    extra = {"cache-control": directive} if directive else {}
    await processor.process_request_headers(headers("POST", "/v1/chat/completions", **extra))
    await processor.process_request_body(body(CHAT))
    await _respond(processor, status, b"application/json", [json.dumps(completion).encode()])
    assert clients.stored == []


def pii_guard(*entities: tuple[str, int, int, int]) -> ServiceCall:
    return ServiceCall("guard", result=guard_pb2.CheckResponse(has_opinion=True, pii=[
        guard_pb2.PiiEntity(type=t, message_index=m, start=s, end=e, confidence=0.9) for t, m, s, e in entities]))


async def test_pii_re_routes_to_a_model_whose_policy_allows_it() -> None:
    # law: llama-3.1-8b (allows only DATE_TIME, NRP) then qwen3-8b (allows everything).
    decision = ServiceCall("decision", result=decision_pb2.DecideResponse(has_opinion=True, category="law", candidates=[
        decision_pb2.Candidate(model="llama-3.1-8b", score=0.8), decision_pb2.Candidate(model="qwen3-8b", score=0.7)]))
    processor = make_processor(ScriptedClients(decision=decision, guard=pii_guard(("EMAIL_ADDRESS", 0, 0, 5))))
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    response = await processor.process_request_body(body(CHAT))
    assert json.loads(response.request_body.response.body_mutation.body)["model"] == "qwen3-8b"


async def test_pii_no_model_may_see_is_blocked_without_echoing_it() -> None:
    decision = ServiceCall("decision", result=decision_pb2.DecideResponse(has_opinion=True, category="law", candidates=[
        decision_pb2.Candidate(model="llama-3.1-8b", score=0.8)]))
    chat = {"model": "MoM", "messages": [{"role": "user", "content": "mail bob@example.com please"}]}
    processor = make_processor(ScriptedClients(decision=decision, guard=pii_guard(("EMAIL_ADDRESS", 0, 5, 20))))
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    reply = (await processor.process_request_body(body(chat))).immediate_response
    assert set_headers(reply.headers)["x-vsr-pii-violation"] == "true"
    assert set_headers(reply.headers)["x-vsr-pii-types"] == "EMAIL_ADDRESS"
    assert json.loads(reply.body)["choices"][0]["finish_reason"] == "content_filter"
    assert b"bob@example.com" not in reply.body


async def test_masked_pii_leaves_as_placeholders_and_comes_back_in_the_answer() -> None:
    text = 'Write to Zoë "Z" Müller about Zoë "Z" Müller\'s visit'
    first = text.index("Zoë")
    second = text.index("Zoë", first + 1)
    name_len = len('Zoë "Z" Müller')
    guard = pii_guard(("PERSON", 0, first, first + name_len), ("PERSON", 0, second, second + name_len))
    clients = ScriptedClients(guard=guard)
    processor = make_processor(clients, overrides={"guard": {"pii": {"mask_types": ["PERSON"]}}})
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    response = await processor.process_request_body(body({"model": "MoM", "messages": [{"role": "user", "content": text}]}))
    sent = json.loads(response.request_body.response.body_mutation.body)
    assert sent["messages"][-1]["content"] == "Write to <PERSON_1> about <PERSON_1>'s visit"
    await processor.process_response_headers(ep.HttpHeaders(headers=core.HeaderMap(headers=[
        core.HeaderValue(key=":status", raw_value=b"200"), core.HeaderValue(key="content-type", raw_value=b"application/json")])))
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Dear <PERSON_1>,"}, "finish_reason": "stop"}]}
    reply = await processor.process_response_body(body(answer))
    restored = reply.response_body.response.body_mutation.body
    assert json.loads(restored)["choices"][0]["message"]["content"] == 'Dear Zoë "Z" Müller,'
    assert set_headers(reply.response_body.response.header_mutation)["content-length"] == str(len(restored))
    assert clients.stored == []  # masked exchanges are not cached


async def test_masked_stream_is_unmasked_across_chunk_boundaries() -> None:
    guard = pii_guard(("PERSON", 0, 6, 11))
    processor = make_processor(ScriptedClients(guard=guard), overrides={"guard": {"pii": {"mask_types": ["PERSON"]}}})
    await processor.process_request_headers(headers("POST", "/v1/chat/completions"))
    await processor.process_request_body(body({"model": "MoM", "stream": True,
                                               "messages": [{"role": "user", "content": "Greet Alice now"}]}))
    await processor.process_response_headers(ep.HttpHeaders(headers=core.HeaderMap(headers=[
        core.HeaderValue(key=":status", raw_value=b"200"), core.HeaderValue(key="content-type", raw_value=b"text/event-stream")])))
    pieces = [b'data: {"c": "Hi <PER', b'SON_1>!"}\n\n', b"data: [DONE]\n\n"]
    out = b""
    for i, piece in enumerate(pieces):
        reply = await processor.process_response_body(ep.HttpBody(body=piece, end_of_stream=i == len(pieces) - 1))
        out += reply.response_body.response.body_mutation.body
    assert out == b'data: {"c": "Hi Alice!"}\n\ndata: [DONE]\n\n'


async def test_a_guard_failure_that_refuses_the_request_stops_the_other_calls() -> None:
    clients = ScriptedClients(guard=ServiceCall("guard", failure="unavailable"), others_delay=5.0)
    response = await asyncio.wait_for(route_chat(make_processor(clients), CHAT), 2.0)
    assert status_of(response) == 503
    assert sorted(clients.cancelled) == ["cache", "decision"]  # no Triton work for a refused request
