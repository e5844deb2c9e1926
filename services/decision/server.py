"""gRPC adapter of the decision service."""

from __future__ import annotations

import grpc

from services.common.config import SwitchyardConfig
from services.common.grpc_server import run_grpc_service
from switchyard.v1 import decision_pb2, decision_pb2_grpc


class DecisionServicer(decision_pb2_grpc.DecisionServicer):
    """Answers "no opinion" until domain classification lands; the front then uses the default model."""

    async def Decide(
        self, request: decision_pb2.DecideRequest, context: grpc.aio.ServicerContext
    ) -> decision_pb2.DecideResponse:
        return decision_pb2.DecideResponse(has_opinion=False)


async def serve(config: SwitchyardConfig) -> None:
    section = config.decision
    await run_grpc_service(
        "decision",
        section.host,
        section.port,
        section.metrics_port,
        lambda server: decision_pb2_grpc.add_DecisionServicer_to_server(DecisionServicer(), server),
        [decision_pb2.DESCRIPTOR.services_by_name["Decision"].full_name],
    )
