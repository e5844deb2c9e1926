"""Tracing helpers: off by default, W3C context from headers, only decision attributes on spans."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import telemetry
from services.common.config import TelemetryConfig

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_tracing_is_off_without_an_endpoint() -> None:
    assert telemetry.setup_tracing("decision", TelemetryConfig()) is None
    assert telemetry.setup_tracing("decision", TelemetryConfig(otlp_endpoint="")) is None


def test_context_comes_from_the_traceparent_header() -> None:
    context = telemetry.context_from_headers({"traceparent": TRACEPARENT, "content-type": "application/json"})
    parent = trace.get_current_span(context).get_span_context()
    assert format(parent.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(parent.span_id, "016x") == "b7ad6b7169203331"
    assert not trace.get_current_span(telemetry.context_from_headers({})).get_span_context().is_valid


def _recording() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def test_only_decision_attributes_are_accepted() -> None:
    tracer, exporter = _recording()
    with tracer.start_as_current_span("s") as span:
        telemetry.set_decision_attributes(span, model="qwen3-8b", category="math", cache_hit=False,
                                          pii_types={"US_SSN", "EMAIL_ADDRESS"}, block_reason="")
        with pytest.raises(ValueError, match="not allowed"):
            telemetry.set_decision_attributes(span, prompt="my SSN is 123-45-6789")
    attributes = dict(exporter.get_finished_spans()[0].attributes or {})
    assert attributes == {"switchyard.model": "qwen3-8b", "switchyard.category": "math",
                          "switchyard.cache_hit": False, "switchyard.pii_types": ("EMAIL_ADDRESS", "US_SSN")}


def test_decision_span_records_the_error_type_not_its_message() -> None:
    tracer, exporter = _recording()
    with tracer.start_as_current_span("parent"):
        with pytest.raises(KeyError):
            # decision_span uses the global (no-op) tracer here: it must still pass exceptions through.
            with telemetry.decision_span("switchyard.test", category="law"):
                raise KeyError("the user's secret text")
    assert [s.name for s in exporter.get_finished_spans()] == ["parent"]


def test_activated_makes_a_span_current_only_inside() -> None:
    tracer, _ = _recording()
    span = tracer.start_span("long-lived")
    with telemetry.activated(span):
        assert trace.get_current_span() is span
    assert trace.get_current_span() is not span
    with telemetry.activated(None):
        pass
    span.end()


def test_decision_span_without_tracing_is_a_no_op_that_still_refuses_unknown_keys() -> None:
    assert not telemetry.tracing_enabled()
    before = trace.get_current_span()
    with telemetry.decision_span("switchyard.test", category="law") as span:
        assert not span.is_recording()
        assert trace.get_current_span() is before
    with pytest.raises(ValueError, match="not allowed"):
        with telemetry.decision_span("switchyard.test", prompt="my SSN is 123-45-6789"):
            pass
