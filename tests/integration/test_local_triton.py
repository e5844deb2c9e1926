"""The tests' own Triton launcher notices a dead or hung server and restarts it on the same ports (what
tests.conftest.shared_triton_outlives_each_test relies on to report a crash where it happened)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.conftest import REPOSITORY, LocalTriton, _group_alive

pytestmark = pytest.mark.integration


def test_a_hung_server_is_noticed_and_restarted_on_its_ports() -> None:
    triton = LocalTriton(REPOSITORY)
    triton.start()
    try:
        assert triton.problem() is None
        ports = (triton.config.http_port, triton.config.grpc_port)
        first = triton.process.pid
        os.kill(first, signal.SIGSTOP)  # the server only: it keeps its ports and answers nothing
        assert triton.problem() == "stopped answering (hung)"
        triton.stop()
        triton.start()
        assert triton.process.pid != first and (triton.config.http_port, triton.config.grpc_port) == ports
        assert triton.problem() is None
        triton.process.kill()
        triton.process.wait()
        assert triton.problem() == "exited with code -9"
    finally:
        triton.stop()
    # stop() ends the whole process group: no Python-backend stub outlives its server.
    assert not _group_alive(triton.process.pid)
