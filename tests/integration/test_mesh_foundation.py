"""One request over the whole real path: client -> Envoy -> front (ext_proc) -> services -> Envoy -> backend."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import pytest

from services.common.config import TritonConfig
from tests.conftest import config_on_free_ports, free_ports
from tests.mesh_runner import MeshRunner

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, triton_server: TritonConfig):
    runner = MeshRunner(config_on_free_ports(), tmp_path_factory.mktemp("mesh"), triton=triton_server)
    runner.start()
    yield runner
    runner.stop()


@pytest.fixture(scope="module")
def client(mesh: MeshRunner):
    with httpx.Client(base_url=mesh.envoy_url, timeout=30, trust_env=False) as http:
        yield http


def last_backend_request(mesh: MeshRunner) -> dict:
    received = httpx.get(f"{mesh.simulator_url}/sim/requests", trust_env=False).json()
    return received[-1]


def test_alias_is_routed_to_a_configured_model(client: httpx.Client, mesh: MeshRunner) -> None:
    response = client.post(CHAT, json={"model": "MoM", "messages": [{"role": "user", "content": "Hello there"}]})
    assert response.status_code == 200, response.text
    selected = response.headers["x-vsr-selected-model"]
    assert selected in mesh.config.routing.models
    completion = response.json()
    assert completion["model"] == selected
    assert completion["choices"][0]["message"]["content"].startswith(f"[simulated {selected}]")
    assert completion["usage"]["total_tokens"] > 0
    backend = last_backend_request(mesh)
    assert backend["body"]["model"] == selected
    assert backend["headers"]["x-selected-model"] == selected
    assert int(backend["headers"]["content-length"]) == len(orjson.dumps(backend["body"]))


def test_concrete_model_passes_through(client: httpx.Client, mesh: MeshRunner) -> None:
    response = client.post(CHAT, json={"model": "deepseek-r1", "messages": [
        {"role": "user", "content": "Say hello to the team"}]})
    assert response.status_code == 200
    assert response.json()["model"] == "deepseek-r1"
    assert last_backend_request(mesh)["body"]["model"] == "deepseek-r1"


def test_streaming_arrives_chunk_by_chunk(client: httpx.Client) -> None:
    payload = {"model": "auto", "stream": True, "stream_options": {"include_usage": True},
               "messages": [{"role": "user", "content": "one two three four five six seven eight"}]}
    arrivals: list[float] = []
    events: list[bytes] = []
    with client.stream("POST", CHAT, json=payload) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        selected = response.headers["x-vsr-selected-model"]
        buffer = b""
        for raw in response.iter_raw():
            buffer += raw
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                events.append(event)
                arrivals.append(time.monotonic())
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[len(b"data: "):]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == selected for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "one two three" in text
    # The simulator spaces chunks 30 ms apart; a buffering proxy would deliver them all at once.
    assert arrivals[-1] - arrivals[0] > 0.15
    assert len({round(t, 2) for t in arrivals}) > 5


def test_malformed_json_is_a_clear_400(client: httpx.Client) -> None:
    response = client.post(CHAT, content=b'{"model": "MoM", "messages": [', headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_json"
    assert "not valid JSON" in error["message"]


def test_missing_messages_is_a_clear_400(client: httpx.Client) -> None:
    response = client.post(CHAT, json={"model": "MoM"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_messages"


def test_models_are_listed_by_the_router(client: httpx.Client) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    ids = [m["id"] for m in response.json()["data"]]
    assert ids[:2] == ["MoM", "auto"] and "deepseek-r1" in ids


def test_non_chat_path_passes_through_untouched(client: httpx.Client, mesh: MeshRunner) -> None:
    raw = b'{"model":"MoM","input":"untouched \\u00e9 1.50"}'
    response = client.post("/v1/embeddings", content=raw, headers={"content-type": "application/json",
                                                                   "x-selected-model": "deepseek-r1"})
    assert response.status_code == 200
    backend = last_backend_request(mesh)
    assert backend["path"] == "/v1/embeddings"
    assert backend["body"] == orjson.loads(raw)
    assert "x-selected-model" not in backend["headers"]
    assert "x-vsr-selected-model" not in response.headers


def test_unreachable_service_fails_open_to_the_default_model(tmp_path: Path, triton_server: TritonConfig) -> None:
    dead = free_ports(1)[0]
    data = config_on_free_ports({"decision": {"address": f"127.0.0.1:{dead}"}})
    runner = MeshRunner(data, tmp_path / "degraded", triton=triton_server)
    runner.start()
    try:
        with httpx.Client(base_url=runner.envoy_url, timeout=30, trust_env=False) as http:
            response = http.post(CHAT, json={"model": "MoM", "messages": [
                {"role": "user", "content": "What is the capital of France?"}]})
        assert response.status_code == 200
        # A cold Triton may also make the cache miss its deadline; the dead decision must be named.
        assert "decision" in response.headers["x-vsr-degraded"].split(",")
        assert response.json()["model"] == "qwen3-8b"
    finally:
        runner.stop()
