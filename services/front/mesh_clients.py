"""The front's calls to decision, guard and cache, each bounded by its deadline."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from collections.abc import Callable
from typing import Generic, TypeVar

import grpc

from services.common.config import ServiceConfig, SwitchyardConfig
from services.front.chat_request import RequestError
from services.front.circuit import CircuitBreaker, CircuitState
from services.front.service_names import Service
from switchyard.v1 import (cache_pb2, cache_pb2_grpc, common_pb2, decision_pb2, decision_pb2_grpc,
                           guard_pb2, guard_pb2_grpc)

log = logging.getLogger("switchyard.front")

T = TypeVar("T")

# Status codes by which a service says "the request is wrong", not "I am broken".
_REJECTIONS = {grpc.StatusCode.NOT_FOUND: 400, grpc.StatusCode.INVALID_ARGUMENT: 400}

# gRPC's default reconnect backoff grows to 120 s: a service restarted after a crash would stay
# unreachable for minutes. Reconnect within a second instead (loopback or cluster-local dials are cheap).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass
class ServiceCall(Generic[T]):
    """What came back from one service: an answer, a rejection of the request, or a failure."""

    service: str
    result: T | None = None
    # "timeout", "unavailable", "error", "circuit_open" (not called: its breaker is open), "disabled",
    # "cancelled" (stopped because the guard had already blocked)
    failure: str | None = None
    rejection: RequestError | None = None
    # With failure "circuit_open": seconds until the breaker lets a probe through.
    retry_after_s: float = 0.0

    @property
    def failed(self) -> bool:
        return self.failure is not None


class MeshClients:
    """gRPC channels to the three services; created inside the running event loop."""

    def __init__(self, config: SwitchyardConfig,
                 on_circuit_change: Callable[[str, CircuitState], None] | None = None) -> None:
        self.sections: dict[str, ServiceConfig] = {s.value: getattr(config, s.value) for s in Service}
        self.breakers: dict[str, CircuitBreaker] = {
            name: CircuitBreaker(section.circuit_breaker,
                                 on_change=(lambda state, n=name: on_circuit_change(n, state)) if on_circuit_change
                                 else None)
            for name, section in self.sections.items()}
        self._channels: dict[str, grpc.aio.Channel] = {}
        # A write is off the request path: it may take as long as any routing call may.
        self._store_timeout_s = config.front.max_routing_ms / 1000.0

    async def start(self) -> None:
        for name, section in self.sections.items():
            self._channels[name] = grpc.aio.insecure_channel(section.dial_address, options=CHANNEL_OPTIONS)
        self.decision = decision_pb2_grpc.DecisionStub(self._channels["decision"])
        self.guard = guard_pb2_grpc.GuardStub(self._channels["guard"])
        self.cache = cache_pb2_grpc.CacheStub(self._channels["cache"])

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels.values()))

    async def _call(self, service: str, method, request, timeout_s: float | None = None) -> ServiceCall:  # type: ignore[no-untyped-def]
        section = self.sections[service]
        if not section.enabled:
            return ServiceCall(service, failure="disabled")
        breaker = self.breakers[service]
        if not breaker.allow():
            return ServiceCall(service, failure="circuit_open", retry_after_s=breaker.retry_after_s())
        try:
            timeout = timeout_s if timeout_s is not None else section.deadline_ms / 1000.0
            result = await method(request, timeout=timeout, wait_for_ready=False)
        except asyncio.CancelledError:
            breaker.record_neutral()
            raise
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in _REJECTIONS:
                # The service answered (it is healthy); the request was wrong.
                breaker.record_success()
                return ServiceCall(service, rejection=RequestError(
                    _REJECTIONS[code], exc.details() or "rejected", _rejection_code(code), "model"))
            breaker.record_failure()
            failure = {grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
                       grpc.StatusCode.UNAVAILABLE: "unavailable"}.get(code, "error")
            log.warning("%s call failed: %s (%s)", service, code.name, (exc.details() or "")[:200])
            return ServiceCall(service, failure=failure)
        except Exception:  # noqa: BLE001 - a broken service must not break the stream
            breaker.record_failure()
            log.exception("%s call raised", service)
            return ServiceCall(service, failure="error")
        breaker.record_success()
        return ServiceCall(service, result=result)

    async def decide(self, context: common_pb2.RequestContext,
                     timeout_s: float | None = None) -> ServiceCall[decision_pb2.DecideResponse]:
        return await self._call("decision", self.decision.Decide, decision_pb2.DecideRequest(request=context), timeout_s)

    async def check(self, context: common_pb2.RequestContext,
                    timeout_s: float | None = None) -> ServiceCall[guard_pb2.CheckResponse]:
        return await self._call("guard", self.guard.Check, guard_pb2.CheckRequest(request=context), timeout_s)

    async def lookup(self, context: common_pb2.RequestContext,
                     timeout_s: float | None = None) -> ServiceCall[cache_pb2.LookupResponse]:
        return await self._call("cache", self.cache.Lookup, cache_pb2.LookupRequest(request=context), timeout_s)

    async def store(self, request: cache_pb2.StoreRequest) -> ServiceCall[cache_pb2.StoreResponse]:
        return await self._call("cache", self.cache.Store, request, self._store_timeout_s)


def _rejection_code(code: grpc.StatusCode) -> str:
    return "model_not_found" if code == grpc.StatusCode.NOT_FOUND else "invalid_request"
