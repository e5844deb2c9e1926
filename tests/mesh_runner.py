"""Runs a real local mesh (Envoy, front, services, simulator) in a background thread for tests."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Any

import yaml

from services.common.config import SwitchyardConfig, TritonConfig, load_config
from services.mesh.supervisor import Mesh, ProcessSpec


class MeshRunner:
    """Start/stop a Mesh from synchronous test code; keeps every log line for assertions."""

    def __init__(self, data: dict[str, Any], directory: Path, extra_specs: list[ProcessSpec] | None = None,
                 restart: bool = True, triton: TritonConfig | None = None) -> None:
        """`triton`: a running Triton to use (the session's), instead of starting one for this mesh."""
        directory.mkdir(parents=True, exist_ok=True)
        if triton is not None:
            data = {**data, "triton": {**data.get("triton", {}), "managed": False, "host": triton.host,
                                       "http_port": triton.http_port, "grpc_port": triton.grpc_port,
                                       "metrics_port": triton.metrics_port,
                                       "model_repository": str(triton.model_repository)}}
        self.config_path = directory / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.config: SwitchyardConfig = load_config(self.config_path)
        self.logs: list[tuple[str, str]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.mesh = Mesh(self.config, self.config_path, directory / "run",
                         log_line=lambda name, line: self.logs.append((name, line)), extra_specs=extra_specs,
                         restart=restart)

    @property
    def envoy_url(self) -> str:
        return f"http://127.0.0.1:{self.config.envoy.listener_port}"

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.config.simulator.port}"

    def _run(self, coro, timeout: float):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, timeout_s: float = 120.0) -> None:
        self.thread.start()
        try:
            self._run(self.mesh.start(timeout_s), timeout_s + 30)
        except Exception as exc:
            raise RuntimeError(f"the mesh did not start: {exc}\n--- logs ---\n{self.log_text()}") from exc

    def stop(self) -> None:
        try:
            self._run(self.mesh.stop(), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def kill(self, name: str) -> None:
        """SIGKILL the process and its children (Triton's backend stubs), as a crashed container would be."""
        process = self.mesh.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        self._run(process.wait(), 30)

    def log_text(self) -> str:
        return "\n".join(f"[{n}] {line}" for n, line in self.logs)
