"""The lookup with the pair classifier (cache.pair_model) against a fake scorer: what it is asked, what it
accepts, and that a failed or late call serves nothing it would have judged."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from services.cache.metrics import CacheMetrics
from services.cache.pair_model import PairModelUnavailableError
from services.cache.semantic_cache import SemanticCache
from services.cache.store_embedded import EmbeddedStore
from services.common.triton import set_call_deadline
from tests.unit.cache.conftest import DIM, cache_config, completion, request

# The rules cannot show these the same (other words), and nothing decisive differs: the pair model decides.
STORED = "How do I reverse a list in Python?"
REWORDED = "What's the way to reverse a Python list?"


ALL_JUDGED = ["paraphrase", "added-content", "edited", "question-form", "substitution", "word-order"]


class FakePairScorer:
    """p(same) per (stored, asked) pair from `scores` (default `default`); can fail or hang."""

    def __init__(self, default: float = 0.99) -> None:
        self.scores: dict[tuple[str, str], float] = {}
        self.default = default
        self.calls: list[list[tuple[str, str]]] = []
        self.error: PairModelUnavailableError | None = None
        self.delay_s = 0.0

    async def same_scores(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        self.calls.append(list(pairs))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return np.array([self.scores.get(p, self.default) for p in pairs])


def metric(cache: SemanticCache, name: str, labels: dict | None = None) -> float:
    return cache.metrics.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
def scorer() -> FakePairScorer:
    return FakePairScorer()


@pytest.fixture
async def make_cache(tmp_path, embedder, clock, scorer):
    made: list[SemanticCache] = []

    async def make(**overrides) -> SemanticCache:
        config = cache_config(**{"pair_model": True, "pair_threshold": 0.9, "candidate_threshold": 0.7,
                                 "pair_model_judges": ALL_JUDGED, **overrides})
        cache = SemanticCache(config, EmbeddedStore(tmp_path / f"store{len(made)}", "c", DIM), embedder,
                              CacheMetrics(), clock=clock, pair_scorer=scorer)
        await cache.start()
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()


async def store(cache: SemanticCache, text: str, model: str = "m1", content: str = "an answer") -> None:
    assert cache.submit(request(text), model, "", completion(content, model)).queued
    await cache.drain()


async def test_a_paraphrase_the_model_accepts_is_served_as_pair_model(make_cache, embedder, scorer):
    cache = await make_cache()
    await store(cache, STORED, content="reversed()")
    embedder.paraphrase(REWORDED, of=STORED, similarity=0.8)
    (match,) = (await cache.lookup(request(REWORDED))).matches
    assert match.check == "pair_model"
    assert match.similarity == pytest.approx(0.8, abs=1e-3)
    assert json.loads(match.body)["choices"][0]["message"]["content"] == "reversed()"
    assert scorer.calls == [[(STORED, REWORDED)]]  # (stored question, new question)
    assert metric(cache, "switchyard_cache_matches_total", {"check": "pair_model"}) == 1
    assert metric(cache, "switchyard_cache_pair_model_calls_total", {"outcome": "ok"}) == 1
    assert metric(cache, "switchyard_cache_pair_score_count") == 1
    assert metric(cache, "switchyard_cache_lookup_seconds_count", {"stage": "pair_model"}) == 1


async def test_below_the_pair_threshold_is_a_counted_rejection(make_cache, embedder, scorer):
    cache = await make_cache(pair_threshold=0.95)
    await store(cache, STORED)
    embedder.paraphrase(REWORDED, of=STORED, similarity=0.8)
    scorer.scores[(STORED, REWORDED)] = 0.94
    assert (await cache.lookup(request(REWORDED))).matches == []
    assert metric(cache, "switchyard_cache_rejections_total", {"reason": "pair-model"}) == 1
    assert metric(cache, "llm_cache_misses_total") == 1


async def test_below_the_candidate_threshold_the_model_is_not_asked(make_cache, embedder, scorer):
    cache = await make_cache(candidate_threshold=0.85)
    await store(cache, STORED)
    embedder.paraphrase(REWORDED, of=STORED, similarity=0.8)
    assert (await cache.lookup(request(REWORDED))).matches == []
    assert scorer.calls == []
    assert metric(cache, "switchyard_cache_rejections_total", {"reason": "similarity"}) == 1


@pytest.mark.parametrize("stored, asked, reason", [
    ("What is 17 times 23?", "What is 17 times 24?", "numbers"),
    ("convert 100 USD to EUR", "convert 100 EUR to USD", "direction"),
    ("Which of the following is true about mitosis?", "Which of the following is not true about mitosis?",
     "negation"),
    ("What is the capital of France?", "What is the capital of Germany?", "entities"),
])
async def test_decisive_rules_are_final_whatever_the_model_says(make_cache, embedder, scorer, stored, asked,
                                                                reason):
    cache = await make_cache()
    await store(cache, stored)
    embedder.paraphrase(asked, of=stored, similarity=0.99)
    scorer.default = 1.0
    assert (await cache.lookup(request(asked))).matches == []
    assert scorer.calls == []
    assert metric(cache, "switchyard_cache_rejections_total", {"reason": reason}) == 1


async def test_the_model_judges_what_the_rules_reject_on_edits(make_cache, embedder, scorer):
    # "substitution" (a short run of words swapped) is how antonyms are made, but also how synonyms are.
    stored, asked = "What is the longest river in Africa?", "What is the shortest river in Africa?"
    cache = await make_cache()
    await store(cache, stored)
    embedder.paraphrase(asked, of=stored, similarity=0.97)
    scorer.scores[(stored, asked)] = 0.02
    assert (await cache.lookup(request(asked))).matches == []
    assert scorer.calls == [[(stored, asked)]]
    assert metric(cache, "switchyard_cache_rejections_total", {"reason": "pair-model"}) == 1


async def test_verdicts_the_model_does_not_judge_are_the_rules_own(make_cache, embedder, scorer):
    cache = await make_cache(pair_model_judges=["edited"])
    await store(cache, STORED)
    embedder.paraphrase(REWORDED, of=STORED, similarity=0.95)  # a "substitution" to the rules
    assert (await cache.lookup(request(REWORDED))).matches == []
    assert scorer.calls == []
    assert metric(cache, "switchyard_cache_rejections_total", {"reason": "substitution"}) == 1


async def test_the_same_words_take_the_fast_path_without_the_model(make_cache, embedder, scorer):
    cache = await make_cache()
    await store(cache, "What is the capital of Australia?")
    embedder.paraphrase("Hi! what is the captial of australia", of="What is the capital of Australia?",
                        similarity=0.75)
    assert [m.check for m in (await cache.lookup(request("Hi! what is the captial of australia"))).matches] == [
        "lexical"]
    assert [m.check for m in (await cache.lookup(request("What is the capital of Australia?"))).matches] == ["exact"]
    assert scorer.calls == []


@pytest.mark.parametrize("error", [PairModelUnavailableError("unavailable", "model not loaded"),
                                   PairModelUnavailableError("error", "bad reply")])
async def test_a_failed_pair_call_is_a_miss_never_an_unverified_hit(make_cache, embedder, scorer, error):
    cache = await make_cache()
    await store(cache, STORED)
    embedder.paraphrase(REWORDED, of=STORED, similarity=0.95)
    scorer.error = error
    assert (await cache.lookup(request(REWORDED))).matches == []
    assert metric(cache, "switchyard_cache_pair_model_calls_total", {"outcome": error.reason}) == 1
    assert metric(cache, "switchyard_cache_rejections_total", {"reason": "pair-model-failed"}) == 1
    assert metric(cache, "llm_cache_misses_total") == 1


async def test_a_failed_pair_call_keeps_the_fast_path_hits(make_cache, embedder, scorer):
    cache = await make_cache()
    embedder.paraphrase(REWORDED, of=STORED, similarity=0.9)
    await store(cache, STORED, model="m1")
    await store(cache, REWORDED, model="m2")
    scorer.error = PairModelUnavailableError("unavailable", "down")
    result = await cache.lookup(request(REWORDED))
    assert [(m.model, m.check) for m in result.matches] == [("m2", "exact")]


async def test_the_pair_call_stays_within_the_lookups_deadline(make_cache, embedder, scorer):
    cache = await make_cache()
    await store(cache, STORED)
    embedder.paraphrase(REWORDED, of=STORED, similarity=0.9)
    scorer.delay_s = 5.0

    async def lookup():
        set_call_deadline(0.2)  # as the servicer does from the gRPC context
        return await cache.lookup(request(REWORDED))

    started = asyncio.get_running_loop().time()
    result = await asyncio.create_task(lookup())  # its own context, as a served call has
    assert asyncio.get_running_loop().time() - started < 1.0
    assert result.matches == []
    assert metric(cache, "switchyard_cache_pair_model_calls_total", {"outcome": "timeout"}) == 1
    assert metric(cache, "switchyard_cache_rejections_total", {"reason": "pair-model-failed"}) == 1


async def test_a_spent_deadline_does_not_call_the_model(make_cache, embedder, scorer):
    cache = await make_cache()
    await store(cache, STORED)
    embedder.paraphrase(REWORDED, of=STORED, similarity=0.9)

    async def lookup():
        set_call_deadline(-1.0)
        return await cache.lookup(request(REWORDED))

    assert (await asyncio.create_task(lookup())).matches == []
    assert scorer.calls == []
    assert metric(cache, "switchyard_cache_pair_model_calls_total", {"outcome": "timeout"}) == 1


async def test_without_a_scorer_nothing_the_model_would_judge_is_served(tmp_path, embedder, clock):
    config = cache_config(pair_model=True, pair_model_judges=ALL_JUDGED)
    cache = SemanticCache(config, EmbeddedStore(tmp_path, "c", DIM), embedder, CacheMetrics(), clock=clock)
    await cache.start()
    try:
        await store(cache, STORED)
        embedder.paraphrase(REWORDED, of=STORED, similarity=0.95)
        assert (await cache.lookup(request(REWORDED))).matches == []
        assert metric(cache, "switchyard_cache_pair_model_calls_total", {"outcome": "unavailable"}) == 1
    finally:
        await cache.close()


async def test_one_batched_call_for_the_best_candidates(make_cache, embedder, scorer):
    cache = await make_cache(pair_candidates=2)
    rewordings = {"m1": ("What is the method for reversing a list in Python?", 0.95),
                  "m2": ("In Python, how can a list be reversed?", 0.9),
                  "m3": ("Python: reversing the order of a list, how?", 0.85)}
    for model, (text, similarity) in rewordings.items():
        embedder.paraphrase(text, of=REWORDED, similarity=similarity)
        await store(cache, text, model=model, content=model)
    result = await cache.lookup(request(REWORDED))
    assert len(scorer.calls) == 1
    assert scorer.calls[0] == [(rewordings["m1"][0], REWORDED), (rewordings["m2"][0], REWORDED)]  # best first
    assert [m.model for m in result.matches] == ["m1", "m2"]
    assert metric(cache, "switchyard_cache_rejections_total", {"reason": "pair-candidates"}) == 1


async def test_a_better_fast_path_match_of_the_same_route_is_not_sent_to_the_model(make_cache, embedder, scorer):
    cache = await make_cache()
    embedder.paraphrase(REWORDED, of=STORED, similarity=0.9)
    await store(cache, REWORDED, content="exact")
    await store(cache, STORED, content="reworded")
    (match,) = (await cache.lookup(request(REWORDED))).matches
    assert (match.check, json.loads(match.body)["choices"][0]["message"]["content"]) == ("exact", "exact")
    assert scorer.calls == []


async def test_a_model_rejection_does_not_hide_a_lower_candidate_of_the_same_route(make_cache, embedder, scorer):
    cache = await make_cache()
    close, closer = "What is the best way to reverse a list in Python?", "How can I reverse a Python list?"
    embedder.paraphrase(close, of=REWORDED, similarity=0.95)
    embedder.paraphrase(closer, of=REWORDED, similarity=0.85)
    await store(cache, close, content="a")
    await store(cache, closer, content="b")
    scorer.scores[(close, REWORDED)] = 0.1
    (match,) = (await cache.lookup(request(REWORDED))).matches
    assert json.loads(match.body)["choices"][0]["message"]["content"] == "b"
    assert match.check == "pair_model"
