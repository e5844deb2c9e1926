"""The front's service calls: deadlines, rejections versus failures, and the circuit breaker."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common.config import parse_config
from services.front.circuit import CircuitState
from services.front.mesh_clients import MeshClients
from switchyard.v1 import guard_pb2
from tests.conftest import example_config_data


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class FakeMethod:
    """Stands in for a gRPC stub method: raises or answers what the test queued."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.timeouts: list[float] = []

    async def __call__(self, request: object, timeout: float, wait_for_ready: bool) -> object:
        self.timeouts.append(timeout)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        if answer == "hang":
            await asyncio.sleep(10)
        return answer


def clients(**guard) -> tuple[MeshClients, list[tuple[str, CircuitState]]]:
    data = example_config_data()
    data["guard"].update(guard)
    changes: list[tuple[str, CircuitState]] = []
    return MeshClients(parse_config(data), on_circuit_change=lambda s, st: changes.append((s, st))), changes


async def test_the_deadline_is_the_callers() -> None:
    mesh, _ = clients()
    method = FakeMethod(guard_pb2.CheckResponse(has_opinion=True))
    call = await mesh._call("guard", method, object(), 1.25)
    assert call.result is not None and method.timeouts == [1.25]


async def test_rejections_are_not_failures_and_do_not_trip_the_breaker() -> None:
    mesh, changes = clients(circuit_breaker={"failures": 2, "cooldown_ms": 1000})
    method = FakeMethod(rpc_error(grpc.StatusCode.NOT_FOUND, "model 'x' is not served"))
    for _ in range(3):
        call = await mesh._call("guard", method, object(), 1.0)
        assert call.rejection is not None and call.rejection.status == 400 and not call.failed
    assert changes == []


async def test_failures_open_the_breaker_and_then_fail_fast() -> None:
    mesh, changes = clients(circuit_breaker={"failures": 2, "cooldown_ms": 60_000})
    method = FakeMethod(rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert (await mesh._call("guard", method, object(), 1.0)).failure == "unavailable"
    assert (await mesh._call("guard", method, object(), 1.0)).failure == "unavailable"
    assert changes == [("guard", CircuitState.OPEN)]
    fast = await mesh._call("guard", method, object(), 1.0)
    assert fast.failure == "circuit_open" and 59 < fast.retry_after_s <= 60
    assert len(method.timeouts) == 2  # the open breaker did not call the service


async def test_a_successful_probe_closes_the_breaker() -> None:
    mesh, changes = clients(circuit_breaker={"failures": 1, "cooldown_ms": 50})
    method = FakeMethod(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), guard_pb2.CheckResponse(has_opinion=True))
    assert (await mesh._call("guard", method, object(), 1.0)).failure == "timeout"
    await asyncio.sleep(0.06)
    assert (await mesh._call("guard", method, object(), 1.0)).result is not None
    assert changes == [("guard", CircuitState.OPEN), ("guard", CircuitState.HALF_OPEN), ("guard", CircuitState.CLOSED)]


async def test_a_cancelled_call_is_neutral() -> None:
    mesh, changes = clients(circuit_breaker={"failures": 1, "cooldown_ms": 1000})
    task = asyncio.create_task(mesh._call("guard", FakeMethod("hang"), object(), 5.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert changes == [] and mesh.breakers["guard"].state is CircuitState.CLOSED
