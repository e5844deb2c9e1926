"""Bypass rules, thresholds and what counts as a storable answer."""

from __future__ import annotations

import json

import pytest

from services.cache import policy as p
from services.cache.policy import CachePolicy, StoreRefusal, completion_from_body
from services.cache.verify import Agreement
from services.common.sse import completion_to_sse
from tests.unit.cache.conftest import cache_config, completion, request


def test_directives():
    policy = CachePolicy(cache_config())
    assert policy.lookup_bypass(request("q", directives=["no-cache"])) == p.NO_CACHE
    assert policy.store_bypass(request("q", directives=["no-cache"]), "m") is None
    assert policy.lookup_bypass(request("q", directives=["no-store"])) is None
    assert policy.store_bypass(request("q", directives=["no-store", "max-age=0"]), "m") == p.NO_STORE


@pytest.mark.parametrize("temperature, max_temperature, bypassed", [
    (None, 0.0, False),  # unset: cacheable
    (0.0, 0.0, False),
    (0.7, 0.0, True),
    (0.7, 0.7, False),
    (0.8, 0.7, True),
])
def test_temperature_bypass(temperature, max_temperature, bypassed):
    policy = CachePolicy(cache_config(max_temperature=max_temperature))
    context = request("q", temperature=temperature)
    assert (policy.lookup_bypass(context) == p.TEMPERATURE) is bypassed
    assert (policy.store_bypass(context, "m") == p.TEMPERATURE) is bypassed


def test_per_model_enable():
    policy = CachePolicy(cache_config(models=["m1"]))
    assert policy.store_bypass(request("q"), "m1") is None
    assert policy.store_bypass(request("q"), "m2") == p.MODEL_DISABLED
    assert CachePolicy(cache_config()).model_enabled("anything")


def test_thresholds():
    policy = CachePolicy(cache_config(similarity_threshold=0.9, category_thresholds={"math": 0.97, "chat": 0.8},
                                      lexical_threshold=0.75))
    assert policy.threshold("math") == 0.97
    assert policy.threshold("law") == 0.9
    assert policy.threshold("law", Agreement.PARAPHRASE) == 0.9
    for agreement in (Agreement.EXACT, Agreement.LEXICAL, Agreement.CORRECTION):
        assert policy.threshold("math", agreement) == 0.75
    assert policy.lowest_threshold == 0.75


def test_without_verification_one_threshold_for_all():
    policy = CachePolicy(cache_config(verify=False, similarity_threshold=0.9, lexical_threshold=0.5))
    assert policy.threshold("law", Agreement.LEXICAL) == 0.9
    assert policy.lowest_threshold == 0.9


def test_anonymous_requests_bypass_unless_shared():
    bypassing = CachePolicy(cache_config())
    assert bypassing.lookup_bypass(request("q", tenant="")) == p.ANONYMOUS
    assert bypassing.store_bypass(request("q", tenant=""), "m") == p.ANONYMOUS
    assert bypassing.lookup_bypass(request("q", tenant="alice")) is None
    sharing = CachePolicy(cache_config(anonymous="shared"))
    assert sharing.lookup_bypass(request("q", tenant="")) is None
    assert sharing.store_bypass(request("q", tenant=""), "m") is None


def test_eviction_order():
    assert CachePolicy(cache_config(eviction="lru")).eviction_order == "last_used_at"
    assert CachePolicy(cache_config(eviction="fifo")).eviction_order == "created_at"


def test_completion_from_json_and_sse():
    assert completion_from_body(completion("a"))["choices"][0]["message"]["content"] == "a"
    streamed = completion_to_sse(json.loads(completion("streamed answer")))
    assert completion_from_body(streamed)["choices"][0]["message"]["content"] == "streamed answer"


@pytest.mark.parametrize("body, reason", [
    (b"not json", p.NOT_A_COMPLETION),
    (b'{"object": "list"}', p.NOT_A_COMPLETION),
    (b"data: {\"nope\": 1}\n\n", p.NOT_A_COMPLETION),
    (completion(finish_reason="content_filter"), "content-filter"),
    (completion(finish_reason="tool_calls"), "tool-calls"),
    (completion(finish_reason="length"), "truncated"),
    (completion(finish_reason=None), "not-finished"),
    (completion("I'm sorry, but I can't help with that."), "refusal"),
    (completion(""), "empty"),
])
def test_refused_bodies(body, reason):
    with pytest.raises(StoreRefusal) as caught:
        completion_from_body(body)
    assert caught.value.reason == reason
