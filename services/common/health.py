"""Health probes of the mesh's processes, shared by `switchyard up` and the front's /ready."""

from __future__ import annotations

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def grpc_serving(address: str, timeout_s: float = 1.0) -> bool:
    """True when the gRPC server at `address` reports SERVING (grpc.health.v1, overall status)."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                     timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def http_ok(*urls: str, expect: str | None = None, timeout_s: float = 1.0) -> bool:
    """True when every URL answers 200 (and, with `expect`, its body contains that text)."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
            for url in urls:
                response = await client.get(url)
                if response.status_code != 200 or (expect is not None and expect not in response.text):
                    return False
    except httpx.HTTPError:
        return False
    return True


async def triton_live(host: str, http_port: int, grpc_port: int, timeout_s: float = 2.0) -> bool:
    """True when Triton answers "live" on HTTP and on gRPC, each over a new connection.

    Both, because a hung Triton 2.51 was seen to keep its gRPC port accepting connections without ever
    answering on them (services.common.triton.ABANDONED_CALL_GRACE_S says when it hangs).
    """
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    if not await http_ok(f"http://{host}:{http_port}/v2/health/live", timeout_s=timeout_s):
        return False
    client = grpcclient.InferenceServerClient(url=f"{host}:{grpc_port}")
    try:
        return bool(await client.is_server_live(client_timeout=timeout_s))
    except InferenceServerException:
        return False
    finally:
        await client.close()
