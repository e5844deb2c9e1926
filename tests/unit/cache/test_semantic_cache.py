"""SemanticCache with a fake embedder on the real embedded engine: scope, thresholds, TTL, eviction, the queue."""

from __future__ import annotations

import json

import pytest

from services.cache.embedder import EmbedderUnavailableError
from services.cache.metrics import CacheMetrics
from services.cache.semantic_cache import QUEUE_FULL, SemanticCache
from services.cache.store_embedded import EmbeddedStore
from tests.unit.cache.conftest import DIM, cache_config, completion, request


def metric(cache: SemanticCache, name: str, labels: dict | None = None) -> float:
    return cache.metrics.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
async def make_cache(tmp_path, embedder, clock):
    made: list[SemanticCache] = []

    async def make(start: bool = True, **overrides) -> SemanticCache:
        config = cache_config(**overrides)
        cache = SemanticCache(config, EmbeddedStore(tmp_path / f"store{len(made)}", "c", DIM), embedder,
                              CacheMetrics(), clock=clock)
        if start:
            await cache.start()
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()


async def store(cache: SemanticCache, context, model="m1", category="", content="an answer") -> None:
    result = cache.submit(context, model, category, completion(content, model))
    assert result.queued, result.reason
    await cache.drain()


async def test_exact_question_hits_and_other_question_misses(make_cache):
    cache = await make_cache()
    await store(cache, request("What is cognitive dissonance?"), content="tension")
    hit = await cache.lookup(request("What is cognitive dissonance?"))
    assert [m.model for m in hit.matches] == ["m1"]
    assert json.loads(hit.matches[0].body)["choices"][0]["message"]["content"] == "tension"
    assert hit.matches[0].similarity == pytest.approx(1.0, abs=1e-5)
    miss = await cache.lookup(request("How do I bake bread?"))
    assert miss.matches == [] and miss.bypass_reason == ""
    assert metric(cache, "llm_cache_hits_total") == 1 and metric(cache, "llm_cache_misses_total") == 1
    assert metric(cache, "switchyard_cache_entries") == 1


GUITAR = "How can I learn to play the guitar quickly?"
GUITAR_REWORDED = "What is the fastest way to learn guitar playing?"  # a paraphrase the verifier accepts


async def test_paraphrase_threshold_global_and_per_category(make_cache, embedder):
    cache = await make_cache(similarity_threshold=0.9, category_thresholds={"math": 0.97})
    await store(cache, request(GUITAR), model="m1", category="psychology")
    await store(cache, request(GUITAR), model="m2", category="math")
    embedder.paraphrase(GUITAR_REWORDED, of=GUITAR, similarity=0.93)
    result = await cache.lookup(request(GUITAR_REWORDED))
    assert [(m.model, m.category, m.check) for m in result.matches] == [("m1", "psychology", "paraphrase")]
    assert result.matches[0].similarity == pytest.approx(0.93, abs=1e-3)
    embedder.paraphrase("How do I learn guitar fast, as a beginner?", of=GUITAR, similarity=0.85)
    assert (await cache.lookup(request("How do I learn guitar fast, as a beginner?"))).matches == []


async def test_same_words_need_only_the_lexical_threshold(make_cache, embedder):
    cache = await make_cache(similarity_threshold=0.9, lexical_threshold=0.7)
    await store(cache, request("What is the capital of Australia?"))
    embedder.paraphrase("Hi! what is the captial of australia", of="What is the capital of Australia?", similarity=0.75)
    (match,) = (await cache.lookup(request("Hi! what is the captial of australia"))).matches
    assert match.check == "lexical"
    exact = (await cache.lookup(request("What is the capital of Australia?"))).matches
    assert [m.check for m in exact] == ["exact"]
    assert metric(cache, "switchyard_cache_matches_total", {"check": "lexical"}) == 1


@pytest.mark.parametrize("stored, asked, reason", [
    ("What is 17 times 23?", "What is 17 times 24?", "numbers"),
    ("convert 100 USD to EUR", "convert 100 EUR to USD", "direction"),
    ("Which of the following is true about mitosis?", "Which of the following is not true about mitosis?",
     "negation"),
    ("What is the capital of France?", "What is the capital of Germany?", "entities"),
    ("What is the longest river in Africa?", "What is the shortest river in Africa?", "substitution"),
])
async def test_look_alikes_are_rejected_and_counted(make_cache, embedder, stored, asked, reason):
    cache = await make_cache()
    await store(cache, request(stored))
    embedder.paraphrase(asked, of=stored, similarity=0.99)
    assert (await cache.lookup(request(asked))).matches == []
    assert metric(cache, "switchyard_cache_rejections_total", {"reason": reason}) == 1
    assert metric(cache, "llm_cache_misses_total") == 1


async def test_a_rejected_candidate_does_not_hide_a_good_one(make_cache, embedder):
    cache = await make_cache()
    await store(cache, request("What is 17 times 24?"), content="408")
    embedder.paraphrase("What is 17 times 23?", of="What is 17 times 24?", similarity=0.99)
    await store(cache, request("What is 17 times 23?"), content="391")
    (match,) = (await cache.lookup(request("What is 17 times 23?"))).matches
    assert json.loads(match.body)["choices"][0]["message"]["content"] == "391"


async def test_without_verification_similarity_alone_decides(make_cache, embedder):
    cache = await make_cache(verify=False, similarity_threshold=0.9)
    await store(cache, request("What is 17 times 23?"))
    embedder.paraphrase("What is 17 times 24?", of="What is 17 times 23?", similarity=0.95)
    assert [m.check for m in (await cache.lookup(request("What is 17 times 24?"))).matches] == ["similarity"]


async def test_matches_for_every_model_best_first(make_cache, embedder):
    cache = await make_cache()
    await store(cache, request(GUITAR), model="m1", content="one")
    embedder.paraphrase(GUITAR_REWORDED, of=GUITAR, similarity=0.95)
    await store(cache, request(GUITAR_REWORDED), model="m2", content="two")
    result = await cache.lookup(request(GUITAR))
    assert [m.model for m in result.matches] == ["m1", "m2"]
    assert result.matches[0].similarity > result.matches[1].similarity


async def test_one_match_per_route(make_cache):
    cache = await make_cache()
    for route in ("math-prompt", "no-prompt"):
        result = cache.submit(request("q"), "m1", "math", completion(route), route_fingerprint=route)
        assert result.queued
    await cache.drain()
    matches = (await cache.lookup(request("q"))).matches
    assert sorted(m.route_fingerprint for m in matches) == ["math-prompt", "no-prompt"]
    assert {json.loads(m.body)["choices"][0]["message"]["content"] for m in matches} == {"math-prompt", "no-prompt"}


async def test_anonymous_requests_bypass_by_default(make_cache):
    cache = await make_cache()
    assert cache.submit(request("q", tenant=""), "m1", "", completion()).reason == "anonymous"
    assert (await cache.lookup(request("q", tenant=""))).bypass_reason == "anonymous"
    shared = await make_cache(anonymous="shared")
    await store(shared, request("q", tenant=""))
    assert (await shared.lookup(request("q", tenant=""))).matches
    assert not (await shared.lookup(request("q", tenant="alice"))).matches


async def test_other_tenant_conversation_or_params_miss(make_cache):
    cache = await make_cache()
    history = [("user", "Tell me about Paris."), ("assistant", "Paris is ...")]
    await store(cache, request("How big is it?", tenant="alice", history=history))
    assert (await cache.lookup(request("How big is it?", tenant="alice", history=history))).matches
    assert not (await cache.lookup(request("How big is it?", tenant="bob", history=history))).matches
    other = [("user", "Tell me about Rome."), ("assistant", "Rome is ...")]
    assert not (await cache.lookup(request("How big is it?", tenant="alice", history=other))).matches
    assert not (await cache.lookup(request("How big is it?", tenant="alice", history=history, n=2))).matches


async def test_bypasses_are_reported_and_skip_the_embedder(make_cache, embedder):
    cache = await make_cache()
    result = await cache.lookup(request("q", directives=["no-cache"]))
    assert result.bypass_reason == "no-cache" and not embedder.calls
    assert (await cache.lookup(request("q", temperature=0.9))).bypass_reason == "temperature"
    assert cache.submit(request("q", directives=["no-store"]), "m1", "", completion()).reason == "no-store"
    assert cache.submit(request("q", temperature=0.9), "m1", "", completion()).reason == "temperature"
    refused = cache.submit(request("q"), "m1", "", completion(finish_reason="content_filter"))
    assert not refused.queued and refused.reason.startswith("content-filter")
    truncated = cache.submit(request("q"), "m1", "", completion(finish_reason="length"))
    assert not truncated.queued and truncated.reason.startswith("truncated")
    assert metric(cache, "switchyard_cache_bypasses_total", {"operation": "store", "reason": "truncated"}) == 1
    assert metric(cache, "switchyard_cache_bypasses_total", {"operation": "lookup", "reason": "no-cache"}) == 1
    await cache.drain()
    assert cache.store.count() == 0


async def test_models_list_limits_what_is_stored_and_returned(make_cache):
    cache = await make_cache(models=["m1"])
    assert cache.submit(request("q"), "m2", "", completion()).reason == "model-disabled"
    await store(cache, request("q"), model="m1")
    assert [m.model for m in (await cache.lookup(request("q"))).matches] == ["m1"]


async def test_ttl(make_cache, clock):
    cache = await make_cache(ttl_s=60)
    await store(cache, request("q"))
    clock.now += 59
    assert (await cache.lookup(request("q"))).matches
    clock.now += 2
    assert not (await cache.lookup(request("q"))).matches
    cache._expire()  # the worker purges on a timer; here directly
    assert cache.store.count() == 0


async def test_fifo_eviction_drops_the_oldest(make_cache, clock):
    cache = await make_cache(max_entries=3, eviction="fifo")
    for i in range(3):
        clock.now += 1
        await store(cache, request(f"q{i}"))
    await cache.lookup(request("q0"))  # a hit does not protect under FIFO
    await cache.drain()
    clock.now += 1
    await store(cache, request("q3"))
    assert cache.store.count() == 3
    assert not (await cache.lookup(request("q0"))).matches
    assert metric(cache, "switchyard_cache_evictions_total") == 1


async def test_lru_eviction_keeps_recently_hit(make_cache, clock):
    cache = await make_cache(max_entries=3, eviction="lru")
    for i in range(3):
        clock.now += 1
        await store(cache, request(f"q{i}"))
    clock.now += 1
    assert (await cache.lookup(request("q0"))).matches
    await cache.drain()  # the touch is applied by the worker
    clock.now += 1
    await store(cache, request("q3"))
    assert (await cache.lookup(request("q0"))).matches
    assert not (await cache.lookup(request("q1"))).matches
    assert cache.store.search(cache.embedder.vector("q0"), *_scope_args(request("q0")))[0].hits >= 1


def _scope_args(context):
    from services.cache.scope import scope_of
    from services.cache.store import ScopeFilter
    return ScopeFilter(scope_of(context).fields()), 1, 0.5


async def test_full_queue_drops_and_counts(make_cache):
    cache = await make_cache(start=False, write_queue_size=2)
    assert cache.submit(request("a"), "m1", "", completion()).queued
    assert cache.submit(request("b"), "m1", "", completion()).queued
    dropped = cache.submit(request("c"), "m1", "", completion())
    assert not dropped.queued and dropped.reason == QUEUE_FULL
    assert metric(cache, "switchyard_cache_write_drops_total") == 1
    await cache.start()
    await cache.drain()
    assert cache.store.count() == 2


async def test_writes_are_embedded_in_batches(make_cache, embedder):
    cache = await make_cache(start=False)
    for i in range(5):
        cache.submit(request(f"q{i}"), "m1", "", completion())
    await cache.start()
    await cache.drain()
    assert [len(call) for call in embedder.calls] == [5]


async def test_embedder_down(make_cache, embedder):
    cache = await make_cache()
    embedder.down = True
    with pytest.raises(EmbedderUnavailableError):
        await cache.lookup(request("q"))
    assert cache.submit(request("q"), "m1", "", completion()).queued
    await cache.drain()
    assert metric(cache, "switchyard_cache_writes_total", {"result": "embedder_unavailable"}) == 1
    embedder.down = False
    await store(cache, request("q"))  # the worker survived
    assert cache.store.count() == 1


async def test_close_drains_and_persists(tmp_path, embedder, clock):
    config = cache_config()
    cache = SemanticCache(config, EmbeddedStore(tmp_path, "c", DIM), embedder, CacheMetrics(), clock=clock)
    await cache.start()
    cache.submit(request("q"), "m1", "", completion("kept"))
    await cache.close()
    reopened = SemanticCache(config, EmbeddedStore(tmp_path, "c", DIM), embedder, CacheMetrics(), clock=clock)
    await reopened.start()
    assert (await reopened.lookup(request("q"))).matches
    await reopened.close()


async def test_compacts_after_enough_deletions(make_cache, clock, monkeypatch):
    cache = await make_cache(max_entries=2, eviction="fifo")
    compactions = []
    monkeypatch.setattr(cache.store, "compact", lambda: compactions.append(cache.store.count()))
    cache._compact_after = 3
    for i in range(6):
        clock.now += 1
        await store(cache, request(f"q{i}"))
    assert cache.store.count() == 2 and len(compactions) == 1


async def test_hits_do_not_take_room_from_writes(make_cache):
    cache = await make_cache(write_queue_size=2)
    await store(cache, request("q"))
    for _ in range(10):
        assert (await cache.lookup(request("q"))).matches
    assert cache.submit(request("a"), "m1", "", completion()).queued
    await cache.drain()
    hit = cache.store.search(cache.embedder.vector("q"), *_scope_args(request("q")))[0]
    assert hit.hits == 1  # coalesced: each lookup saw hits=0 and recorded 1
