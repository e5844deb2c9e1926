"""The front process: the Envoy ext_proc gRPC server and the router's HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import uvicorn
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common import telemetry
from services.common.config import SwitchyardConfig
from services.common.fallback_headers import FALLBACK_CHAIN_HEADER
from services.common.reload import LiveConfig, start_reloading
from services.common.grpc_server import run_grpc_service
from services.front.api import build_http_app
from services.front.circuit import STATE_VALUES, CircuitState
from services.front.mesh_clients import MeshClients
from services.front.metrics import FrontMetrics
from services.front.processor import FrontContext, RequestProcessor, decode_headers

log = logging.getLogger("switchyard.front")


def start_request_span(headers: ep.HttpHeaders) -> Span | None:
    """The front's span for one HTTP request, a child of the client's/Envoy's `traceparent` when it has one;
    None while tracing is off (the stream then skips every span step).

    Envoy runs the front once more per backend attempt when the request may fall back (the upstream
    pass); that stream gets its own name, so one request still has one `switchyard.front` span."""
    if not telemetry.tracing_enabled():
        return None
    decoded = decode_headers(headers)
    values = {k: v for k, v in decoded.items() if k in ("traceparent", "tracestate")}
    name = "switchyard.front.attempt" if FALLBACK_CHAIN_HEADER in decoded else "switchyard.front"
    return telemetry.tracer().start_span(name, context=telemetry.context_from_headers(values), kind=SpanKind.SERVER)


def phase_span(phase: str) -> contextlib.AbstractContextManager[object]:
    """Routing (the request body: fan-out + merge) gets its own child span; other phases are cheap."""
    if phase == "request_body":
        return telemetry.decision_span("switchyard.front.route")
    return contextlib.nullcontext()


def end_request_span(span: Span, processor: RequestProcessor) -> None:
    """Record what was decided (never what was asked) and end the span."""
    outcome = processor.outcome
    if outcome is not None:
        route = outcome.route
        telemetry.set_decision_attributes(
            span, outcome=outcome.kind.value, cache_hit=outcome.kind == "cache_hit",
            block_reason=outcome.block_reason,
            degraded=",".join(outcome.degraded),
            model=route.model if route else "", category=route.category if route else "",
            reasoning=route.use_reasoning if route else None,
            fallback_reason=route.fallback_reason if route else "")
    # The backend's status, or the one of the router's own reply (block, cache hit, error).
    status = processor.response_status or (outcome.reply.status if outcome and outcome.reply else 0)
    if status:
        telemetry.set_decision_attributes(span, status_code=status)
    span.end()


class ExternalProcessorServicer(ep_grpc.ExternalProcessorServicer):
    """The server loop: one RequestProcessor per stream, one handler call per message."""

    def __init__(self, context: FrontContext) -> None:
        self.context = context

    async def Process(self, request_iterator: AsyncIterator[ep.ProcessingRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[ep.ProcessingResponse]:
        processor = RequestProcessor(self.context)
        handlers = {
            "request_headers": processor.process_request_headers,
            "request_body": processor.process_request_body,
            "response_headers": processor.process_response_headers,
            "response_body": processor.process_response_body,
            "request_trailers": processor.process_request_trailers,
            "response_trailers": processor.process_response_trailers,
        }
        span: Span | None = None
        try:
            async for message in request_iterator:
                phase = message.WhichOneof("request")
                if phase not in handlers:
                    log.warning("ignoring ext_proc message without a known phase: %s", phase)
                    continue
                if phase == "request_headers" and span is None:
                    span = start_request_span(message.request_headers)
                try:
                    # The span is current only around the await, never across the yield (another
                    # stream's task may run in between).
                    with telemetry.activated(span), phase_span(phase):
                        response = await handlers[phase](getattr(message, phase))
                except Exception as exc:  # noqa: BLE001 - one bad request must never take the stream down
                    log.exception("ext_proc %s phase failed", phase)
                    if span is not None:
                        span.set_status(Status(StatusCode.ERROR, f"{phase}: {type(exc).__name__}"))
                    response = processor.failure_response(phase)
                yield response
        finally:
            if span is not None:
                end_request_span(span, processor)


async def serve(config: SwitchyardConfig, config_path: Path | None = None) -> None:
    section = config.front
    metrics = FrontMetrics()
    clients = MeshClients(config, on_circuit_change=lambda service, state: metrics.circuit_state.labels(
        service).set(STATE_VALUES[state]))
    for service in clients.sections:
        metrics.circuit_state.labels(service).set(STATE_VALUES[CircuitState.CLOSED])
    loop = asyncio.get_running_loop()
    metrics.asyncio_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
    await clients.start()
    live = LiveConfig(config)
    context = FrontContext(config=config, clients=clients, metrics=metrics, live=live)
    reload_task: asyncio.Task[None] | None = None
    http = uvicorn.Server(uvicorn.Config(build_http_app(context), host=section.host, port=section.http_port,
                                         log_level="warning", lifespan="off"))
    http.install_signal_handlers = lambda: None  # the gRPC bootstrap owns the signals
    http_task: asyncio.Task[None] | None = None

    async def start_http() -> None:
        nonlocal http_task, reload_task
        # The front reloads the same file as the services: a model added there is listed, routed and
        # PII-checked here from the next request on (each stream keeps the snapshot it started with).
        reload_task = start_reloading(config_path, live, metrics.registry)
        http_task = asyncio.create_task(http.serve())
        while not http.started:
            if http_task.done():
                raise RuntimeError(f"front: cannot serve HTTP on {section.host}:{section.http_port}; "
                                   "is the port taken? change front.http_port")
            await asyncio.sleep(0.02)

    async def stop_http() -> None:
        if reload_task is not None:
            reload_task.cancel()
        http.should_exit = True
        if http_task is not None:
            await http_task
        await clients.close()

    await run_grpc_service(
        "front", section.host, section.grpc_port, section.metrics_port,
        lambda server: ep_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessorServicer(context), server),
        [ep.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name],
        on_shutdown=stop_http, registry=metrics.registry, on_started=start_http,
        # The front's span starts from the HTTP request's `traceparent` (start_request_span), not the stream's.
        trace_rpcs=False,
        # Envoy sends whole buffered bodies in one message; allow the configured limit plus framing.
        options=[("grpc.max_receive_message_length", section.max_body_bytes + (2 << 20)),
                 ("grpc.max_send_message_length", section.max_body_bytes + (2 << 20))],
    )
