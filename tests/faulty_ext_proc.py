"""An ext_proc server that misbehaves on request, for testing what Envoy (and so a client) does when the
front fails. The fault is chosen per request by the `x-fault` request header; `ok` behaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

FAULTS = ("ok", "close", "grpc_error", "hang", "oversized", "wrong_length", "garbage_status")


def _header(key: str, value: str) -> core.HeaderValueOption:
    return core.HeaderValueOption(header=core.HeaderValue(key=key, raw_value=value.encode()),
                                  append_action=core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)


class FaultyProcessor(ep_grpc.ExternalProcessorServicer):
    def __init__(self, hang_s: float) -> None:
        self.hang_s = hang_s

    async def Process(self, request_iterator: AsyncIterator[ep.ProcessingRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[ep.ProcessingResponse]:
        fault = "ok"
        async for message in request_iterator:
            phase = message.WhichOneof("request")
            if phase == "request_headers":
                names = {h.key.lower(): h.raw_value.decode() for h in message.request_headers.headers.headers}
                fault = names.get("x-fault", "ok")
                if fault == "close":
                    return
                if fault == "grpc_error":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
                if fault == "hang":
                    await asyncio.sleep(self.hang_s)  # Envoy gives up first and cancels the stream
                route = ep.CommonResponse(clear_route_cache=True, header_mutation=ep.HeaderMutation(
                    set_headers=[_header("x-selected-backend", "simulator")]))
                yield ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=route))
            elif phase == "request_body":
                body = message.request_body.body
                if fault == "oversized":
                    big = b'{"model":"qwen3-8b","messages":[{"role":"user","content":"' + b"x" * (12 << 20) + b'"}]}'
                    yield ep.ProcessingResponse(request_body=ep.BodyResponse(response=ep.CommonResponse(
                        header_mutation=ep.HeaderMutation(set_headers=[_header("content-length", str(len(big)))]),
                        body_mutation=ep.BodyMutation(body=big))))
                elif fault == "wrong_length":
                    yield ep.ProcessingResponse(request_body=ep.BodyResponse(response=ep.CommonResponse(
                        header_mutation=ep.HeaderMutation(set_headers=[_header("content-length", str(len(body) + 50))]),
                        body_mutation=ep.BodyMutation(body=body))))
                elif fault == "garbage_status":
                    yield ep.ProcessingResponse(immediate_response=ep.ImmediateResponse(
                        status={"code": 999}, body=b"nonsense"))
                else:
                    yield ep.ProcessingResponse(request_body=ep.BodyResponse())
            elif phase == "response_headers":
                yield ep.ProcessingResponse(response_headers=ep.HeadersResponse())
            elif phase == "response_body":
                yield ep.ProcessingResponse(response_body=ep.BodyResponse())


async def serve(port: int, hang_s: float) -> tuple[grpc.aio.Server, FaultyProcessor]:
    server = grpc.aio.server()
    processor = FaultyProcessor(hang_s)
    ep_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, processor
