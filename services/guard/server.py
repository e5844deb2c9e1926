"""gRPC adapter of the guard service."""

from __future__ import annotations

import grpc

from services.common.config import SwitchyardConfig
from services.common.grpc_server import run_grpc_service
from switchyard.v1 import guard_pb2, guard_pb2_grpc


class GuardServicer(guard_pb2_grpc.GuardServicer):
    """Answers "no opinion" until jailbreak and PII detection land."""

    async def Check(
        self, request: guard_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> guard_pb2.CheckResponse:
        return guard_pb2.CheckResponse(has_opinion=False)


async def serve(config: SwitchyardConfig) -> None:
    section = config.guard
    await run_grpc_service(
        "guard",
        section.host,
        section.port,
        section.metrics_port,
        lambda server: guard_pb2_grpc.add_GuardServicer_to_server(GuardServicer(), server),
        [guard_pb2.DESCRIPTOR.services_by_name["Guard"].full_name],
    )
