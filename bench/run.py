"""`make bench`: start the mesh, run every measurement, write bench/results/<timestamp>.{json,md} and plots."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import cache, fanout, guard_load, latency, monolith, quality, throughput
from bench.metrics_scrape import breakdown, scrape
from bench.prompts import load_prompts
from bench.stack import REPO, BenchStack, run_load
from services.models.paths import base_trunk_repository

RESULTS_DIR = REPO / "bench" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="short durations everywhere (a smoke run, ~3 min)")
    p.add_argument("--rounds", type=int, default=3, help="A/B rounds behind every median [min–max]")
    p.add_argument("--latency-s", type=float, default=3.0, help="seconds per path per round per latency cell")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--probe-s", type=float, default=10.0, help="seconds per throughput probe")
    p.add_argument("--probes", type=int, default=5, help="throughput probes before the hold")
    p.add_argument("--hold-s", type=float, default=60.0, help="seconds the best rate must hold")
    p.add_argument("--quality-rows", type=int, default=300, help="dev rows sent through Envoy (of 1,505)")
    p.add_argument("--quality-seed", type=int, default=7)
    p.add_argument("--first-token-ms", type=float, default=20.0, help="the simulator's generation delay")
    p.add_argument("--client-core", type=int, default=None, help="core the load generator is pinned to")
    p.add_argument("--load-s", type=float, default=20.0, help="seconds per cell of the guard load matrix")
    p.add_argument("--skip", nargs="*", default=[], choices=["latency", "throughput", "breakdown", "monolith",
                                                             "fanout", "cache", "quality", "load", "cache_quality"])
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.latency_s, args.probe_s, args.probes, args.hold_s = 2, 1.5, 4.0, 3, 8.0
        args.load_s = 5.0
        args.quality_rows = min(args.quality_rows, 60)
    return args


def machine() -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpus": len(cpus), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_at_start": os.getloadavg()}


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    return proc.stdout.strip() + ("+dirty" if dirty.strip() else "")


def measured_window(stack: BenchStack, action) -> tuple[Any, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Run action() between two scrapes and CPU readings; return its result and the per-stage breakdown."""
    urls = stack.metrics_urls()
    before, cpu_before = scrape(urls), stack.cpu_seconds()
    started = time.perf_counter()
    result = action()
    wall = time.perf_counter() - started
    after, cpu_after = scrape(urls), stack.cpu_seconds()
    window = breakdown(before, after)
    window["cpu_s"] = {k: round(cpu_after[k] - cpu_before.get(k, 0.0), 2) for k in cpu_after}
    window["wall_s"] = round(wall, 2)
    return result, window


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    t0 = time.monotonic()
    prompts = load_prompts()
    cpus = sorted(os.sched_getaffinity(0))
    core = args.client_core if args.client_core is not None else cpus[-1]
    results: dict[str, Any] = {"timestamp": stamp, "commit": git_commit(), "machine": machine(),
                               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "client": {"kind": "bench.httpload (asyncio, raw HTTP/1.1)", "pinned_core": core}}
    skip = set(args.skip)

    def stage(name: str) -> bool:
        if name in skip:
            return False
        print(f"[{time.monotonic() - t0:6.1f}s] {name}", flush=True)
        return True

    workdir = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    print(f"switchyard bench {stamp}: {len(cpus)} CPUs, load generator pinned to core {core}; work dir {workdir}",
          flush=True)
    stack = BenchStack(workdir, args.first_token_ms, 5.0)
    stack.start()
    try:
        results["simulator"] = {"first_token_ms": args.first_token_ms}
        # Warm-up: first requests load lazy paths (Triton arenas, gRPC channels, Qdrant segments).
        from bench.prompts import chat_body
        run_load({"mode": "closed", "url": stack.router_url, "bodies": [chat_body(p.text) for p in prompts],
                  "concurrency": 2, "duration_s": 3.0 if args.quick else 6.0, "core": core,
                  "headers": latency.NO_STORE})
        if stage("breakdown"):
            bodies = [chat_body(p.text) for p in prompts]
            run, window = measured_window(stack, lambda: run_load(
                {"mode": "closed", "url": stack.router_url, "bodies": bodies, "concurrency": 1,
                 "duration_s": args.latency_s * 3, "core": core, "headers": latency.NO_STORE}))
            window["requests"] = len(run["lat_ms"])
            results["breakdown_c1"] = window
        if stage("latency"):
            cells, window = measured_window(stack, lambda: latency.latency_matrix(
                stack, prompts, args.concurrency, args.rounds, args.latency_s, core))
            window["requests"] = sum(c["router_requests"] for c in cells.values())
            results["latency"] = cells
            results["breakdown_latency_phase"] = window
        if stage("fanout"):
            results["fanout"] = fanout.fanout_gain(stack.runner.config_path, args.rounds, 10 if args.quick else 20)
        if stage("cache"):
            texts = [r["text"] for r in quality.dev_rows(quality.DOMAIN_DATA)[-60:]] if quality.DOMAIN_DATA.is_file() \
                else [p.text for p in prompts]
            results["cache"] = cache.hit_vs_miss(stack, texts[: 10 * args.rounds] if args.quick else texts,
                                                 args.rounds, core)
        if stage("quality"):
            results["quality"] = quality.routing_accuracy(stack, quality.DOMAIN_DATA, args.quality_rows,
                                                          args.quality_seed, core)
        if stage("load"):
            results["guard_load"] = guard_load.load_matrix(stack, prompts, args.concurrency, args.load_s, core)
        if stage("throughput"):
            results["throughput"] = throughput.find_max_rate(stack, prompts, args.probe_s, args.hold_s,
                                                             args.probes, core)
    finally:
        stack.stop()
        print(f"[{time.monotonic() - t0:6.1f}s] mesh stopped (logs: {workdir / 'mesh.log'})", flush=True)
    # Without the mesh running, so that neither side steals CPU from the other.
    if stage("monolith"):
        results["monolith"] = monolith.monolith_latency(stack.config.triton.model_repository, prompts,
                                                        args.rounds, 10 if args.quick else 20)
        # The base trunk (models.trunk: base) on the same rows, when `make base-models` has built it: its
        # CPU cost beside the small one's.
        base = base_trunk_repository(REPO / ".switchyard")
        if (base / "trunk" / "1" / "model.onnx").is_file():
            print("  monolith, base trunk", flush=True)
            results["monolith_base"] = monolith.monolith_latency(base, prompts, args.rounds, 5 if args.quick else 10)
    if stage("cache_quality"):
        # Hit rate vs wrong-hit rate on the cache pairs, threshold-only beside threshold + verification.
        proc = subprocess.run([sys.executable, "-m", "bench.cache_quality", "--out", str(args.out)], cwd=REPO,
                              capture_output=True, text=True, check=False)
        print(proc.stdout[-3000:], proc.stderr[-2000:] if proc.returncode else "", flush=True)
        quality_file = args.out / "cache_quality.json"
        if proc.returncode == 0 and quality_file.is_file():
            results["cache_quality"] = {"file": str(quality_file), "plot": str(args.out / "cache_quality.png")}
    if "cache" in results:
        print("  cache lookup by size (bench/cache_lookup.py)", flush=True)
        results["cache"]["lookup_by_size"] = cache.lookup_by_size(args.quick, args.out, 300)
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    write_outputs(results, args.out, stamp)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def write_outputs(results: dict[str, Any], out: Path, stamp: str) -> None:
    from bench import plots, report  # matplotlib is imported only once the measurements are safe on disk

    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1))
    print(f"wrote {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}", flush=True)
    images = plots.write_plots(results, out, stamp)
    markdown = report.markdown(results, images)
    for name in (f"{stamp}.md", "latest.md"):
        (out / name).write_text(markdown)
    print(markdown)
    print(f"done in {results['elapsed_s']:.0f}s: {json_path}, {out / (stamp + '.md')}, "
          + ", ".join(str(p) for p in images), flush=True)


if __name__ == "__main__":
    sys.exit(main())
