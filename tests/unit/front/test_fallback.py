"""Fallback chain: which candidates Envoy may try, the signed header, and the rewrite per attempt."""

from __future__ import annotations

import copy

import orjson
import pytest

from services.common.config import parse_config
from services.front import fallback
from services.front.merge import Outcome, OutcomeKind, Route
from tests.conftest import example_config_data


def config(**fallback_changes):
    data = copy.deepcopy(example_config_data())
    data["routing"]["fallback"] = fallback_changes
    return parse_config(data)


def outcome(*models: str) -> Outcome:
    routes = [Route(model=m, category="math", use_reasoning=True, reasoning_effort="high") for m in models]
    return Outcome(OutcomeKind.UPSTREAM, route=routes[0], fallbacks=routes[1:])


def test_the_chain_is_the_allowed_candidates_up_to_the_attempts() -> None:
    chain = fallback.fallback_chain(config(attempts=2), outcome("deepseek-r1", "qwen3-8b", "llama-3.1-8b"))
    assert [r.model for r in chain] == ["deepseek-r1", "qwen3-8b"]
    assert [r.model for r in fallback.fallback_chain(config(enabled=False), outcome("deepseek-r1", "qwen3-8b"))] \
        == ["deepseek-r1"]


def test_the_chain_stays_on_the_backend_of_the_chosen_model() -> None:
    data = copy.deepcopy(example_config_data())
    data["backends"].append({"name": "other", "port": 8200})
    for name, model in data["routing"]["models"].items():
        model["backend"] = "other" if name == "qwen3-8b" else "simulator"
    chain = fallback.fallback_chain(parse_config(data), outcome("deepseek-r1", "qwen3-8b", "llama-3.1-8b"))
    assert [r.model for r in chain] == ["deepseek-r1", "llama-3.1-8b"]


def test_the_signed_chain_round_trips_and_a_forged_one_is_not_an_attempt() -> None:
    cfg = config()
    chain = fallback.fallback_chain(cfg, outcome("deepseek-r1", "qwen3-8b"))
    headers = dict(fallback.request_headers(cfg, chain, {"x-request-id": "r1"}))
    assert headers["x-envoy-max-retries"] == "1" and headers["x-vsr-fallback-next"] == "qwen3-8b"
    upstream = {"x-request-id": "r1", "x-envoy-attempt-count": "2",
                fallback.CHAIN_HEADER: headers[fallback.CHAIN_HEADER]}
    attempt = fallback.attempt_from_headers(cfg, upstream)
    assert attempt is not None and attempt.is_fallback and attempt.reason == "error"
    assert (attempt.first.model, attempt.previous.model, attempt.link.model) == ("deepseek-r1", "deepseek-r1", "qwen3-8b")
    # Another request's id, a changed payload, an unsigned chain: not the front's, so routed as any request.
    assert fallback.attempt_from_headers(cfg, {**upstream, "x-request-id": "r2"}) is None
    mac, _, payload = headers[fallback.CHAIN_HEADER].partition(".")
    assert fallback.attempt_from_headers(cfg, {**upstream, fallback.CHAIN_HEADER: mac + "." +
                                                payload.replace("qwen3-8b", "llama-3.1-8b")}) is None
    assert fallback.attempt_from_headers(cfg, {**upstream, fallback.CHAIN_HEADER: payload}) is None
    assert fallback.attempt_from_headers(cfg, {"x-request-id": "r1"}) is None


def test_a_configured_key_is_shared_by_replicas() -> None:
    cfg = config(signing_key="shared")
    chain = fallback.fallback_chain(cfg, outcome("deepseek-r1", "qwen3-8b"))
    value = dict(fallback.request_headers(cfg, chain, {"x-request-id": "r"}))[fallback.CHAIN_HEADER]
    assert fallback.ChainSigner(b"shared").verify(value, "r") is not None
    assert fallback.ChainSigner(b"another").verify(value, "r") is None


def test_a_timeout_retry_is_named() -> None:
    cfg = config()
    chain = fallback.fallback_chain(cfg, outcome("deepseek-r1", "qwen3-8b"))
    value = dict(fallback.request_headers(cfg, chain, {}))[fallback.CHAIN_HEADER]
    attempt = fallback.attempt_from_headers(cfg, {fallback.CHAIN_HEADER: value, "x-envoy-attempt-count": "2",
                                                  "x-envoy-is-timeout-retry": "true"})
    assert attempt is not None and attempt.reason == "timeout"


def test_the_rewrite_sets_the_candidates_model_and_reasoning_only() -> None:
    cfg = config()
    first = {"model": "deepseek-r1", "messages": [{"role": "system", "content": "You are a mathematician."},
                                                   {"role": "user", "content": "Solve 3x+5=20"}],
             "chat_template_kwargs": {"thinking": True, "custom": 1}, "temperature": 0.2}
    body = orjson.loads(fallback.rewrite_for(cfg, orjson.dumps(first), fallback.Link("qwen3-8b", True, "high")))
    assert body["model"] == "qwen3-8b"
    assert body["chat_template_kwargs"] == {"custom": 1, "enable_thinking": True}
    assert body["messages"] == first["messages"] and body["temperature"] == 0.2
    plain = orjson.loads(fallback.rewrite_for(cfg, orjson.dumps(first), fallback.Link("llama-3.1-8b", False)))
    assert plain["chat_template_kwargs"] == {"custom": 1} and "reasoning_effort" not in plain


def test_the_served_route_is_one_of_the_outcomes_candidates() -> None:
    result = outcome("deepseek-r1", "qwen3-8b")
    assert fallback.route_served(result, "qwen3-8b").model == "qwen3-8b"
    assert fallback.route_served(result, "deepseek-r1") is None
    assert fallback.route_served(result, "llama-3.1-8b") is None  # never a model outside the chain


def test_timeout_needs_reset() -> None:
    with pytest.raises(Exception, match="timeout"):
        config(retry_on=["timeout", "503"])
