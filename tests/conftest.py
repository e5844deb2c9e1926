"""Shared test helpers: free loopback ports and configs that use them."""

from __future__ import annotations

import copy
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.config import TritonConfig
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
    yield from running_triton(REPOSITORY)


def running_triton(repository: Path, backend_dir: Path | None = None) -> Iterator[TritonConfig]:
    """Run tritonserver (strict model config) over `repository` on free ports until the generator is closed;
    fail loudly, with the server's own log, when it cannot start."""
    http_port, grpc_port, metrics_port = free_ports(3)
    config = TritonConfig(host="127.0.0.1", http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          model_repository=repository, timeout_ms=10000)
    spec = launch_spec(config, strict_model_config=True) if backend_dir is None else \
        launch_spec(config, backend_dir=backend_dir, strict_model_config=True)
    log = tempfile.NamedTemporaryFile("w+", prefix="tritonserver-", suffix=".log", delete=False)
    process = subprocess.Popen(spec.argv, env=spec.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(config, timeout_s=180, is_alive=lambda: process.poll() is None)
    except Exception as exc:  # noqa: BLE001 - report the server's own log with the failure
        process.kill()
        process.wait()
        log.seek(0)
        pytest.fail(f"tritonserver did not start: {exc}\n--- {log.name} ---\n{log.read()[-6000:]}", pytrace=False)
    try:
        yield config
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
