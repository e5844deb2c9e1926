"""OpenTelemetry tracing for every switchyard process: OTLP export, W3C context, decision-only attributes.

Tracing is off unless `telemetry.otlp_endpoint` is set. When it is on, `setup_tracing` installs the
process's TracerProvider as OpenTelemetry's global one (the instrumentation libraries and the W3C
propagator only look there) and instruments every `grpc.aio` client channel, which covers the
front's calls to decision/guard/cache *and* the Triton client's channel (tritonclient builds its own
channel, so an explicit interceptor cannot be handed to it).

Spans never carry prompt text, completions or PII values: `set_decision_attributes` accepts only the
keys in DECISION_ATTRIBUTES (category, model, cache hit, block reason, ...) and drops anything else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.config import TelemetryConfig

log = logging.getLogger("switchyard.telemetry")

TRACER_NAME = "switchyard"
SERVICE_NAMESPACE = "switchyard"

# The only attributes switchyard's own spans may carry (short name -> attribute key). Values are
# decisions, never request content: adding a key here is a privacy review, not a convenience.
DECISION_ATTRIBUTES: Mapping[str, str] = {
    "outcome": "switchyard.outcome",            # upstream / cache_hit / blocked / error
    "model": "switchyard.model",                # the model the request was routed to
    "category": "switchyard.category",          # the classified domain
    "confidence": "switchyard.confidence",
    "reasoning": "switchyard.reasoning",        # bool
    "cache_hit": "switchyard.cache_hit",        # bool
    "block_reason": "switchyard.block_reason",  # jailbreak / pii
    "pii_types": "switchyard.pii_types",        # entity TYPES only (EMAIL, PERSON), never values
    "degraded": "switchyard.degraded",          # services that failed open, comma separated
    "fallback_reason": "switchyard.fallback_reason",
    "status_code": "http.response.status_code",
    "classifier": "switchyard.classifier",
    "service": "switchyard.service",
}

# Readiness probes poll health every 200 ms; tracing them would drown the real traffic.
_NOT_HEALTH = filters.negate(filters.health_check())
_W3C = TraceContextTextMapPropagator()


def setup_tracing(service_name: str, config: TelemetryConfig) -> TracerProvider | None:
    """Install tracing for this process when `otlp_endpoint` is set; return the provider, or None when off."""
    if not config.otlp_endpoint:
        return None
    endpoint = config.otlp_endpoint
    # The exporter wants host:port or a URL; a bare host:port means plain-text gRPC (in-cluster collector).
    insecure = not endpoint.startswith("https://")
    provider = TracerProvider(resource=Resource.create({
        "service.name": f"switchyard-{service_name}",
        "service.namespace": SERVICE_NAMESPACE,
    }))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorClient(filter_=_NOT_HEALTH).instrument(tracer_provider=provider)
    log.info("tracing on: spans of switchyard-%s go to %s (OTLP gRPC)", service_name, endpoint)
    return provider


def tracing_enabled() -> bool:
    """True once setup_tracing installed an SDK provider in this process."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """Interceptors that make every incoming RPC join the caller's trace (none while tracing is off)."""
    if not tracing_enabled():
        return []
    return [aio_server_interceptor(filter_=_NOT_HEALTH)]


def tracer() -> trace.Tracer:
    # A no-op tracer while tracing is off: span calls then cost next to nothing.
    return trace.get_tracer(TRACER_NAME)


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """The trace context in W3C `traceparent`/`tracestate` headers (lower-case keys); empty when absent."""
    return _W3C.extract({k: v for k, v in headers.items() if k in ("traceparent", "tracestate")})


def set_decision_attributes(span: Span, **values: object) -> None:
    """Set allow-listed decision attributes; empty values are skipped and unknown keys are refused."""
    for key, value in values.items():
        name = DECISION_ATTRIBUTES.get(key)
        if name is None:
            raise ValueError(f"span attribute {key!r} is not allowed; spans carry only {sorted(DECISION_ATTRIBUTES)} "
                             "(add it to DECISION_ATTRIBUTES only if it can never hold request content)")
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            value = [str(v) for v in sorted(value)]
        span.set_attribute(name, value)  # type: ignore[arg-type]


@contextmanager
def decision_span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: object) -> Iterator[Span]:
    """A span around one step (classification, policy, cache lookup/store) in the current context.

    Exceptions mark the span as failed with their type name only: their messages may quote the request.
    While tracing is off the span is the invalid (no-op) one and no context is attached: a no-op span
    made current costs more than the step it would time, several times per request in every service.
    """
    if not tracing_enabled():
        span = trace.INVALID_SPAN
        set_decision_attributes(span, **attributes)  # unknown keys are refused with tracing off too
        yield span
        return
    with tracer().start_as_current_span(name, kind=kind, record_exception=False,
                                        set_status_on_exception=False) as span:
        set_decision_attributes(span, **attributes)
        try:
            yield span
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


@contextmanager
def activated(span: Span | None) -> Iterator[None]:
    """Make a long-lived span current for one await (e.g. one ext_proc phase); no-op for None."""
    if span is None:
        yield
        return
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield
