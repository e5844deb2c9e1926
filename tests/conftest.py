"""Shared test helpers: free loopback ports and configs that use them."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.config import TritonConfig
from services.common.health import triton_live
from services.common.triton_server import launch_spec, repository_problems, wait_until_ready

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO / "config" / "config.yaml"


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now; held open together so that they are distinct."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def example_config_data() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_CONFIG.read_text())


def config_on_free_ports(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The example config with every port moved to a free one (tests run beside `make run`)."""
    data = copy.deepcopy(example_config_data())
    ports = iter(free_ports(16))
    data["front"].update(grpc_port=next(ports), http_port=next(ports), metrics_port=next(ports))
    for name in ("decision", "guard", "cache"):
        data[name].update(port=next(ports), metrics_port=next(ports))
    data["triton"].update(http_port=next(ports), grpc_port=next(ports), metrics_port=next(ports))
    data["envoy"].update(listener_port=next(ports), admin_port=next(ports))
    sim_port = next(ports)
    data["simulator"].update(port=sim_port, first_token_ms=5, chunk_interval_ms=30)
    for backend in data["backends"]:
        backend["port"] = sim_port
    data["triton"]["model_repository"] = str(REPO / "triton_models")
    data["cache"]["path"] = "cache-data"  # relative to the test's config file
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


@pytest.fixture
def write_config(tmp_path: Path):
    def write(data: dict[str, Any], name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


REPOSITORY = REPO / "triton_models"


@pytest.fixture(scope="session")
def triton_server() -> Iterator[TritonConfig]:
    """One tritonserver (strict model config) for the whole session, shared by the integration tests and
    every mesh that does not need a Triton of its own; fails loudly when it cannot run."""
    problems = repository_problems(REPOSITORY)
    if problems:
        pytest.fail("model repository not built (run `make models`): " + "; ".join(problems), pytrace=False)
    triton = LocalTriton(REPOSITORY)
    triton.start()
    SHARED_TRITON.append(triton)
    try:
        yield triton.config
    finally:
        SHARED_TRITON.remove(triton)
        triton.stop()


# The session's shared tritonserver while it runs (see shared_triton_outlives_each_test).
SHARED_TRITON: list[LocalTriton] = []


@pytest.fixture(autouse=True)
def shared_triton_outlives_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the shared Triton: if it died or hung during the test, fail that test with
    the server's log, and restart it on the same ports, so that one crash is reported where it happened
    instead of failing every later test (as `switchyard up` and Kubernetes restart a hung Triton)."""
    yield
    if "triton_server" not in request.fixturenames or not SHARED_TRITON:
        return
    triton = SHARED_TRITON[0]
    problem = triton.problem()
    if problem is None:
        return
    log = triton.log_tail()
    triton.stop()
    triton.start()
    pytest.fail(f"the shared tritonserver {problem} during this test (restarted for the tests after it); "
                f"its log ends:\n{log}", pytrace=False)


class LocalTriton:
    """tritonserver (strict model config) over `repository` on free ports, started and stopped by tests;
    a restart keeps the ports, so configs that point at it stay valid."""

    def __init__(self, repository: Path, backend_dir: Path | None = None) -> None:
        http_port, grpc_port, metrics_port = free_ports(3)
        self.config = TritonConfig(host="127.0.0.1", http_port=http_port, grpc_port=grpc_port,
                                   metrics_port=metrics_port, model_repository=repository, timeout_ms=10000)
        self.spec = launch_spec(self.config, strict_model_config=True) if backend_dir is None else \
            launch_spec(self.config, backend_dir=backend_dir, strict_model_config=True)
        self.process: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile("w+", prefix="tritonserver-", suffix=".log", delete=False)

    def start(self) -> None:
        """Start it and wait until it is ready; fail loudly, with the server's own log, when it cannot."""
        # A session of its own, so that stop() also ends its Python backend stubs (a killed server's stubs
        # otherwise live on, holding their shared memory).
        self.process = process = subprocess.Popen(self.spec.argv, env=self.spec.env, stdout=self.log,
                                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_ready(self.config, timeout_s=180, is_alive=lambda: process.poll() is None)
        except Exception as exc:  # noqa: BLE001 - report the server's own log with the failure
            self.stop()
            pytest.fail(f"tritonserver did not start: {exc}\n--- {self.log.name} ---\n{self.log_tail()}",
                        pytrace=False)

    def problem(self) -> str | None:
        """None while it runs and answers; otherwise what is wrong (exited, or hung)."""
        assert self.process is not None
        if self.process.poll() is not None:
            return f"exited with code {self.process.returncode}"
        for attempt in range(3):  # a moment's stall right after a load test is not a hang
            if self.answers():
                return None
            time.sleep(2)
        return "stopped answering (hung)"

    def answers(self) -> bool:
        """Live on HTTP and on gRPC (services.common.health.triton_live), in a loop of its own: this runs in
        fixture teardown, beside pytest-asyncio's loops, whose current-loop setting it must not touch."""
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(triton_live(self.config.host, self.config.http_port,
                                                       self.config.grpc_port))
        finally:
            loop.close()

    def log_tail(self, chars: int = 6000) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for the whole process group: the server if it did not stop in time, and its
        Python-backend stubs, which outlive a killed server; returns once none of them runs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for _ in range(100):  # until the stubs are gone, so that a restart starts clean
            if not _group_alive(self.process.pid):
                return
            time.sleep(0.05)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies do not count: an init that does not reap
    orphans, as in some containers, would keep them forever)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False
