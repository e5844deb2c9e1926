"""The system under test: the full local mesh on free ports plus a second Envoy that skips the router."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from services.mesh.envoy_config import EXT_PROC_CLUSTER, build_envoy_config, envoy_binary
from services.mesh.supervisor import ProcessSpec, http_ok
from tests.conftest import config_on_free_ports, free_ports
from tests.mesh_runner import MeshRunner

REPO = Path(__file__).resolve().parent.parent
DIRECT_ENVOY = "envoy-direct"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def direct_envoy_config(router_yaml: dict[str, Any], listener_port: int, admin_port: int) -> dict[str, Any]:
    """The router's own Envoy config minus the ext_proc filter and its cluster: Envoy → backend only."""
    data = copy.deepcopy(router_yaml)
    data["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener = data["static_resources"]["listeners"][0]
    listener["name"] = "direct"
    listener["address"]["socket_address"]["port_value"] = listener_port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "direct"
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
    data["static_resources"]["clusters"] = [c for c in data["static_resources"]["clusters"]
                                            if c["name"] != EXT_PROC_CLUSTER]
    # No router chooses a backend here: drop the routes that refuse a routed API without one (503
    # router_unavailable), so the default route forwards it to the backend as it would in front of vLLM.
    for host in hcm["route_config"]["virtual_hosts"]:
        host["routes"] = [r for r in host["routes"] if "direct_response" not in r]
    return data


class BenchStack:
    """Starts the mesh (Triton, decision, guard, cache, front, simulator, Envoy) and the direct Envoy."""

    def __init__(self, directory: Path, first_token_ms: float, chunk_interval_ms: float) -> None:
        self.directory = directory
        data = config_on_free_ports({"simulator": {"first_token_ms": first_token_ms,
                                                   "chunk_interval_ms": chunk_interval_ms},
                                     "telemetry": {"log_level": "warning"}})
        # The bench's cache lives in its own run directory, so every run starts from an empty cache.
        data["cache"]["path"] = "cache-data"
        self.data = data
        listener, admin = free_ports(2)
        self.direct_port, self.direct_admin = listener, admin
        runner_dir = directory / "mesh"
        runner_dir.mkdir(parents=True, exist_ok=True)
        self._direct_yaml = runner_dir / "envoy-direct.yaml"
        self.runner = MeshRunner(data, runner_dir, extra_specs=[self._direct_spec()])
        self.config = self.runner.config

    def _direct_spec(self) -> ProcessSpec:
        return ProcessSpec(
            DIRECT_ENVOY, [], ready=lambda: http_ok(f"http://127.0.0.1:{self.direct_admin}/ready", expect="LIVE"),
            endpoint=f"http://127.0.0.1:{self.direct_port}",
            ports=[("bench.direct_listener", "127.0.0.1", self.direct_port),
                   ("bench.direct_admin", "127.0.0.1", self.direct_admin)])

    def start(self) -> None:
        router_yaml = build_envoy_config(self.config)
        self._direct_yaml.write_text(yaml.safe_dump(direct_envoy_config(router_yaml, self.direct_port,
                                                                        self.direct_admin), sort_keys=False))
        spec = self.runner.mesh.extra_specs[0]
        spec.argv = [str(envoy_binary(self.config)), "-c", str(self._direct_yaml), "--log-level", "warn",
                     "--disable-hot-restart"]
        started = time.monotonic()
        self.runner.start(timeout_s=240)
        print(f"  mesh up in {time.monotonic() - started:.1f}s", flush=True)

    def stop(self) -> None:
        (self.directory / "mesh.log").write_text(self.runner.log_text())
        self.runner.stop()

    @property
    def router_url(self) -> str:
        return f"{self.runner.envoy_url}/v1/chat/completions"

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.direct_port}/v1/chat/completions"

    def metrics_urls(self) -> dict[str, str]:
        c = self.config
        return {"front": f"http://127.0.0.1:{c.front.metrics_port}/metrics",
                "decision": f"http://127.0.0.1:{c.decision.metrics_port}/metrics",
                "guard": f"http://127.0.0.1:{c.guard.metrics_port}/metrics",
                "cache": f"http://127.0.0.1:{c.cache.metrics_port}/metrics",
                "triton": f"http://127.0.0.1:{c.triton.metrics_port}/metrics"}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each mesh process and its children (Triton's backend stubs too)."""
        groups = {p.pid: name for name, p in self.runner.mesh.processes.items()}
        used = {name: 0.0 for name in groups.values()}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            # After the command name: state ppid pgrp ...; utime and stime are fields 14 and 15 (1-based).
            name = groups.get(int(fields[2]))
            if name is not None:
                used[name] += (int(fields[11]) + int(fields[12])) / CLK_TCK
        return used


def run_load(job: dict[str, Any]) -> dict[str, Any]:
    """Run one load job in a fresh pinned client process (see bench.httpload)."""
    proc = subprocess.run([sys.executable, "-m", "bench.httpload"], input=json.dumps(job), capture_output=True,
                          text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)
