"""When the front itself misbehaves, Envoy (as switchyard configures it) answers, and no request reaches a
backend unprocessed — modelled on Envoy's own ext_proc integration tests.

A misbehaving ext_proc server (tests/faulty_ext_proc.py) stands where the front listens; the real Envoy
with switchyard's generated config and the simulator are started around it. The fault is chosen per
request by an `x-fault` header.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from services.common.config import SwitchyardConfig, load_config
from services.common.health import http_ok
from services.mesh.envoy_config import build_envoy_config, envoy_binary
from tests.conftest import REPO, config_on_free_ports
from tests.faulty_ext_proc import FaultyProcessor, serve
from tests.traffic import chat, reached_backend

pytestmark = pytest.mark.integration

MESSAGE_TIMEOUT_S = 2.0
HANG_S = 3.5  # past Envoy's message_timeout: the reply comes late
MARK = "front-fault-probe"


@dataclass
class Stand:
    config: SwitchyardConfig
    processor: FaultyProcessor

    @property
    def envoy_url(self) -> str:
        return f"http://127.0.0.1:{self.config.envoy.listener_port}"

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.config.simulator.port}"


def _wait(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not asyncio.run(check()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up", pytrace=False)
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stand]:
    directory = tmp_path_factory.mktemp("front-faults")
    data = config_on_free_ports({"envoy": {"message_timeout_ms": MESSAGE_TIMEOUT_S * 1000},
                                 "front": {"max_routing_ms": 1500}, "triton": {"timeout_ms": 1500}})
    (directory / "config.yaml").write_text(yaml.safe_dump(data))
    config = load_config(directory / "config.yaml")
    (directory / "envoy.yaml").write_text(yaml.safe_dump(build_envoy_config(config), sort_keys=False))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server, processor = asyncio.run_coroutine_threadsafe(serve(config.front.grpc_port, HANG_S), loop).result(10)
    simulator = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "simulator", "--config",
                                  str(directory / "config.yaml")], cwd=REPO)
    envoy = subprocess.Popen([str(envoy_binary(config)), "-c", str(directory / "envoy.yaml"), "--log-level", "error",
                              "--disable-hot-restart"])
    try:
        _wait(lambda: http_ok(f"http://127.0.0.1:{config.simulator.port}/health"), 30, "the simulator")
        _wait(lambda: http_ok(f"http://127.0.0.1:{config.envoy.admin_port}/ready", expect="LIVE"), 30, "Envoy")
        yield Stand(config, processor)
    finally:
        envoy.terminate()
        simulator.terminate()
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        envoy.wait(10)
        simulator.wait(10)


def send(stand: Stand, fault: str, model: str = "MoM") -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{stand.envoy_url}/v1/chat/completions", json=chat(f"{MARK} {fault}", model=model),
                          headers={"x-fault": fault}, timeout=30, trust_env=False)
    return response, time.monotonic() - started


def test_a_healthy_processor_routes(stand: Stand) -> None:
    response, _ = send(stand, "ok", model="qwen3-8b")
    assert response.status_code == 200 and reached_backend(stand.simulator_url, f"{MARK} ok") == 1


@pytest.mark.parametrize(("fault", "status"), [("grpc_error", 500), ("wrong_length", 500), ("oversized", 413)])
def test_a_failing_processor_is_answered_by_envoy_and_nothing_reaches_a_backend(stand: Stand, fault: str,
                                                                                status: int) -> None:
    response, _ = send(stand, fault)
    assert response.status_code == status, response.text[:200]
    assert reached_backend(stand.simulator_url, f"{MARK} {fault}") == 0


def test_a_processor_that_closes_its_stream_early_does_not_let_the_request_through(stand: Stand) -> None:
    # Envoy goes on unprocessed after a clean close (gRPC OK); switchyard's route table refuses a routed
    # API request that carries no backend chosen by the front.
    response, _ = send(stand, "close")
    assert response.status_code == 503 and response.json()["error"]["code"] == "router_unavailable"
    assert reached_backend(stand.simulator_url, f"{MARK} close") == 0


def test_a_processor_past_message_timeout_gets_504_in_time_and_its_late_reply_is_ignored(stand: Stand) -> None:
    response, took = send(stand, "hang")
    assert response.status_code == 504
    assert MESSAGE_TIMEOUT_S <= took < MESSAGE_TIMEOUT_S + 1.0
    # Past the moment the processor would have answered: Envoy dropped the stream, nothing went on late.
    time.sleep(HANG_S - MESSAGE_TIMEOUT_S + 0.5)
    assert reached_backend(stand.simulator_url, f"{MARK} hang") == 0
    assert send(stand, "ok", model="qwen3-8b")[0].status_code == 200  # and the next request is served
