"""The cache service as a real process on real Triton (MiniLM embeddings) and the embedded Qdrant engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import TritonConfig, load_config
from services.front.chat_request import parse_chat_request
from switchyard.v1 import cache_pb2, cache_pb2_grpc, common_pb2
from tests.conftest import REPO, config_on_free_ports, free_ports

pytestmark = pytest.mark.integration

QUESTION = "What is cognitive dissonance?"
PARAPHRASE = "Can you explain cognitive dissonance?"
UNRELATED = "How do I bake sourdough bread?"


@pytest.fixture(scope="module")
def triton(triton_server: TritonConfig) -> TritonConfig:
    """The session's Triton (tests/conftest.py), shared instead of starting another."""
    return triton_server


class CacheProcess:
    """`switchyard serve cache` in a subprocess, restartable on the same config and data folder."""

    def __init__(self, directory: Path, triton: TritonConfig, cache: dict | None = None) -> None:
        data = config_on_free_ports({"triton": {"managed": False, "http_port": triton.http_port,
                                                "grpc_port": triton.grpc_port, "metrics_port": triton.metrics_port}})
        # Its own data folder (the example config's is shared by every directory of the session).
        data["cache"].update({"path": str(directory / "store"), **(cache or {})})
        self.config_path = directory / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.config = load_config(self.config_path)
        self.log = directory / "cache.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None

    def start(self) -> None:
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", "cache", "--config", str(self.config_path)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.channel = grpc.insecure_channel(self.config.cache.dial_address)
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the cache service exited ({self.process.returncode}):\n{self.log.read_text()}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    self.stub = cache_pb2_grpc.CacheStub(self.channel)
                    return
            except grpc.RpcError:
                time.sleep(0.1)
        raise RuntimeError(f"the cache service did not become healthy in 30 s:\n{self.log.read_text()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)
            if sig == signal.SIGTERM:
                assert self.process.returncode == 0, self.log.read_text()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, triton: TritonConfig) -> Iterator[CacheProcess]:
    process = CacheProcess(tmp_path_factory.mktemp("cache"), triton)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def question_stored(cache: CacheProcess) -> None:
    store(cache, context(QUESTION), "Discomfort from holding conflicting beliefs.")
    assert wait_for_hit(cache, context(QUESTION)).matches


def context(text: str, tenant: str = "alice", history: list[tuple[str, str]] | None = None,
            stream: bool = False, **fields) -> common_pb2.RequestContext:
    """The context the front sends for a chat body with these turns (and extra body fields)."""
    body = {"model": "MoM", "messages": [{"role": r, "content": t} for r, t in [*(history or []), ("user", text)]],
            "stream": stream, **fields}
    return parse_chat_request(json.dumps(body).encode()).to_context("it", tenant, [])


def completion(content: str, model: str) -> bytes:
    return json.dumps({"id": "chatcmpl-it", "object": "chat.completion", "created": 1, "model": model,
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}).encode()


def store(cache: CacheProcess, request: common_pb2.RequestContext, content: str, model: str = "qwen3") -> None:
    answer = cache.stub.Store(cache_pb2.StoreRequest(request=request, model=model, category="psychology",
                                                     body=completion(content, model)), timeout=5)
    assert answer.stored, answer.reason


def lookup(cache: CacheProcess, request: common_pb2.RequestContext) -> cache_pb2.LookupResponse:
    return cache.stub.Lookup(cache_pb2.LookupRequest(request=request), timeout=5)


def wait_for_hit(cache: CacheProcess, request: common_pb2.RequestContext) -> cache_pb2.LookupResponse:
    """Stores are applied by a background worker: poll briefly."""
    deadline = time.monotonic() + 10
    while True:
        found = lookup(cache, request)
        if found.matches or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def answer_of(match: cache_pb2.CacheMatch) -> str:
    return json.loads(match.body)["choices"][0]["message"]["content"]


def test_exact_question_hits(cache: CacheProcess, question_stored: None) -> None:
    found = lookup(cache, context(QUESTION))
    assert found.has_opinion
    (match,) = found.matches
    assert match.model == "qwen3" and match.category == "psychology"
    assert match.similarity == pytest.approx(1.0, abs=1e-4)
    assert answer_of(match) == "Discomfort from holding conflicting beliefs."


def test_rewording_hits_at_the_default_thresholds(cache: CacheProcess, question_stored: None) -> None:
    found = lookup(cache, context(PARAPHRASE))
    assert [(m.model, m.check) for m in found.matches] == [("qwen3", "lexical")]
    similarity = found.matches[0].similarity
    print(f"MiniLM similarity {QUESTION!r} / {PARAPHRASE!r}: {similarity:.4f}")
    assert cache.config.cache.lexical_threshold <= similarity < 0.999


@pytest.mark.parametrize("stored, asked", [
    ("What is 17 times 23?", "What is 17 times 24?"),
    ("convert 100 USD to EUR", "convert 100 EUR to USD"),
    ("Solve 3x+5=20", "Solve 3x+5=21"),
])
def test_look_alikes_miss_although_they_embed_close(cache: CacheProcess, stored: str, asked: str) -> None:
    store(cache, context(stored), f"the answer to {stored}")
    assert wait_for_hit(cache, context(stored)).matches
    found = lookup(cache, context(asked))
    assert found.has_opinion and not found.matches


def cache_metric(cache: CacheProcess, name: str, labels: str = "") -> float:
    text = httpx.get(f"http://127.0.0.1:{cache.config.cache.metrics_port}/metrics", trust_env=False).text
    line = next((line for line in text.splitlines() if line.startswith(f"{name}{{{labels}}}" if labels else
                                                                          f"{name} ")), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


@pytest.fixture(scope="module")
def judging_cache(tmp_path_factory: pytest.TempPathFactory, triton: TritonConfig) -> Iterator[CacheProcess]:
    """The cache with the pair classifier judging every verdict it may (the default leaves substitutions, as
    in the paraphrase below, to the rules: see README, "Semantic cache")."""
    process = CacheProcess(tmp_path_factory.mktemp("judging-cache"), triton, {"pair_model_judges": [
        "paraphrase", "added-content", "edited", "question-form", "substitution", "word-order"]})
    process.start()
    yield process
    process.stop()


def test_a_paraphrase_hits_through_the_pair_model(judging_cache: CacheProcess) -> None:
    """Other words than the stored question's: the text checks cannot show it the same, the pair classifier
    (Triton cache_pair_classifier) does."""
    cache = judging_cache
    stored, asked = "How do I reverse a list in Python?", "What's the way to reverse a Python list?"
    assert cache.config.cache.uses_pair_model
    store(cache, context(stored), "Use my_list.reverse() or reversed(my_list).")
    assert wait_for_hit(cache, context(stored)).matches
    calls = cache_metric(cache, "switchyard_cache_pair_model_calls_total", 'outcome="ok"')
    found = lookup(cache, context(asked))
    assert [(m.check, answer_of(m)) for m in found.matches] == [
        ("pair_model", "Use my_list.reverse() or reversed(my_list).")]
    assert cache.config.cache.candidate_threshold <= found.matches[0].similarity < 0.999
    assert cache_metric(cache, "switchyard_cache_pair_model_calls_total", 'outcome="ok"') == calls + 1
    assert cache_metric(cache, "switchyard_cache_matches_total", 'check="pair_model"') >= 1


def test_an_unrelated_question_misses_with_every_verdict_judged(judging_cache: CacheProcess) -> None:
    store(judging_cache, context("How do I sort a dictionary by value in Python?"), "sorted(d.items(), key=...)")
    assert wait_for_hit(judging_cache, context("How do I sort a dictionary by value in Python?")).matches
    assert not lookup(judging_cache, context("How do I sort a list of tuples by the second item in Python?")).matches


@pytest.mark.parametrize("stored, asked, reason", [
    ("What is 17 times 23?", "What is 17 times 24?", "numbers"),
    ("convert 100 USD to EUR", "convert 100 EUR to USD", "direction"),
])
def test_look_alikes_miss_with_the_pair_model_on(judging_cache: CacheProcess, stored: str, asked: str,
                                                 reason: str) -> None:
    """The decisive text checks (numbers, direction) reject these whatever the pair classifier would say."""
    cache = judging_cache
    store(cache, context(stored), f"the answer to {stored}")
    assert wait_for_hit(cache, context(stored)).matches
    rejected = cache_metric(cache, "switchyard_cache_rejections_total", f'reason="{reason}"')
    found = lookup(cache, context(asked))
    assert found.has_opinion and not found.matches
    assert cache_metric(cache, "switchyard_cache_rejections_total", f'reason="{reason}"') >= rejected + 1


def test_other_tools_miss(cache: CacheProcess) -> None:
    tool = {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}
    store(cache, context("Where is my order 1234?", tools=[tool]), "Calling lookup_order.")
    assert wait_for_hit(cache, context("Where is my order 1234?", tools=[tool])).matches
    assert not lookup(cache, context("Where is my order 1234?")).matches
    other = {"type": "function", "function": {"name": "track_parcel", "parameters": {"type": "object"}}}
    assert not lookup(cache, context("Where is my order 1234?", tools=[other])).matches


def test_unrelated_question_misses(cache: CacheProcess, question_stored: None) -> None:
    found = lookup(cache, context(UNRELATED))
    assert found.has_opinion and not found.matches


def test_other_tenant_misses(cache: CacheProcess, question_stored: None) -> None:
    assert not lookup(cache, context(QUESTION, tenant="bob")).matches


def test_same_last_message_after_another_earlier_turn_misses(cache: CacheProcess) -> None:
    paris = [("user", "Tell me about Paris."), ("assistant", "Paris is the capital of France.")]
    rome = [("user", "Tell me about Rome."), ("assistant", "Rome is the capital of Italy.")]
    store(cache, context("How many people live there?", history=paris), "About 2.1 million.")
    assert answer_of(wait_for_hit(cache, context("How many people live there?", history=paris)).matches[0]) \
        == "About 2.1 million."
    assert not lookup(cache, context("How many people live there?", history=rome)).matches
    assert not lookup(cache, context("How many people live there?")).matches


def test_every_models_answer_is_returned(cache: CacheProcess) -> None:
    store(cache, context("Define entropy."), "Disorder.", model="llama-3.1-8b")
    store(cache, context("Define entropy."), "A measure of disorder.", model="deepseek-r1")
    deadline = time.monotonic() + 10
    while len(found := lookup(cache, context("Define entropy.")).matches) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(m.model for m in found) == ["deepseek-r1", "llama-3.1-8b"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_data_survives_a_restart(cache: CacheProcess, question_stored: None, sig: signal.Signals) -> None:
    question = f"What is a Nash equilibrium ({sig.name})?"
    store(cache, context(question), "No player gains by deviating alone.")
    assert wait_for_hit(cache, context(question)).matches
    cache.stop(sig)  # a kill leaves only the engine's write-ahead log
    cache.start()
    found = lookup(cache, context(question))
    assert [answer_of(m) for m in found.matches] == ["No player gains by deviating alone."]
    assert lookup(cache, context(QUESTION)).matches  # stored by an earlier process


def test_triton_unreachable_is_unavailable(tmp_path: Path, triton: TritonConfig) -> None:
    dead = TritonConfig(http_port=triton.http_port, grpc_port=free_ports(1)[0], metrics_port=triton.metrics_port,
                        model_repository=triton.model_repository, timeout_ms=500)
    process = CacheProcess(tmp_path, dead)
    process.start()
    try:
        with pytest.raises(grpc.RpcError) as caught:
            lookup(process, context(QUESTION))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "embedding model unavailable" in caught.value.details()
    finally:
        process.stop()
