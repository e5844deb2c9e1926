"""Bypass rules, thresholds and what counts as a storable answer."""

from __future__ import annotations

import json
import typing

import pytest
import yaml
from pydantic import ValidationError

from services.cache import policy as p
from services.cache.policy import CachePolicy, Step, StoreRefusal, completion_from_body
from services.cache.verify import DECISIVE, Agreement, Rejection, Verdict
from services.common.config import CacheConfig, ConfigError, PairJudgedVerdict, load_config
from services.common.sse import completion_to_sse
from tests.conftest import REPO
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


ALL_JUDGED = ["paraphrase", "added-content", "edited", "question-form", "substitution", "word-order"]


def test_with_the_pair_model_candidates_need_the_candidate_threshold():
    policy = CachePolicy(cache_config(pair_model=True, candidate_threshold=0.7, similarity_threshold=0.9,
                                      lexical_threshold=0.75, category_thresholds={"math": 0.8}))
    assert policy.candidate_threshold("law") == 0.7
    assert policy.candidate_threshold("math") == 0.8
    assert policy.threshold("law") == 0.9  # a paraphrase the pair model does not judge
    assert policy.threshold("law", Agreement.LEXICAL) == 0.75
    assert policy.lowest_threshold == 0.7


@pytest.mark.parametrize("verdict, similarity, step, label", [
    (Verdict(Agreement.EXACT), 0.8, Step.SERVE, "exact"),
    (Verdict(Agreement.LEXICAL), 0.7, Step.REJECT, "similarity"),
    (Verdict(Agreement.PARAPHRASE), 0.8, Step.ASK_PAIR_MODEL, ""),
    (Verdict(Agreement.PARAPHRASE), 0.6, Step.REJECT, "similarity"),
    (Verdict(None, Rejection.SUBSTITUTION), 0.9, Step.ASK_PAIR_MODEL, ""),
    (Verdict(None, Rejection.WORD_ORDER), 0.9, Step.ASK_PAIR_MODEL, ""),
    *[(Verdict(None, r), 0.99, Step.REJECT, r.value) for r in DECISIVE],
])
def test_screening_with_the_pair_model(verdict, similarity, step, label):
    policy = CachePolicy(cache_config(pair_model=True, candidate_threshold=0.7, lexical_threshold=0.75,
                                      pair_model_judges=ALL_JUDGED))
    screening = policy.screen(verdict, similarity, "")
    assert screening.step is step
    assert (screening.check or screening.rejection) == label


def test_the_pair_model_judges_only_the_configured_verdicts():
    policy = CachePolicy(cache_config(pair_model=True, candidate_threshold=0.7, similarity_threshold=0.9,
                                      pair_model_judges=["edited"]))
    assert policy.screen(Verdict(None, Rejection.EDITED), 0.8, "").step is Step.ASK_PAIR_MODEL
    assert policy.screen(Verdict(None, Rejection.WORD_ORDER), 0.99, "").rejection == "word-order"
    # A paraphrase it does not judge is served on the rules alone, as without the pair model.
    assert policy.screen(Verdict(Agreement.PARAPHRASE), 0.92, "").check == "paraphrase"
    assert policy.screen(Verdict(Agreement.PARAPHRASE), 0.85, "").rejection == "similarity"


def test_the_judged_verdicts_are_the_verifiers_non_decisive_ones():
    judged = set(typing.get_args(PairJudgedVerdict))
    assert judged == {Agreement.PARAPHRASE.value} | {r.value for r in Rejection if r not in DECISIVE} - {
        Rejection.SIMILARITY.value}
    assert set(ALL_JUDGED) == judged


def test_screening_with_rules_only_serves_paraphrases_on_similarity():
    policy = CachePolicy(cache_config(pair_model=False, similarity_threshold=0.9))
    assert policy.screen(Verdict(Agreement.PARAPHRASE), 0.92, "").check == "paraphrase"
    assert policy.screen(Verdict(Agreement.PARAPHRASE), 0.85, "").rejection == "similarity"
    assert policy.screen(Verdict(None, Rejection.SUBSTITUTION), 0.99, "").rejection == "substitution"
    assert policy.screen(Verdict(None), 0.99, "").step is Step.REJECT  # never served unverified


def test_pair_threshold():
    policy = CachePolicy(cache_config(pair_model=True, pair_threshold=0.9))
    assert policy.pair_accepts(0.9) and not policy.pair_accepts(0.899)


def test_pair_model_config_is_validated():
    assert CacheConfig(port=1, metrics_port=2).uses_pair_model  # the default
    with pytest.raises(ValidationError, match="pair_model_judges"):
        CacheConfig(port=1, metrics_port=2, pair_model_judges=["numbers"])  # decisive: always final
    assert not CacheConfig(port=1, metrics_port=2, verify=False).uses_pair_model  # verify off turns it off too
    with pytest.raises(ValidationError, match="pair_model: true needs verify: true"):
        CacheConfig(port=1, metrics_port=2, verify=False, pair_model=True)
    for field, value in (("pair_threshold", 1.5), ("candidate_threshold", -0.1), ("pair_candidates", 0),
                         ("pair_candidates", 17)):
        with pytest.raises(ValidationError, match=field):
            CacheConfig(port=1, metrics_port=2, **{field: value})


def test_pair_model_keys_in_yaml(tmp_path):
    """The shipped config with its cache block changed: the error names the file and the key."""
    shipped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    path = tmp_path / "config.yaml"

    def load(**cache):
        path.write_text(yaml.safe_dump({**shipped, "cache": {**shipped["cache"], "path": str(tmp_path), **cache}}))
        return load_config(path).cache

    assert load().uses_pair_model
    with pytest.raises(ConfigError, match=r"config\.yaml: cache.*pair_model: true needs verify: true"):
        load(verify=False, pair_model=True)
    with pytest.raises(ConfigError, match="cache.pair_threshold"):
        load(pair_threshold=2)
    cache = load(pair_threshold=0.97, candidate_threshold=0.75)
    assert (cache.pair_threshold, cache.candidate_threshold) == (0.97, 0.75)
