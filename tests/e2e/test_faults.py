"""The fault catalogue: each process of the mesh killed or frozen under load, through the real Envoy.

For every fault: what clients see (only the answers listed may occur), that no jailbreak reaches the
backend meanwhile (the simulator's own log), and how long until every request is served normally
again — without any manual action (the mesh restarts what died). The figures are written to
.switchyard/reports/faults.json and printed; the README's reliability section quotes a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, config_on_free_ports, free_ports
from tests.mesh_runner import MeshRunner
from tests.traffic import ATTACK_MARKS, Event, chat, reached_backend, recovery_s, run_load

pytestmark = pytest.mark.integration

REPORT = REPO / ".switchyard" / "reports" / "faults.json"
FAULT_AT_S = 3.0
FREEZE_S = 4.0


@dataclass(frozen=True)
class Fault:
    process: str
    # "kill" (SIGKILL; the mesh restarts it), "stop" (SIGSTOP for FREEZE_S, then SIGCONT), or "hang" (SIGSTOP
    # for good: the mesh must notice that it stopped answering, kill it and restart it)
    action: str
    # What a client may see meanwhile: 200 (served, maybe degraded), 429/503 (OpenAI errors with
    # Retry-After), 500 (Envoy's own answer while the front itself is down: failure_mode_allow false).
    allowed: frozenset[int]
    recovery_limit_s: float
    load_s: float = 14.0

    @property
    def name(self) -> str:
        return f"{self.process}-{self.action}"


SERVED, REFUSED = frozenset({200}), frozenset({200, 429, 503})
CATALOGUE = [
    Fault("decision", "kill", SERVED, 5.0),
    Fault("decision", "stop", SERVED, 5.0),
    Fault("cache", "stop", SERVED, 5.0),
    Fault("guard", "stop", REFUSED, 5.0),
    Fault("front", "kill", REFUSED | {500}, 5.0),
    # Triton resumes with a backlog of expired work to drop; on a busy machine that takes a while.
    Fault("triton", "stop", REFUSED, 15.0, load_s=25.0),
    Fault("triton", "kill", REFUSED, 45.0, load_s=60.0),
    # Detection takes supervisor.HUNG_AFTER_S (15 s), then a restart like the kill's.
    Fault("triton", "hang", REFUSED, 50.0, load_s=65.0),
]
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshRunner]:
    # Its own Triton (not the session's): the catalogue kills it.
    runner = MeshRunner(config_on_free_ports(), tmp_path_factory.mktemp("faults"))
    runner.start()
    yield runner
    runner.stop()
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(RESULTS, indent=1))


def _normal(event: Event) -> bool:
    return event.status == 200 and not event.degraded


async def _inject(mesh: MeshRunner, fault: Fault) -> float:
    """Apply the fault; return when it ended (kill: at once; stop: after SIGCONT)."""
    if fault.action == "kill":
        await asyncio.to_thread(mesh.kill, fault.process)
        return 0.0
    process = mesh.mesh.processes[fault.process]
    # The server process only: freezing the local Python-backend stubs too (they exchange requests with
    # tritonserver through shared memory) can wedge a model instance for good, an artefact of the local
    # stand-in backend that the native onnxruntime backend of the NGC image does not have.
    os.kill(process.pid, signal.SIGSTOP)
    if fault.action == "hang":
        return 0.0
    try:
        await asyncio.sleep(FREEZE_S)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    return FREEZE_S


@pytest.mark.parametrize("fault", CATALOGUE, ids=lambda f: f.name)
def test_fault_under_load(mesh: MeshRunner, fault: Fault) -> None:
    before = {mark: reached_backend(mesh.simulator_url, mark) for mark in ATTACK_MARKS}
    restarts = mesh.mesh.restarts.get(fault.process, 0)
    hung_kills = mesh.mesh.hung_kills.get(fault.process, 0)

    async def run() -> tuple:
        started = time.monotonic()
        load = asyncio.create_task(run_load(mesh.envoy_url, clients=8, seconds=fault.load_s, attack_every=5,
                                            started=started))
        await asyncio.sleep(FAULT_AT_S)
        fault_at = time.monotonic() - started
        lasted = await _inject(mesh, fault)
        return await load, fault_at, lasted

    result, fault_at, lasted = asyncio.run(run())
    for mark in ATTACK_MARKS:
        assert reached_backend(mesh.simulator_url, mark) == before[mark], f"an attack reached the backend ({mark})"
    assert result.unblocked_attacks_answered == 0
    assert set(result.statuses) <= fault.allowed, (result.statuses, result.bad_errors[:3])
    if fault.action in ("kill", "hang"):
        assert mesh.mesh.restarts.get(fault.process, 0) == restarts + 1
    assert mesh.mesh.hung_kills.get(fault.process, 0) == hung_kills + (fault.action == "hang")
    ended = fault_at + lasted
    benign = recovery_s(result, "benign", ended, _normal)
    blocking = recovery_s(result, "attack", ended, lambda e: e.status == 200 and e.blocked)
    RESULTS[fault.name] = {"requests": sum(result.statuses.values()),
                           "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
                           "degraded": sum(1 for e in result.events if e.degraded),
                           "attacks_reached_backend": 0, "recovery_s": round(max(benign, blocking), 2)}
    print(f"\n{fault.name}: {RESULTS[fault.name]}")
    assert max(benign, blocking) <= fault.recovery_limit_s, RESULTS[fault.name]


def test_an_unreachable_qdrant_server_fails_the_cache_open(tmp_path: Path) -> None:
    dead = free_ports(1)[0]
    data = config_on_free_ports({"cache": {"store": "server", "url": f"http://127.0.0.1:{dead}"}})
    runner = MeshRunner(data, tmp_path / "no-qdrant")
    runner.start(timeout_s=180)
    try:
        with httpx.Client(base_url=runner.envoy_url, timeout=30, trust_env=False,
                          headers={"x-user-id": "team-a"}) as client:
            for text in ("Solve 3x+5=20", "What are the legal elements of a valid contract under common law?"):
                response = client.post("/v1/chat/completions", json=chat(text))
                assert response.status_code == 200, response.text
                assert "cache" in response.headers.get("x-vsr-degraded", ""), dict(response.headers)
    finally:
        runner.stop()
