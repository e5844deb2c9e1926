"""Latency of one ~30-token text through `domain_classifier` on the local tritonserver (not a test).

Usage: python -m bench.triton_latency [--requests 300] [--output bench/results/triton_latency.json]
Starts tritonserver from the built triton_models/ on free loopback ports, measures sequential
requests through the service client (tokenize + gRPC + ensemble), prints and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from services.common.config import TritonConfig
from services.common.triton import TritonModels
from services.common.triton_server import launch_spec, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Explain how the Federal Reserve uses interest rates to control inflation, and what usually happens to long-term government bond prices and mortgage rates afterwards."


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def _measure(config: TritonConfig, requests: int) -> dict:
    async with TritonModels.from_config(config) as models:
        tokens = int(models._tokenizer.encode([TEXT]).attention_mask.sum())
        for i in range(20):  # warm-up: sessions, gRPC channel, shared memory
            await models.classify_domain([f"{TEXT} (warm-up {i})"])
        latencies = []
        for i in range(requests):
            # A new text every time: the trunk answers a row it computed moments ago from its row cache.
            text = f"{TEXT} (request {i})"
            started = time.perf_counter()
            await models.classify_domain([text])
            latencies.append((time.perf_counter() - started) * 1000)
    values = np.array(latencies)
    return {
        "model": "domain_classifier",
        "tokens": tokens,
        "requests": requests,
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p90_ms": round(float(np.percentile(values, 90)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "mean_ms": round(float(values.mean()), 3),
        "target_p50_ms": 10.0,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "triton_latency.json"))
    args = parser.parse_args()
    http, grpc, metrics = _free_ports(3)
    config = TritonConfig(http_port=http, grpc_port=grpc, metrics_port=metrics, model_repository=ROOT / "triton_models")
    spec = launch_spec(config)
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(spec.argv, env=spec.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(config, timeout_s=180, is_alive=lambda: process.poll() is None)
            result = asyncio.run(_measure(config, args.requests))
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(json.dumps(result, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
