"""gRPC adapter of the cache service."""

from __future__ import annotations

import grpc

from services.common.config import SwitchyardConfig
from services.common.grpc_server import run_grpc_service
from switchyard.v1 import cache_pb2, cache_pb2_grpc


class CacheServicer(cache_pb2_grpc.CacheServicer):
    """Never hits and stores nothing until the semantic cache lands."""

    async def Lookup(
        self, request: cache_pb2.LookupRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.LookupResponse:
        return cache_pb2.LookupResponse(has_opinion=False)

    async def Store(
        self, request: cache_pb2.StoreRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.StoreResponse:
        return cache_pb2.StoreResponse(stored=False, reason="cache not enabled")


async def serve(config: SwitchyardConfig) -> None:
    section = config.cache
    await run_grpc_service(
        "cache",
        section.host,
        section.port,
        section.metrics_port,
        lambda server: cache_pb2_grpc.add_CacheServicer_to_server(CacheServicer(), server),
        [cache_pb2.DESCRIPTOR.services_by_name["Cache"].full_name],
    )
