"""Hostile chat bodies through the real Envoy: never a 5xx, every refusal an OpenAI error naming the field.

Hypothesis builds bodies from what clients get wrong (types, ranges, nesting, lone surrogates, huge
integers and names, odd content parts) mixed with valid ones; bounded in examples and time for CI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.front.chat_request import FIELD_CHECKS
from services.common.config import TritonConfig
from tests.conftest import config_on_free_ports
from tests.mesh_runner import MeshRunner

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
    st.sampled_from(["\ud800", "a\udfffb", "x" * 300]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
deep = st.integers(min_value=50, max_value=1200).map(lambda n: json.loads("[" * n + "]" * n))
parts = st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=40), json_values)}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.just({"url": "data:image/png;base64,AA"})}),
    json_values), max_size=3)
contents = st.one_of(st.text(max_size=200), parts, st.none(), json_values)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool", "developer"]), json_values),
     "content": contents}), min_size=0, max_size=3)
models = st.one_of(st.sampled_from(["MoM", "auto", "qwen3-8b", "deepseek-r1", "no-such-model"]),
                   st.text(max_size=20), st.just("m" * 60_000), json_values)
extras = st.dictionaries(st.one_of(st.sampled_from(sorted(FIELD_CHECKS)), st.text(max_size=10)),
                         st.one_of(json_values, deep), max_size=4)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    body = {"model": draw(models), "messages": draw(messages), **draw(extras)}
    if draw(st.booleans()):
        body["messages"] = [{"role": "user", "content": draw(st.text(min_size=1, max_size=80))}]
    # ensure_ascii: a lone surrogate travels as its \\u escape, still valid JSON text.
    return json.dumps(body, ensure_ascii=True).encode()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, triton_server: TritonConfig) -> Iterator[httpx.Client]:
    runner = MeshRunner(config_on_free_ports(), tmp_path_factory.mktemp("fuzz"), triton=triton_server)
    runner.start()
    try:
        with httpx.Client(base_url=runner.envoy_url, timeout=60, trust_env=False,
                          headers={"content-type": "application/json"}) as http:
            yield http
    finally:
        runner.stop()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=bodies())
def test_no_body_gets_a_5xx_and_every_refusal_is_an_openai_error(client: httpx.Client, raw: bytes) -> None:
    response = client.post(CHAT, content=raw)
    assert response.status_code < 500 or response.status_code in (503,), (response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and error["code"] and error["type"], error
    if response.status_code == 503:
        assert response.json()["error"]["code"] == "guard_unavailable"
