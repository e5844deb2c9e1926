"""Guard latency benchmark: p50/p99 of one guard check for a 30-token and a 2,000-character prompt.

Runs against a local tritonserver (started here from the model repository on free ports, or an
already running one with --triton-grpc/--triton-http) and measures two paths:
  check  RequestGuard.check in-process (tokenize, Triton jailbreak + PII tagger, patterns, merge)
  grpc   the same through the guard's gRPC servicer on loopback (what the front pays, minus network)
Prints a table and writes bench/results/guard_latency.json.

    .venv/bin/python bench/guard_latency.py [--iterations 200] [--warmup 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from services.common.config import GuardConfig, TritonConfig  # noqa: E402
from services.common.tokenizer import Truncation  # noqa: E402
from services.common.triton import TritonModels  # noqa: E402
from services.common.triton_server import launch_spec, wait_until_ready  # noqa: E402
from services.guard.check import RequestGuard  # noqa: E402
from services.guard.metrics import GuardMetrics  # noqa: E402
from services.guard.server import GuardServicer  # noqa: E402
from switchyard.v1 import common_pb2, guard_pb2, guard_pb2_grpc  # noqa: E402
from tests.conftest import free_ports  # noqa: E402

RESULTS = REPO / "bench" / "results" / "guard_latency.json"

# About 30 word pieces with the MiniLM tokenizer.
SHORT = ("Can you explain how a hash map handles collisions in practice, and when I should prefer a balanced "
         "tree map instead for my small in-memory cache layer?")
_PARAGRAPH = (
    "Our team is migrating the billing service from a monolith to separate services. The invoice "
    "generator reads orders, applies discounts and taxes per region, and writes PDF files to storage. "
    "We want to keep the public API stable while moving the tax rules into their own module. "
)


def long_prompt(chars: int = 2000) -> str:
    text = ""
    while len(text) < chars - 60:
        text += _PARAGRAPH
    return (text[: chars - 60].rsplit(" ", 1)[0] + " Please review this plan and list the main risks.")[:chars]


@contextmanager
def local_triton(repository: Path):
    """A tritonserver on free loopback ports for the duration of the benchmark."""
    http, grpc_port, metrics = free_ports(3)
    config = TritonConfig(http_port=http, grpc_port=grpc_port, metrics_port=metrics, model_repository=repository)
    spec = launch_spec(config)
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(spec.argv, env=spec.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(config, 180, is_alive=lambda: process.poll() is None)
            yield config
        except Exception:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered), 2), "p90_ms": round(at(0.90), 2),
            "p99_ms": round(at(0.99), 2), "mean_ms": round(statistics.fmean(ordered), 2),
            "max_ms": round(ordered[-1], 2), "n": len(ordered)}


async def measure(call, warmup: int, iterations: int) -> dict[str, float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples)


async def run(triton: TritonConfig, warmup: int, iterations: int) -> dict:
    guard_config = GuardConfig(port=0, metrics_port=0)
    models = TritonModels.from_config(triton)
    metrics = GuardMetrics()
    guard = RequestGuard(guard_config, models, models, models, metrics)
    server = grpc.aio.server()
    guard_pb2_grpc.add_GuardServicer_to_server(GuardServicer(guard, metrics), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = guard_pb2_grpc.GuardStub(channel)
    prompts = {"short_30_tokens": SHORT, "long_2000_chars": long_prompt()}
    results: dict = {}
    try:
        for name, text in prompts.items():
            messages = [common_pb2.ChatMessage(role="user", text=text)]
            request = guard_pb2.CheckRequest(request=common_pb2.RequestContext(request_id="bench", messages=messages))
            # The jailbreak windows are the PII tagger's CHUNKS rows (one row: scored whole only).
            windows = len(models._tokenizer.encode([text], Truncation.CHUNKS))
            results[name] = {
                "chars": len(text), "jailbreak_windows": windows,
                "check": await measure(lambda: guard.check(messages), warmup, iterations),
                "grpc": await measure(lambda: stub.Check(request, timeout=10), warmup, iterations),
            }
    finally:
        await channel.close()
        await server.stop(None)
        await models.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repository", type=Path, default=REPO / "triton_models")
    parser.add_argument("--triton-grpc", type=int, help="use a running Triton: its gRPC port (127.0.0.1)")
    parser.add_argument("--triton-http", type=int, default=8000, help="with --triton-grpc: its HTTP port")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    repository = args.repository.resolve()
    if args.triton_grpc:
        triton = TritonConfig(http_port=args.triton_http, grpc_port=args.triton_grpc, model_repository=repository)
        results = asyncio.run(run(triton, args.warmup, args.iterations))
    else:
        with local_triton(repository) as triton:
            results = asyncio.run(run(triton, args.warmup, args.iterations))

    report = {
        "benchmark": "guard_latency",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "triton": "local tritonserver (nvidia-pytriton wheel, Python backend, onnxruntime on CPU)",
        "iterations": args.iterations, "warmup": args.warmup, "sequential": True,
        "results": results,
    }
    print(f"{'prompt':<18} {'path':<6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}  windows")
    for name, entry in results.items():
        for path in ("check", "grpc"):
            r = entry[path]
            print(f"{name:<18} {path:<6} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                  f"{r['mean_ms']:>8.2f}  {entry['jailbreak_windows']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
