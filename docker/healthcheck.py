"""Container health check for the switchyard images: `healthcheck.py grpc PORT` or `healthcheck.py http PORT PATH`."""

from __future__ import annotations

import sys
import urllib.request


def grpc_serving(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def http_ok(port: int, path: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:  # noqa: S310 (loopback only)
        return 200 <= reply.status < 300


def main(argv: list[str]) -> int:
    kind, port = argv[0], int(argv[1])
    try:
        healthy = grpc_serving(port) if kind == "grpc" else http_ok(port, argv[2] if len(argv) > 2 else "/health")
    except Exception as exc:  # any failure to answer is "unhealthy"; say why for `docker inspect`
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
