"""`switchyard up`: starts every process of the local mesh, waits for health, streams logs, stops all."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from services.common.config import SwitchyardConfig
from services.common.health import grpc_serving, http_ok, triton_live
from services.common.triton_server import launch_spec, ready_urls, repository_problems
from services.mesh.envoy_config import build_envoy_config, envoy_binary

# Seconds a process gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 10.0
# A crashed process is restarted after a backoff that doubles from the first to the last value while it
# keeps crashing (like Kubernetes' CrashLoopBackOff, shorter), and starts over once it has stayed up.
RESTART_BACKOFF_S = (0.2, 10.0)
STABLE_AFTER_S = 30.0
# A process with a liveness check that has answered it once and then fails it for HUNG_AFTER_S is hung:
# it is killed, and so restarted (the chart's livenessProbe does the same in Kubernetes). Longer than a
# stall the mesh rides out (a 4 s freeze, tests/e2e/test_faults.py), short enough that a hung Triton
# (it hangs rather than exits after some crashes) is back in well under a minute.
LIVENESS_PERIOD_S = 2.0
HUNG_AFTER_S = 15.0


class MeshError(RuntimeError):
    """The local mesh cannot start; the message says what to do."""


@dataclass
class ProcessSpec:
    """One process of the mesh: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    ready: Callable[[], Awaitable[bool]]
    endpoint: str
    # (config key, host, port) that must be free before the start.
    ports: list[tuple[str, str, int]] = field(default_factory=list)
    env: dict[str, str] | None = None
    # Is it alive (not: ready)? None: only its exit is watched.
    live: Callable[[], Awaitable[bool]] | None = None


def _set_parent_death_signal() -> None:
    # Children die with the supervisor even if it is killed with SIGKILL: no orphans.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Mesh:
    """The local mesh for one config file: specs, start, health wait, log streaming, stop."""

    def __init__(self, config: SwitchyardConfig, config_path: Path, run_dir: Path,
                 log_line: Callable[[str, str], None] | None = None,
                 extra_specs: list[ProcessSpec] | None = None, restart: bool = True) -> None:
        self.config = config
        self.config_path = config_path.resolve()
        self.run_dir = run_dir
        self.log_line = log_line or (lambda name, line: print(f"[{name:>9}] {line}", flush=True))
        self.extra_specs = extra_specs or []
        # Restart a process that exits after start-up (the rest keeps serving in its failure mode meanwhile).
        self.restart = restart
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        # How often each process was restarted after a crash.
        self.restarts: dict[str, int] = {}
        # How often each process was killed for failing its liveness check (then restarted).
        self.hung_kills: dict[str, int] = {}
        self._log_tasks: list[asyncio.Task[None]] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    def _serve(self, service: str) -> list[str]:
        return [sys.executable, "-m", "services.cli", "serve", service, "--config", str(self.config_path)]

    def specs(self) -> list[ProcessSpec]:
        c = self.config
        specs: list[ProcessSpec] = list(self.extra_specs)
        self.notes: list[str] = []
        if c.triton.managed:
            problems = repository_problems(c.triton.model_repository, trunk=c.models.trunk)
            if problems:
                self.notes.append(f"Triton not started: the model repository is not built for this config "
                                  f"({problems[0]}); run `make models`. Services answer with their failure mode "
                                  "until it is.")
            else:
                t = c.triton
                launch = launch_spec(t)

                async def triton_ready() -> bool:
                    return await http_ok(*ready_urls(t))

                async def triton_alive() -> bool:
                    return await triton_live(t.host, t.http_port, t.grpc_port)

                specs.append(ProcessSpec(
                    "triton", launch.argv, ready=triton_ready, env=launch.env, live=triton_alive,
                    endpoint=f"http://{t.host}:{t.http_port}  grpc :{t.grpc_port}  metrics :{t.metrics_port}",
                    ports=[("triton.http_port", t.host, t.http_port), ("triton.grpc_port", t.host, t.grpc_port),
                           ("triton.metrics_port", t.host, t.metrics_port)]))
        for name in ("decision", "guard", "cache"):
            section = getattr(c, name)
            if not section.enabled:
                continue
            specs.append(ProcessSpec(
                name, self._serve(name),
                ready=lambda a=f"{section.host}:{section.port}": grpc_serving(a),
                endpoint=f"grpc://{section.host}:{section.port}  metrics :{section.metrics_port}",
                ports=[(f"{name}.port", section.host, section.port),
                       (f"{name}.metrics_port", section.host, section.metrics_port)]))
        if c.simulator_wanted:
            s = c.simulator
            specs.append(ProcessSpec(
                "simulator", self._serve("simulator"),
                ready=lambda: http_ok(f"http://{s.host}:{s.port}/health"),
                endpoint=f"http://{s.host}:{s.port}/v1", ports=[("simulator.port", s.host, s.port)]))
        f = c.front
        specs.append(ProcessSpec(
            "front", self._serve("front"),
            ready=lambda: http_ok(f"http://{f.host}:{f.http_port}/health"),
            endpoint=f"ext_proc grpc://{f.host}:{f.grpc_port}  api http://{f.host}:{f.http_port}  "
                     f"metrics :{f.metrics_port}",
            ports=[("front.grpc_port", f.host, f.grpc_port), ("front.http_port", f.host, f.http_port),
                   ("front.metrics_port", f.host, f.metrics_port)]))
        if c.envoy.managed:
            e = c.envoy
            envoy_yaml = self.run_dir / "envoy.yaml"
            specs.append(ProcessSpec(
                "envoy",
                [str(envoy_binary(c)), "-c", str(envoy_yaml), "--log-level", "warn", "--disable-hot-restart"],
                ready=lambda: http_ok(f"http://{e.host}:{e.admin_port}/ready", expect="LIVE"),
                endpoint=f"http://{e.host}:{e.listener_port}  (admin :{e.admin_port})",
                ports=[("envoy.listener_port", e.host, e.listener_port), ("envoy.admin_port", e.host, e.admin_port)]))
        return specs

    def preflight(self, specs: list[ProcessSpec]) -> None:
        for spec in specs:
            binary = spec.argv[0]
            if os.sep in binary and not Path(binary).is_file():
                raise MeshError(f"{spec.name}: binary {binary} is missing; run `make setup`")
            for key, host, port in spec.ports:
                if port and not port_is_free(host, port):
                    raise MeshError(f"{spec.name}: port {port} ({key}) is taken by another process; stop that "
                                    f"process or change {key} in {self.config_path}")

    async def start(self, timeout_s: float = 180.0) -> list[ProcessSpec]:
        specs = self.specs()
        self.preflight(specs)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "envoy.yaml").write_text(yaml.safe_dump(build_envoy_config(self.config), sort_keys=False))
        for spec in specs:
            await self._spawn(spec)
        try:
            await self._wait_ready(specs, timeout_s)
        except BaseException:
            await self.stop()
            raise
        if self.restart:
            self._watchers = [asyncio.create_task(self._keep_running(spec)) for spec in specs]
            self._watchers += [asyncio.create_task(self._kill_when_hung(spec)) for spec in specs if spec.live]
        return specs

    async def _spawn(self, spec: ProcessSpec) -> asyncio.subprocess.Process:
        env = {**(spec.env or os.environ), "PYTHONUNBUFFERED": "1"}
        process = await asyncio.create_subprocess_exec(
            *spec.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=_set_parent_death_signal)
        self.processes[spec.name] = process
        self._log_tasks.append(asyncio.create_task(self._pump(spec.name, process)))
        return process

    async def _keep_running(self, spec: ProcessSpec) -> None:
        """Restart `spec` whenever it exits, with a backoff while it keeps crashing."""
        first, longest = RESTART_BACKOFF_S
        backoff = first
        started = time.monotonic()
        while not self._stopping:
            code = await self.processes[spec.name].wait()
            if self._stopping:
                return
            if time.monotonic() - started >= STABLE_AFTER_S:
                backoff = first
            self.log_line(spec.name, f"exited with code {code}; restarting in {backoff:.1f}s "
                                     "(the rest of the mesh keeps serving in its failure mode)")
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            backoff = min(longest, backoff * 2)
            started = time.monotonic()
            self.restarts[spec.name] = self.restarts.get(spec.name, 0) + 1
            try:
                await self._spawn(spec)
            except OSError as exc:
                self.log_line(spec.name, f"cannot restart: {exc}")
                await asyncio.sleep(longest)

    async def _kill_when_hung(self, spec: ProcessSpec) -> None:
        """Kill `spec`'s process (so that _keep_running restarts it) once it has failed its liveness check
        for HUNG_AFTER_S. A process is judged only after it has once answered, so a slow start is no hang."""
        assert spec.live is not None
        answered_pid, failing_since = None, None
        while not self._stopping:
            await asyncio.sleep(LIVENESS_PERIOD_S)
            process = self.processes[spec.name]
            if process.returncode is not None:
                continue
            if await spec.live():
                answered_pid, failing_since = process.pid, None
                continue
            if answered_pid != process.pid or self._stopping:
                continue
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since >= HUNG_AFTER_S:
                self.log_line(spec.name, f"has not answered its liveness check for {now - failing_since:.0f}s "
                                         "(hung); killing it so that it restarts")
                self.hung_kills[spec.name] = self.hung_kills.get(spec.name, 0) + 1
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                answered_pid, failing_since = None, None

    async def _pump(self, name: str, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            self.log_line(name, raw.decode("utf-8", "replace").rstrip())

    async def _wait_ready(self, specs: list[ProcessSpec], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = {spec.name: spec for spec in specs}
        while waiting:
            for name, spec in list(waiting.items()):
                process = self.processes[name]
                if process.returncode is not None:
                    raise MeshError(f"{name} exited with code {process.returncode} during start-up; "
                                    "its log lines above say why")
                if await spec.ready():
                    del waiting[name]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise MeshError(f"not healthy after {timeout_s:.0f}s: {', '.join(waiting)}; see the log lines above")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers.clear()
        running = {n: p for n, p in self.processes.items() if p.returncode is None}
        for process in running.values():
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for name, process in running.items():
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except asyncio.TimeoutError:
                self.log_line(name, f"did not stop within {STOP_GRACE_S:.0f}s; killing it")
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await process.wait()
        for task in self._log_tasks:
            task.cancel()
        await asyncio.gather(*self._log_tasks, return_exceptions=True)
        self._log_tasks.clear()


def endpoint_table(specs: list[ProcessSpec], notes: list[str] = ()) -> str:  # type: ignore[assignment]
    width = max(len(s.name) for s in specs)
    rows = [f"  {s.name:<{width}}  {s.endpoint}" for s in specs]
    return "switchyard is up:\n" + "\n".join(rows) + "".join(f"\nnote: {n}" for n in notes)
