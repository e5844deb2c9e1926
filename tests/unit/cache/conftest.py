"""Fakes for the cache's unit tests: a deterministic embedder, a settable clock, request builders."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from services.cache.embedder import EmbedderUnavailableError
from services.common.cache_fingerprint import answer_fingerprint
from services.common.config import CacheConfig
from switchyard.v1 import common_pb2

DIM = 384


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def text_vector(text: str) -> np.ndarray:
    """A fixed random unit vector per text: different texts are nearly orthogonal."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return unit(np.random.default_rng(seed).standard_normal(DIM))


class FakeEmbedder:
    """Deterministic vectors; `aliases` makes a text embed close to another one (a paraphrase)."""

    name = "fake"
    dimension = DIM

    def __init__(self) -> None:
        self.aliases: dict[str, tuple[str, float]] = {}
        self.down = False
        self.calls: list[list[str]] = []

    def paraphrase(self, text: str, of: str, similarity: float) -> None:
        self.aliases[text] = (of, similarity)

    def vector(self, text: str) -> np.ndarray:
        if text not in self.aliases:
            return text_vector(text)
        base, similarity = self.aliases[text]
        # Mix in an orthogonal direction so that cos(result, base) == similarity exactly.
        b = text_vector(base)
        noise = text_vector("noise:" + text)
        noise = unit(noise - noise.dot(b) * b)
        return unit(similarity * b + np.sqrt(1 - similarity ** 2) * noise)

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if self.down:
            raise EmbedderUnavailableError("fake embedder is down")
        return np.stack([self.vector(t) for t in texts])


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def request(text: str, *, tenant: str = "t1", history: list[tuple[str, str]] | None = None,
            temperature: float | None = None, directives: list[str] | None = None, **params) -> common_pb2.RequestContext:
    """A context as the front builds it, answer_fingerprint included (from the chat body these fields make)."""
    turns = [*(history or []), ("user", text)]
    messages = [common_pb2.ChatMessage(role=r, text=t) for r, t in turns]
    p = common_pb2.RequestParams(**params)
    if temperature is not None:
        p.temperature = temperature
    body: dict = {"model": "MoM", "messages": [{"role": r, "content": t} for r, t in turns]}
    if params.get("n", 1) != 1:
        body["n"] = params["n"]
    if params.get("has_tools"):
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    if params.get("response_format"):
        body["response_format"] = {"type": params["response_format"]}
    if "max_tokens" in params:
        body["max_tokens"] = params["max_tokens"]
    return common_pb2.RequestContext(request_id="r", requested_model="MoM", messages=messages, tenant=tenant,
                                     params=p, cache_directives=directives or [],
                                     answer_fingerprint=answer_fingerprint(body))


def completion(content: str = "an answer", model: str = "m1", finish_reason: str = "stop") -> bytes:
    return json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }).encode()


def cache_config(**overrides) -> CacheConfig:
    """The rules-only cache unless a test asks for the pair model (tests/unit/cache/test_pair_model.py)."""
    if overrides.get("verify", True):
        overrides.setdefault("pair_model", False)
    return CacheConfig(port=0, metrics_port=0, **overrides)


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def clock() -> Clock:
    return Clock()
