"""Integration fixtures: a real tritonserver serving the built triton_models/ on free loopback ports."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.config import TritonConfig
from services.common.triton_server import launch_spec, repository_problems, wait_until_ready
from tests.conftest import free_ports

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"


@pytest.fixture(scope="session")
def triton_server() -> Iterator[TritonConfig]:
    """Start tritonserver (strict model config) for the session; fail loudly when it cannot run."""
    problems = repository_problems(REPOSITORY)
    if problems:
        pytest.fail("model repository not built (run `make models`): " + "; ".join(problems), pytrace=False)
    http_port, grpc_port, metrics_port = free_ports(3)
    config = TritonConfig(
        host="127.0.0.1",
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        model_repository=REPOSITORY,
        timeout_ms=10000,
    )
    spec = launch_spec(config, strict_model_config=True)
    log = tempfile.NamedTemporaryFile("w+", prefix="tritonserver-", suffix=".log", delete=False)
    process = subprocess.Popen(spec.argv, env=spec.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(config, timeout_s=180, is_alive=lambda: process.poll() is None)
    except Exception as exc:  # noqa: BLE001 - report the server's own log with the failure
        process.kill()
        process.wait()
        log.seek(0)
        pytest.fail(f"tritonserver did not start: {exc}\n--- {log.name} ---\n{log.read()[-6000:]}", pytrace=False)
    yield config
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()
