"""No Triton request is cancelled from the client: a caller that stops waiting leaves it to end on its own.

The local Triton (2.51) can crash when a request is cancelled as it completes (see
services.common.triton.ABANDONED_CALL_GRACE_S); these tests drive the client against a stand-in for the
gRPC client that records whether its calls were cancelled.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.common import model_io as io
from services.common.config import TritonConfig
from services.common.triton import (ABANDONED_CALL_GRACE_S, DEADLINE_PARAMETER, TritonModels, TritonTimeoutError,
                                    set_call_deadline)
from tests.unit.common.test_jailbreak_windows import word_tokenizer


class _Result:
    def __init__(self, rows: int) -> None:
        self.rows = rows

    def as_numpy(self, name: str) -> np.ndarray:
        return np.full((self.rows, len(io.DOMAIN_LABELS)), 1.0 / len(io.DOMAIN_LABELS), dtype=np.float32)


class SlowGrpcClient:
    """Answers every infer after `delay_s`; records each call's deadline and how each call ended."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.client_timeouts: list[float] = []
        self.parameters: list[dict] = []
        self.ended: list[str] = []

    async def infer(self, model, inputs, outputs=None, client_timeout=None, timeout=None, parameters=None):
        self.client_timeouts.append(client_timeout)
        self.parameters.append(parameters)
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise
        self.ended.append("answered")
        return _Result(inputs[0].shape()[0])

    async def close(self) -> None:
        pass


def models_with(client: SlowGrpcClient, timeout_ms: float = 10_000) -> TritonModels:
    models = TritonModels(TritonConfig(grpc_port=1, timeout_ms=timeout_ms), word_tokenizer())
    models._client = client  # type: ignore[assignment]
    return models


async def test_a_call_past_its_budget_times_out_but_its_request_is_not_cancelled() -> None:
    client = SlowGrpcClient(delay_s=0.3)
    models = models_with(client, timeout_ms=50)
    with pytest.raises(TritonTimeoutError, match="within 50 ms"):
        await models.classify_domain(["w1 w2 w3"])
    assert client.ended == []  # the caller stopped waiting at its budget, before the answer...
    await asyncio.sleep(0.4)
    assert client.ended == ["answered"]  # ...and the request ran to its end
    # The gRPC deadline (which would cancel it on both sides) is the budget plus the grace.
    assert client.client_timeouts[0] == pytest.approx(0.05 + ABANDONED_CALL_GRACE_S)


async def test_a_cancelled_caller_leaves_its_request_running() -> None:
    client = SlowGrpcClient(delay_s=0.2)
    models = models_with(client)
    caller = asyncio.create_task(models.classify_domain(["w1 w2 w3"]))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0.3)
    assert client.ended == ["answered"]


async def test_the_served_calls_deadline_bounds_the_wait_and_travels_with_the_request() -> None:
    client = SlowGrpcClient(delay_s=0.0)

    async def served_call() -> None:
        set_call_deadline(0.5)
        await models_with(client).classify_domain(["w1 w2"])

    await asyncio.create_task(served_call())
    assert client.ended == ["answered"]
    assert 0.4 + ABANDONED_CALL_GRACE_S < client.client_timeouts[0] <= 0.5 + ABANDONED_CALL_GRACE_S
    assert DEADLINE_PARAMETER in client.parameters[0]
