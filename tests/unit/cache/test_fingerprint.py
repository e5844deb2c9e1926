"""The fingerprint contract, through the front's parser and the cache on both stores: a request that differs
from a stored one in any field that can change the answer misses; one that differs only in a neutral field hits."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from qdrant_client import QdrantClient

from services.cache.metrics import CacheMetrics
from services.cache.semantic_cache import SemanticCache
from services.cache.store_embedded import EmbeddedStore
from services.cache.store_server import ServerStore
from services.common.cache_fingerprint import ANSWER_NEUTRAL_FIELDS, answer_fingerprint, route_fingerprint
from services.front.chat_request import parse_chat_request
from tests.unit.cache.conftest import DIM, cache_config, completion

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"temperature_c": {"type": "number"}}, "required": ["temperature_c"]}}}
IMAGE_A = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAE="}}
IMAGE_B = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAI="}}
QUESTION = "What should I wear today?"

BASE: dict[str, Any] = {
    "model": "MoM",
    "messages": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "I am in Paris."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "get_weather",
                                                                "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "12 C, light rain"},
        {"role": "assistant", "content": "It is 12 C and raining in Paris."},
        {"role": "user", "content": [{"type": "text", "text": QUESTION}, IMAGE_A]},
    ],
    "tools": [WEATHER_TOOL],
    "response_format": SCHEMA,
    "max_tokens": 256,
}


def edit(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def apply(body: dict[str, Any]) -> None:
        for key, value in fields.items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
    return apply


def edit_message(index: int, **fields: Any) -> Callable[[dict[str, Any]], None]:
    def apply(body: dict[str, Any]) -> None:
        body["messages"][index].update(fields)
    return apply


def edit_tool_call(**function: Any) -> Callable[[dict[str, Any]], None]:
    def apply(body: dict[str, Any]) -> None:
        body["messages"][2]["tool_calls"][0]["function"].update(function)
    return apply


OTHER_TOOL = copy.deepcopy(WEATHER_TOOL)
OTHER_TOOL["function"]["parameters"]["properties"]["units"] = {"type": "string", "enum": ["C", "F"]}
OTHER_SCHEMA = copy.deepcopy(SCHEMA)
OTHER_SCHEMA["json_schema"]["schema"]["properties"]["temperature_f"] = {"type": "number"}

ANSWER_CHANGING: dict[str, Callable[[dict[str, Any]], None]] = {
    "tools: a parameter added": edit(tools=[OTHER_TOOL]),
    "tools: one more": edit(tools=[WEATHER_TOOL, {**OTHER_TOOL, "function": {**OTHER_TOOL["function"],
                                                                            "name": "get_forecast"}}]),
    "tools: none": edit(tools=None),
    "tool_choice: required": edit(tool_choice="required"),
    "tool_choice: none": edit(tool_choice="none"),
    "tool_choice: a named function": edit(tool_choice={"type": "function", "function": {"name": "get_weather"}}),
    "parallel_tool_calls: false": edit(parallel_tool_calls=False),
    "response_format: json_object": edit(response_format={"type": "json_object"}),
    "response_format: another json_schema": edit(response_format=OTHER_SCHEMA),
    "response_format: none": edit(response_format=None),
    "content part: another image": edit_message(5, content=[{"type": "text", "text": QUESTION}, IMAGE_B]),
    "content part: no image": edit_message(5, content=QUESTION),
    "content part: image detail": edit_message(5, content=[
        {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {**IMAGE_A["image_url"],
                                                                                "detail": "low"}}]),
    "stop": edit(stop=["\n"]),
    "seed": edit(seed=7),
    "logprobs": edit(logprobs=True, top_logprobs=3),
    "n": edit(n=2),
    "max_tokens": edit(max_tokens=16),
    "max_completion_tokens instead of a larger max_tokens": edit(max_tokens=None, max_completion_tokens=1024),
    "top_p": edit(top_p=0.5),
    "presence_penalty": edit(presence_penalty=0.5),
    "frequency_penalty": edit(frequency_penalty=0.5),
    "logit_bias": edit(logit_bias={"1234": -100}),
    "reasoning_effort": edit(reasoning_effort="high"),
    "chat_template_kwargs": edit(chat_template_kwargs={"enable_thinking": True}),
    "a field the router does not know": edit(verbosity="high"),
    "system prompt": edit_message(0, content="You are a verbose assistant."),
    "an earlier user turn": edit_message(1, content="I am in Rome."),
    "an earlier assistant answer": edit_message(4, content="It is 30 C and sunny in Paris."),
    "a tool result": edit_message(3, content="30 C, sunny"),
    "tool call arguments": edit_tool_call(arguments='{"city": "Rome"}'),
    "tool call function": edit_tool_call(name="get_forecast"),
    "a name on the question": edit_message(5, name="bob"),
    "the turn before answered by another call": lambda body: body["messages"][3].update(tool_call_id="call_other"),
}

ANSWER_NEUTRAL: dict[str, Callable[[dict[str, Any]], None]] = {
    "user": edit(user="someone-else"),
    "stream": edit(stream=True),
    "stream_options": edit(stream=True, stream_options={"include_usage": True}),
    "temperature (within max_temperature)": edit(temperature=0),
    "metadata": edit(metadata={"ticket": "123"}),
    "store": edit(store=True),
    "service_tier": edit(service_tier="flex"),
    "model alias": edit(model="auto"),
    "prompt_cache_key": edit(prompt_cache_key="k"),
    "safety_identifier": edit(safety_identifier="u-1"),
    "defaults spelled out": edit(n=1, top_p=1, presence_penalty=0, frequency_penalty=0, logprobs=False,
                                 tool_choice="auto", parallel_tool_calls=True, stop=None, seed=None),
    "max_completion_tokens for max_tokens": edit(max_tokens=None, max_completion_tokens=256),
    "1.0 for 1": edit(top_p=1.0),
    "whitespace in an earlier turn": edit_message(0, content="  You are a   terse\nassistant. "),
    "tool call ids": lambda body: (body["messages"][2]["tool_calls"][0].update(id="call_xyz"),
                                   body["messages"][3].update(tool_call_id="call_xyz")),
    "tool call arguments spacing and key order": edit_tool_call(arguments='{ "city" :"Paris" }'),
    "key order": lambda body: [body.__setitem__(key, body.pop(key)) for key in reversed(list(body))],
}


@pytest.fixture(params=["embedded", "qdrant-client"])
async def cache(request, tmp_path, embedder, clock):
    store = EmbeddedStore(tmp_path, "c", DIM) if request.param == "embedded" else \
        ServerStore(QdrantClient(":memory:"), "c", DIM)
    made = SemanticCache(cache_config(), store, embedder, CacheMetrics(), clock=clock)
    await made.start()
    yield made
    await made.close()


def context(body: dict[str, Any], tenant: str = "alice"):
    return parse_chat_request(json.dumps(body).encode()).to_context("r", tenant, [])


async def stored(cache: SemanticCache, body: dict[str, Any] = BASE) -> None:
    result = cache.submit(context(body), "m1", "", completion("Take an umbrella."))
    assert result.queued, result.reason
    await cache.drain()


def changed(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    change(body)
    return body


async def test_the_same_request_hits(cache):
    await stored(cache)
    assert [m.check for m in (await cache.lookup(context(BASE))).matches] == ["exact"]


@pytest.mark.parametrize("change", ANSWER_CHANGING.values(), ids=ANSWER_CHANGING.keys())
async def test_an_answer_changing_field_changed_alone_misses(cache, change):
    await stored(cache)
    body = changed(change)
    assert body != BASE
    assert (await cache.lookup(context(body))).matches == []


@pytest.mark.parametrize("change", ANSWER_NEUTRAL.values(), ids=ANSWER_NEUTRAL.keys())
async def test_a_neutral_field_changed_hits(cache, change):
    await stored(cache)
    body = changed(change)
    assert json.dumps(body) != json.dumps(BASE)
    assert [m.check for m in (await cache.lookup(context(body))).matches] == ["exact"]


async def test_another_tenant_misses(cache):
    await stored(cache)
    assert (await cache.lookup(context(BASE, tenant="bob"))).matches == []


def test_every_neutral_field_says_why():
    assert all(reason.strip() for reason in ANSWER_NEUTRAL_FIELDS.values())
    assert "tools" not in ANSWER_NEUTRAL_FIELDS and "messages" not in ANSWER_NEUTRAL_FIELDS


def test_the_question_text_is_not_part_of_it():
    other = changed(edit_message(5, content=[{"type": "text", "text": "Do I need an umbrella?"}, IMAGE_A]))
    assert answer_fingerprint(other) == answer_fingerprint(BASE)


def test_text_parts_read_like_the_string_they_join_to():
    parts = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                     {"type": "text", "text": "b"}]}]}
    joined = {"model": "m", "messages": [{"role": "user", "content": "a\nb"}]}
    assert answer_fingerprint(parts) == answer_fingerprint(joined)


def test_route_fingerprint():
    base = route_fingerprint("You are a mathematician.", 1, True, "high")
    assert route_fingerprint("You are a mathematician.", 1, True, "high") == base
    assert route_fingerprint("You are a physicist.", 1, True, "high") != base
    assert route_fingerprint("You are a mathematician.", 2, True, "high") != base
    assert route_fingerprint("You are a mathematician.", 1, False, "high") != base
    assert route_fingerprint("You are a mathematician.", 1, True, "low") != base
    # Without a prompt the mode does nothing, without reasoning the effort does nothing.
    assert route_fingerprint("", 1, False, "high") == route_fingerprint("", 2, False, "")
