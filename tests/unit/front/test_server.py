"""The ext_proc server loop: one processor per stream, one answer per message, never a broken stream."""

from __future__ import annotations

import json

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from services.front.metrics import FrontMetrics
from services.front.processor import FrontContext
from services.front.server import ExternalProcessorServicer
from tests.unit.front.test_processor import CHAT, ScriptedClients, body, headers, make_processor


async def run_stream(messages: list[ep.ProcessingRequest], context: FrontContext | None = None) -> list:
    async def requests():
        for message in messages:
            yield message

    servicer = ExternalProcessorServicer(context or make_processor().context)
    return [response async for response in servicer.Process(requests(), None)]


async def test_one_answer_per_message_in_order() -> None:
    answers = await run_stream([
        ep.ProcessingRequest(request_headers=headers("POST", "/v1/chat/completions")),
        ep.ProcessingRequest(request_body=body(CHAT)),
    ])
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body"]
    assert json.loads(answers[1].request_body.response.body_mutation.body)["model"] == "qwen3-8b"


async def test_a_body_before_any_headers_is_answered_as_pass_through() -> None:
    answers = await run_stream([ep.ProcessingRequest(request_body=body(CHAT)),
                                ep.ProcessingRequest(response_body=ep.HttpBody(body=b"x", end_of_stream=True))])
    assert [a.WhichOneof("response") for a in answers] == ["request_body", "response_body"]
    assert not answers[0].request_body.response.HasField("body_mutation")


async def test_a_phase_that_raises_answers_500_and_the_stream_goes_on() -> None:
    class Exploding(ScriptedClients):
        async def check(self, context, timeout_s=None):
            raise RuntimeError("boom")

    config = make_processor().config
    context = FrontContext(config, Exploding(), FrontMetrics())
    answers = await run_stream([
        ep.ProcessingRequest(request_headers=headers("POST", "/v1/chat/completions")),
        ep.ProcessingRequest(request_body=body(CHAT)),
        ep.ProcessingRequest(response_headers=headers("GET", "/")),
    ], context)
    reply = answers[1].immediate_response
    assert reply.status.code == 500 and json.loads(reply.body)["error"]["code"] == "router_error"
    assert answers[2].WhichOneof("response") == "response_headers"
    assert context.metrics.errors.labels("internal")._value.get() == 1
    assert context.admission.inflight_requests == 0  # released although the call raised


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/responses", "/metrics", "/v1/chat/completions/x"])
async def test_other_paths_pass_through_and_drop_client_routing_headers(path: str) -> None:
    answers = await run_stream([ep.ProcessingRequest(request_headers=headers(
        "POST", path, **{"x-selected-backend": "vllm", "x-vsr-cache-hit": "true"}))])
    removed = set(answers[0].request_headers.response.header_mutation.remove_headers)
    assert {"x-selected-backend", "x-selected-model", "x-vsr-cache-hit"} <= removed
