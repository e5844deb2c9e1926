"""gRPC server bootstrap: health checking, metrics port and graceful shutdown for every service."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY, CollectorRegistry, ProcessCollector, start_http_server

from services.common.telemetry import server_interceptors

log = logging.getLogger("switchyard.grpc")

# How long in-flight RPCs may finish after SIGTERM before they are cancelled.
SHUTDOWN_GRACE_S = 5.0


class PortInUseError(RuntimeError):
    """The port a service wants to listen on is taken."""


async def run_grpc_service(
    name: str,
    host: str,
    port: int,
    metrics_port: int | None,
    register: Callable[[grpc.aio.Server], None],
    service_names: list[str],
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    registry: CollectorRegistry = REGISTRY,
    on_started: Callable[[], Awaitable[None]] | None = None,
    options: list[tuple[str, int]] | None = None,
    trace_rpcs: bool = True,
) -> None:
    """Serve until SIGINT/SIGTERM; health reports SERVING for each of `service_names` and "" once started.

    With tracing on (setup_tracing), every RPC gets a server span in the caller's trace (W3C
    `traceparent` metadata); `trace_rpcs=False` leaves that to the service (the front starts its span
    from the HTTP request's own `traceparent`, not from the ext_proc stream).
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *(options or [])],
                             interceptors=server_interceptors() if trace_rpcs else [])
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise PortInUseError(f"{name}: cannot listen on {address}: port in use? ({exc})") from None
    if bound == 0:
        raise PortInUseError(f"{name}: cannot listen on {address}: the port is taken; free it or change {name}.port")
    if metrics_port:
        if registry is not REGISTRY:
            # process_cpu_seconds_total, process_resident_memory_bytes, ... for the per-service dashboard
            # (the default registry has them already; a service's own registry does not).
            ProcessCollector(registry=registry)
        try:
            start_http_server(metrics_port, addr=host, registry=registry)
        except OSError as exc:
            raise PortInUseError(
                f"{name}: cannot serve metrics on {host}:{metrics_port}: {exc.strerror}; "
                f"free it or change {name}.metrics_port"
            ) from None
    await server.start()
    for service_name in [*service_names, ""]:
        await health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    if on_started is not None:
        await on_started()
    log.info("%s listening on %s (metrics %s)", name, address, metrics_port or "off")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("%s shutting down", name)
    # Tell load balancers first, then let in-flight calls finish.
    await health_servicer.enter_graceful_shutdown()
    await server.stop(SHUTDOWN_GRACE_S)
    if on_shutdown is not None:
        await on_shutdown()
