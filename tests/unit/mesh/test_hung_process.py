"""`switchyard up` kills and restarts a process that stops answering its liveness check (a hung Triton),
but not one that is still starting or only stalls for a moment."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from services.common.config import parse_config
from services.mesh import supervisor
from services.mesh.supervisor import Mesh, ProcessSpec
from tests.conftest import config_on_free_ports, example_config_data


class Switch:
    """What the liveness check answers, set by the test."""

    def __init__(self) -> None:
        self.live = False

    async def __call__(self) -> bool:
        return self.live


async def until(condition, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_a_process_that_stops_answering_is_killed_and_restarted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(supervisor, "LIVENESS_PERIOD_S", 0.02)
    monkeypatch.setattr(supervisor, "HUNG_AFTER_S", 0.5)
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", (0.05, 0.1))
    lines: list[tuple[str, str]] = []
    mesh = Mesh(parse_config(example_config_data()), tmp_path / "config.yaml", tmp_path / "run",
                log_line=lambda name, line: lines.append((name, line)))
    switch = Switch()
    spec = ProcessSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(300)"], ready=switch,
                       endpoint="-", live=switch)
    await mesh._spawn(spec)
    first = mesh.processes["sleeper"].pid
    mesh._watchers = [asyncio.create_task(mesh._keep_running(spec)), asyncio.create_task(mesh._kill_when_hung(spec))]
    try:
        # Not answering before it ever answered is a slow start, not a hang.
        await asyncio.sleep(1.0)
        assert mesh.processes["sleeper"].pid == first and mesh.hung_kills == {}
        switch.live = True
        await asyncio.sleep(0.1)
        # A stall shorter than HUNG_AFTER_S is ridden out.
        switch.live = False
        await asyncio.sleep(0.2)
        switch.live = True
        await asyncio.sleep(0.6)
        assert mesh.processes["sleeper"].pid == first and mesh.hung_kills == {}
        # Hung: killed, then restarted by the mesh like any crashed process.
        switch.live = False
        await until(lambda: mesh.processes["sleeper"].pid != first)
        assert mesh.hung_kills == {"sleeper": 1} and mesh.restarts == {"sleeper": 1}
        assert mesh.processes["sleeper"].returncode is None
        assert any("liveness check" in line and "killing it" in line for name, line in lines if name == "sleeper")
        # The new process is judged only once it has answered in its turn.
        await asyncio.sleep(1.0)
        assert mesh.hung_kills == {"sleeper": 1}
    finally:
        await mesh.stop()
    assert mesh.processes["sleeper"].returncode is not None


def test_triton_is_watched_for_hangs_and_the_services_are_not(tmp_path: Path) -> None:
    # The services' readiness follows Triton's, so a liveness kill of theirs would restart healthy processes.
    mesh = Mesh(parse_config(config_on_free_ports()), tmp_path / "config.yaml", tmp_path / "run")
    specs = {spec.name: spec for spec in mesh.specs()}
    if "triton" not in specs:
        pytest.fail(f"the mesh would not start Triton: {mesh.notes} (run `make models`)")
    assert specs["triton"].live is not None
    assert [name for name, spec in specs.items() if spec.live is not None] == ["triton"]
