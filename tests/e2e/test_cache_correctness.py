"""The semantic cache through the real Envoy: rewordings hit; look-alikes, other tenants, other conversations,
other tools or schemas miss; truncated answers are never stored."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from services.common.config import TritonConfig
from tests.conftest import config_on_free_ports, free_ports
from tests.mesh_runner import MeshRunner

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
TRUNCATING_MODEL = "short-model"


class TruncatingBackend(BaseHTTPRequestHandler):
    """An OpenAI-compatible backend whose every answer ran out of max_tokens (finish_reason length)."""

    calls = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._reply({"status": "ok"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        type(self).calls += 1
        self._reply({"id": f"chatcmpl-cut-{self.calls}", "object": "chat.completion", "created": 1,
                     "model": body.get("model", ""),
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is, in sh"},
                                  "finish_reason": "length"}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}})

    def _reply(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def truncating_backend() -> Iterator[int]:
    port = free_ports(1)[0]
    server = ThreadingHTTPServer(("127.0.0.1", port), TruncatingBackend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, truncating_backend: int, triton_server: TritonConfig) -> Iterator[MeshRunner]:
    # Generous deadlines: on 2 shared cores a slow lookup would fail open and look like a miss.
    data = config_on_free_ports({"guard": {"deadline_ms": 20000}, "decision": {"deadline_ms": 20000},
                                 "cache": {"deadline_ms": 20000}, "triton": {"timeout_ms": 25000},
                                 "front": {"max_routing_ms": 25000}, "envoy": {"message_timeout_ms": 30000}})
    data["backends"].append({"name": "truncating", "address": "127.0.0.1", "port": truncating_backend})
    data["routing"]["models"][TRUNCATING_MODEL] = {"backend": "truncating", "pii_policy": {"allow_by_default": True}}
    runner = MeshRunner(data, tmp_path_factory.mktemp("cache-e2e"), triton=triton_server)
    runner.start()
    yield runner
    runner.stop()


@pytest.fixture(scope="module")
def client(mesh: MeshRunner) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.envoy_url, timeout=60, trust_env=False) as http:
        yield http


def chat(content: str, model: str = "MoM", history: list[dict[str, Any]] | None = None, **extra: Any) -> dict:
    return {"model": model, "messages": [*(history or []), {"role": "user", "content": content}], **extra}


def ask(client: httpx.Client, body: dict, tenant: str | None = "alice") -> httpx.Response:
    headers = {"x-user-id": tenant} if tenant is not None else {}
    response = client.post(CHAT, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


def hit(response: httpx.Response) -> bool:
    return response.headers.get("x-vsr-cache-hit") == "true"


def answer(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


def stored(client: httpx.Client, body: dict, tenant: str | None = "alice") -> str:
    """Ask once (the backend answers), then until the asynchronous write lands; the stored answer."""
    first = ask(client, body, tenant)
    assert not hit(first)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if hit(again := ask(client, body, tenant)):
            assert answer(again) == answer(first)
            return answer(first)
        time.sleep(0.3)
    raise AssertionError(f"{body['messages'][-1]['content']!r} was never served from the cache")


def test_a_rewording_hits(client: httpx.Client) -> None:
    original = stored(client, chat("What is cognitive dissonance in psychology?"))
    reworded = ask(client, chat("Hi! Can you explain cognitive dissonance in psychology?"))
    assert hit(reworded)
    assert answer(reworded) == original
    assert 0 < float(reworded.headers["x-vsr-cache-similarity"]) < 1


def test_a_hit_says_which_check_passed(client: httpx.Client) -> None:
    stored(client, chat("What does a mitochondrion do?"))
    assert ask(client, chat("What does a mitochondrion do?")).headers["x-vsr-cache-check"] == "exact"
    assert ask(client, chat("what does a mitochondrion do")).headers["x-vsr-cache-check"] == "lexical"


@pytest.mark.parametrize("first, look_alike, tell", [
    ("What is 17 times 23?", "What is 17 times 24?", "24"),
    ("convert 100 USD to EUR", "convert 100 EUR to USD", "100 EUR to USD"),
])
def test_look_alikes_miss(client: httpx.Client, first: str, look_alike: str, tell: str) -> None:
    stored(client, chat(first))
    response = ask(client, chat(look_alike))
    assert not hit(response)
    assert tell in answer(response)  # the backend answered the question that was asked


def test_tenants_are_isolated(client: httpx.Client) -> None:
    question = chat("Name three noble gases, please.")
    stored(client, question, tenant="alice")
    assert not hit(ask(client, question, tenant="bob"))


def cache_metric(mesh: MeshRunner, name: str, labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{mesh.config.cache.metrics_port}/metrics", trust_env=False).text
    line = next((line for line in text.splitlines() if line.startswith(f"{name}{{{labels}}}")), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


def test_anonymous_requests_are_neither_served_nor_stored(client: httpx.Client, mesh: MeshRunner) -> None:
    question = chat("Name three alkali metals, please.")
    stored(client, question, tenant="carol")
    assert not hit(ask(client, question, tenant=None))
    refused = 'operation="store",reason="anonymous"'
    before = cache_metric(mesh, "switchyard_cache_bypasses_total", refused)
    anonymous = chat("Name three halogens, please.")
    ask(client, anonymous, tenant=None)
    stored(client, chat("Name three lanthanides, please."))  # a later write has landed, so this one would have
    assert not hit(ask(client, anonymous, tenant=None))
    assert cache_metric(mesh, "switchyard_cache_bypasses_total", refused) >= before + 1


def test_conversations_are_isolated(client: httpx.Client) -> None:
    paris = [{"role": "user", "content": "Tell me about Paris."}, {"role": "assistant", "content": "Paris is ..."}]
    rome = [{"role": "user", "content": "Tell me about Rome."}, {"role": "assistant", "content": "Rome is ..."}]
    stored(client, chat("How many people live there?", history=paris))
    assert not hit(ask(client, chat("How many people live there?", history=rome)))
    assert not hit(ask(client, chat("How many people live there?")))


def test_other_tools_or_schema_miss(client: httpx.Client) -> None:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    forecast = {"type": "function", "function": {"name": "get_forecast", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}
    question = "Will it rain in Lisbon tomorrow?"
    stored(client, chat(question, tools=[weather]))
    assert not hit(ask(client, chat(question, tools=[forecast])))
    assert not hit(ask(client, chat(question, tools=[weather], tool_choice="required")))
    assert not hit(ask(client, chat(question)))

    def schema(*fields: str) -> dict:
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
            "type": "object", "properties": {f: {"type": "string"} for f in fields}}}}

    question = "Summarise the plot of Hamlet."
    stored(client, chat(question, response_format=schema("summary")))
    assert not hit(ask(client, chat(question, response_format=schema("summary", "themes"))))
    assert not hit(ask(client, chat(question, response_format={"type": "json_object"})))


def test_truncated_answers_are_not_stored(client: httpx.Client) -> None:
    body = chat("Explain the history of the Byzantine Empire.", model=TRUNCATING_MODEL, max_tokens=4)
    before = TruncatingBackend.calls
    assert answer(ask(client, body)).endswith("in sh")
    stored(client, chat("Name three noble metals, please."))  # a later write has landed, so this one would have
    again = ask(client, body)
    assert not hit(again)
    assert TruncatingBackend.calls == before + 2  # both reached the backend
