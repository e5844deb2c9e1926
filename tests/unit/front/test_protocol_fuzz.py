"""Protocol fuzzing of the ext_proc server: random and mutated message sequences, in process and over gRPC.

Whatever Envoy (or an attacker on the ext_proc port) sends — missing or repeated phases, bodies before
headers, huge headers, invalid UTF-8, end_of_stream anywhere — the front answers every message, never
raises, leaks no task and leaves no routing work counted as in flight. Bounded in examples for CI.
"""

from __future__ import annotations

import asyncio
import json

import grpc
from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.front.metrics import FrontMetrics
from services.front.processor import FrontContext
from services.front.server import ExternalProcessorServicer
from tests.conftest import free_ports
from tests.unit.front.test_processor import CHAT, ScriptedClients, make_processor

PHASES = ("request_headers", "request_body", "response_headers", "response_body", "request_trailers",
          "response_trailers")
CHAT_BODY = json.dumps(CHAT).encode()

header_values = st.one_of(st.binary(max_size=40), st.just(b"\xff\xfe invalid utf-8"), st.just(b"x" * 70_000),
                          st.sampled_from([b"POST", b"GET", b"/v1/chat/completions", b"/v1/models",
                                           b"/v1/models/MoM", b"text/event-stream", b"200", b"500"]))
header_names = st.one_of(st.sampled_from([":method", ":path", ":status", "content-type", "x-user-id",
                                          "x-vsr-cache-hit", "x-selected-backend", "traceparent"]),
                         st.text(min_size=1, max_size=12))
header_maps = st.lists(st.tuples(header_names, header_values), max_size=6).map(
    lambda pairs: core.HeaderMap(headers=[core.HeaderValue(key=k, raw_value=v) for k, v in pairs]))
bodies = st.one_of(st.binary(max_size=200), st.just(CHAT_BODY), st.just(b'{"model": "MoM", "messages": ['),
                   st.just(b"data: {\"choices\": []}\n\n"), st.just(b"\xff" * 10))


@st.composite
def messages(draw: st.DrawFn) -> ep.ProcessingRequest:
    phase = draw(st.sampled_from((*PHASES, "none")))
    eos = draw(st.booleans())
    if phase in ("request_headers", "response_headers"):
        return ep.ProcessingRequest(**{phase: ep.HttpHeaders(headers=draw(header_maps), end_of_stream=eos)})
    if phase in ("request_body", "response_body"):
        return ep.ProcessingRequest(**{phase: ep.HttpBody(body=draw(bodies), end_of_stream=eos)})
    if phase in ("request_trailers", "response_trailers"):
        return ep.ProcessingRequest(**{phase: ep.HttpTrailers(trailers=draw(header_maps))})
    return ep.ProcessingRequest()  # no phase set at all


def well_formed_start() -> list[ep.ProcessingRequest]:
    start = core.HeaderMap(headers=[core.HeaderValue(key=":method", raw_value=b"POST"),
                                    core.HeaderValue(key=":path", raw_value=b"/v1/chat/completions")])
    return [ep.ProcessingRequest(request_headers=ep.HttpHeaders(headers=start))]


sequences = st.one_of(st.lists(messages(), max_size=8),
                      st.lists(messages(), max_size=6).map(lambda rest: well_formed_start() + rest))


def answered(message: ep.ProcessingRequest) -> bool:
    return message.WhichOneof("request") is not None


async def run_sequence(context: FrontContext, sequence: list[ep.ProcessingRequest]) -> list[ep.ProcessingResponse]:
    async def requests():
        for message in sequence:
            yield message

    return [r async for r in ExternalProcessorServicer(context).Process(requests(), None)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=sequences)
def test_every_message_is_answered_in_process(sequence: list[ep.ProcessingRequest]) -> None:
    async def run() -> None:
        config = make_processor().config
        context = FrontContext(config, ScriptedClients(), FrontMetrics())
        tasks_before = len(asyncio.all_tasks())
        responses = await run_sequence(context, sequence)
        assert len(responses) == sum(1 for m in sequence if answered(m))
        assert all(r.WhichOneof("response") for r in responses)
        await asyncio.gather(*context.pending_writes)  # cache writes finish on their own
        assert len(asyncio.all_tasks()) == tasks_before
        assert context.admission.inflight_requests == 0 and context.admission.inflight_work == 0

    asyncio.run(run())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(sequences, min_size=1, max_size=4))
def test_every_message_is_answered_over_grpc(batch: list[list[ep.ProcessingRequest]]) -> None:
    async def run() -> None:
        config = make_processor().config
        context = FrontContext(config, ScriptedClients(), FrontMetrics())
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20)])
        ep_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessorServicer(context), server)
        port = free_ports(1)[0]
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = ep_grpc.ExternalProcessorStub(channel)
                for sequence in batch:  # several streams on one connection, one after another
                    responses = [r async for r in stub.Process(iter(sequence), timeout=10)]
                    assert len(responses) == sum(1 for m in sequence if answered(m))
        finally:
            await server.stop(0)
        assert context.admission.inflight_requests == 0

    asyncio.run(run())
