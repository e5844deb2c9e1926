"""gRPC adapter of the guard service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from services.common import model_io as io
from services.common.config import SwitchyardConfig
from services.common.grpc_server import run_grpc_service
from services.common.reload import LiveConfig, start_reloading
from services.common.triton import (LazyTritonModels, TritonError, TritonTimeoutError, coalesce_calls,
                                    set_call_deadline)
from services.guard.check import RequestGuard
from services.guard.metrics import GuardMetrics
from services.guard.pii import TaggedSpan
from switchyard.v1 import guard_pb2, guard_pb2_grpc

log = logging.getLogger("switchyard.guard")


class GuardServicer(guard_pb2_grpc.GuardServicer):
    """Check = RequestGuard.check; a Triton failure becomes a gRPC error so the front applies
    guard.on_failure, never a made-up "clean" verdict."""

    def __init__(self, guard: RequestGuard, metrics: GuardMetrics) -> None:
        self._guard = guard
        self._metrics = metrics

    async def Check(
        self, request: guard_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> guard_pb2.CheckResponse:
        set_call_deadline(context.time_remaining())
        # The checks read the same rows of one prompt: their three heads go to Triton as one request per row.
        coalesce_calls(io.JAILBREAK_CLASSIFIER, io.SAFETY_CLASSIFIER, io.PII_TAGGER)
        request_id = request.request.request_id
        try:
            verdict = await self._guard.check(request.request.messages)
        except TritonError as exc:
            # The client's messages name the model, the address and the fix; they carry no request text.
            self._metrics.checks.labels("error").inc()
            code = grpc.StatusCode.DEADLINE_EXCEEDED if isinstance(exc, TritonTimeoutError) else (
                grpc.StatusCode.UNAVAILABLE)
            log.warning("request %s: guard check failed: %s", request_id, exc)
            await context.abort(code, f"guard: {exc}")
        log.debug("request %s: %s", request_id, verdict.summary())
        return verdict.to_proto()


class LazyGuardModels:
    """The guard's Triton models, built on first use: the guard starts (and reports healthy) on an unbuilt
    model repository like the other services, and its checks fail with a TritonError saying why, so the
    front applies guard.on_failure instead of finding no guard at all."""

    def __init__(self, config: SwitchyardConfig) -> None:
        self._models = LazyTritonModels(config.triton)

    async def jailbreak_scores(self, texts: list[str]) -> Sequence[float]:
        return await self._models.get().jailbreak_scores(texts)

    async def jailbreak_window_scores(self, texts: list[str]) -> Sequence[Sequence[float]]:
        return await self._models.get().jailbreak_window_scores(texts)

    async def safety_probabilities(self, texts: list[str]) -> np.ndarray:
        return await self._models.get().safety_probabilities(texts)

    async def tag_pii(self, texts: list[str]) -> Sequence[Sequence[TaggedSpan]]:
        return await self._models.get().tag_pii(texts)

    async def close(self) -> None:
        await self._models.close()


async def serve(config: SwitchyardConfig, config_path: Path | None = None) -> None:
    section = config.guard
    metrics = GuardMetrics()
    models = LazyGuardModels(config)
    guard = RequestGuard(section, models, models, models, metrics)
    live = LiveConfig(config)
    live.on_change(lambda new: guard.reconfigure(new.guard))
    reload_task: asyncio.Task[None] | None = None

    async def start_reloading_config() -> None:
        nonlocal reload_task
        reload_task = start_reloading(config_path, live, metrics.registry)

    async def stop() -> None:
        if reload_task is not None:
            reload_task.cancel()
        await models.close()
    await run_grpc_service(
        "guard",
        section.host,
        section.port,
        section.metrics_port,
        lambda server: guard_pb2_grpc.add_GuardServicer_to_server(GuardServicer(guard, metrics), server),
        [guard_pb2.DESCRIPTOR.services_by_name["Guard"].full_name],
        on_shutdown=stop, on_started=start_reloading_config,
        registry=metrics.registry,
    )
