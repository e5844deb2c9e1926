"""`make soak`: the mesh under a steady realistic mix for a long time — errors, p99 drift, memory, fds, tasks.

1. Start the whole mesh (its own Triton) on free ports; warm it up.
2. Measure the maximum throughput of the mix (closed loop, 16 clients, answered requests/s).
3. Send the mix open-loop at `--utilization` (80 %) of it for `--duration-s` (600), sampling every
   process's resident memory (with its children: Triton's backend stubs), open fds and the front's
   asyncio tasks every 5 s.
4. Judge: 0 errors other than 429 (503, 5xx, transport errors all count), p99 of the last minute
   within 1.3x the first (after warm-up), RSS growth after warm-up <= 5 %, and idle after the run as
   idle before it: the router's open fds (Envoy's follow the client's connections) and the front's
   asyncio tasks.

The mix: short and long prompts (up to 6,000 characters), streaming, every 10th request a jailbreak,
PII, and repeated questions from a tenant (cache hits). Results: bench/results/soak-<stamp>.{json,md}.

    .venv/bin/python -m bench.soak                      # 10 minutes
    .venv/bin/python -m bench.soak --duration-s 60      # the CI version (tests/e2e/test_soak.py)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.guard_load import DAN, PADDING
from bench.stack import REPO, run_load
from tests.conftest import config_on_free_ports
from tests.mesh_runner import MeshRunner

RESULTS_DIR = REPO / "bench" / "results"
SAMPLE_EVERY_S = 5.0
TENANT = {"x-user-id": "soak"}


def mix() -> list[str]:
    """The request bodies, in the order they are sent (cycled)."""
    short = ["Solve 3x+5=20", "What are the legal elements of a valid contract under common law?", "Explain photosynthesis briefly",
             "Write a Python function that checks whether a string is a palindrome",
             "What caused the French Revolution?", "How does compound interest work?"]
    medium = [("Please review this plan for a small bakery: we want to open a second shop, hire two bakers, "
               "buy an oven and advertise online. ") * 6,
              ("Summarise the main causes of the First World War, the alliances involved and the events of July "
               "1914, for a school essay. ") * 6]
    long_text = (PADDING * 60)[:6000]
    pii = "My name is John Smith and my email is john.smith@example.com; draft a polite complaint letter."
    bodies: list[str] = []
    for i in range(40):
        if i % 10 == 9:
            text, stream = DAN, False
        elif i % 10 == 4:
            text, stream = pii, False
        elif i % 10 == 7:
            text, stream = long_text + f" Question {i}: summarise the forecast.", False
        elif i % 5 == 2:
            text, stream = medium[i % 2], True
        else:
            text, stream = short[i % len(short)], i % 3 == 0  # repeats: cache hits for the tenant
        bodies.append(json.dumps({"model": "MoM", "stream": stream, "messages": [{"role": "user", "content": text}]}))
    return bodies


def process_tree_sample(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    """RSS (MB) and open fds of each named process with all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out = {}
    for name, pid in pids.items():
        stack, rss, fds = [pid], 0.0, 0
        while stack:
            current = stack.pop()
            stack.extend(children.get(current, []))
            try:
                rss += int((Path("/proc") / str(current) / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                fds += len(os.listdir(f"/proc/{current}/fd"))
            except OSError:
                continue
        out[name] = {"rss_mb": round(rss / 2**20, 1), "fds": fds}
    return out


def front_tasks(metrics_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", trust_env=False).text
    for line in text.splitlines():
        if line.startswith("switchyard_front_asyncio_tasks "):
            return float(line.split()[1])
    return -1.0


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def idle_sample(pids: dict[str, int], metrics_port: int, settle_s: float = 3.0) -> dict[str, Any]:
    """fds and tasks with nothing in flight (after `settle_s` for stragglers and cache writes): a leak is
    what stays; a busy moment's connections and requests are not."""
    time.sleep(settle_s)
    processes = process_tree_sample(pids)
    return {"fds": sum(p["fds"] for name, p in processes.items() if name != "envoy"),
            "front_tasks": front_tasks(metrics_port)}


def judge(run: dict[str, Any], samples: list[dict[str, Any]], duration_s: float, p99_ratio_limit: float,
          warmup_s: float, idle_before: dict[str, Any], idle_after: dict[str, Any]) -> dict[str, Any]:
    statuses = run["status"]
    errors = sum(1 for s in statuses if s not in (200, 429))
    window = min(60.0, duration_s / 3)
    answered = [(t, lat) for t, lat, s in zip(run["sent_s"], run["lat_ms"], statuses) if s == 200]
    first = [lat for t, lat in answered if warmup_s <= t < warmup_s + window]
    last = [lat for t, lat in answered if t >= duration_s - window]
    p99_first, p99_last = percentile(first, 0.99), percentile(last, 0.99)
    warm = [s for s in samples if s["t"] >= warmup_s] or samples
    rss = [sum(p["rss_mb"] for p in s["processes"].values()) for s in warm]
    # Envoy's fds follow the client's connection pool (the open-loop client opens a connection whenever
    # none is idle), so they are reported but not judged; a leak in the router's processes would show here.
    fds = [sum(p["fds"] for name, p in s["processes"].items() if name != "envoy") for s in warm]
    envoy_fds = [s["processes"].get("envoy", {}).get("fds", 0) for s in warm]
    tasks = [s["front_tasks"] for s in warm]
    verdict = {
        "requests": len(statuses), "status": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "errors_other_than_429": errors,
        "p99_first_ms": round(p99_first, 1), "p99_last_ms": round(p99_last, 1),
        "p99_ratio": round(p99_last / p99_first, 2) if p99_first else None,
        "rss_mb_after_warmup": round(rss[0], 1), "rss_mb_end": round(rss[-1], 1), "rss_max_mb": round(max(rss), 1),
        "rss_growth": round(rss[-1] / rss[0] - 1, 4) if rss[0] else None,
        "fds_after_warmup": fds[0], "fds_end": fds[-1], "envoy_fds_after_warmup": envoy_fds[0],
        "envoy_fds_end": envoy_fds[-1], "tasks_after_warmup": tasks[0], "tasks_end": tasks[-1],
        "idle_before": idle_before, "idle_after": idle_after,
    }
    # A few fds/tasks of slack: connections and requests in flight at the instant of a sample.
    verdict["checks"] = {
        "no_errors": errors == 0,
        "p99_stable": verdict["p99_ratio"] is not None and verdict["p99_ratio"] <= p99_ratio_limit,
        "rss_growth_le_5pct": verdict["rss_growth"] is not None and verdict["rss_growth"] <= 0.05,
        # Idle before vs idle after the run: what a leak leaves behind (a few of slack for gRPC's own).
        "fds_flat": idle_after["fds"] <= idle_before["fds"] + 4,
        "tasks_flat": idle_after["front_tasks"] <= idle_before["front_tasks"] + 4,
    }
    verdict["passed"] = all(verdict["checks"].values())
    return verdict


def soak(duration_s: float, utilization: float, workdir: Path, p99_ratio_limit: float = 1.3,
         rate: float | None = None, log: Any = print) -> dict[str, Any]:
    runner = MeshRunner(config_on_free_ports({"telemetry": {"log_level": "warning"}}), workdir / "mesh")
    runner.start(timeout_s=240)
    core = sorted(os.sched_getaffinity(0))[-1]
    url = f"{runner.envoy_url}/v1/chat/completions"
    bodies = mix()
    try:
        run_load({"mode": "closed", "url": url, "bodies": bodies, "concurrency": 4, "duration_s": 8.0, "core": core,
                  "headers": TENANT})
        if rate is None:
            probe = run_load({"mode": "closed", "url": url, "bodies": bodies, "concurrency": 16, "duration_s": 10.0,
                              "core": core, "headers": TENANT})
            max_rate = sum(1 for s in probe["status"] if s == 200) / probe["wall_s"]
            rate = round(max(1.0, utilization * max_rate), 1)
            log(f"soak: maximum {max_rate:.1f} answered/s on the mix; sending {rate} req/s for {duration_s:.0f} s")
        else:
            max_rate = None
        pids = {name: p.pid for name, p in runner.mesh.processes.items()}
        samples: list[dict[str, Any]] = []
        result: dict[str, Any] = {}
        job = {"mode": "open", "url": url, "bodies": bodies, "rate": rate, "duration_s": duration_s, "core": core,
               "headers": TENANT, "times": True}
        worker = threading.Thread(target=lambda: result.update(run_load(job)), daemon=True)
        idle_before = idle_sample(pids, runner.config.front.metrics_port)
        started = time.monotonic()
        worker.start()
        while worker.is_alive():
            samples.append({"t": round(time.monotonic() - started, 1), "processes": process_tree_sample(pids),
                            "front_tasks": front_tasks(runner.config.front.metrics_port)})
            log(f"  t={samples[-1]['t']:6.1f}s rss "
                f"{sum(p['rss_mb'] for p in samples[-1]['processes'].values()):7.1f} MB  "
                f"fds {sum(p['fds'] for p in samples[-1]['processes'].values()):4d}  tasks {samples[-1]['front_tasks']:.0f}")
            worker.join(SAMPLE_EVERY_S)
        idle_after = idle_sample(pids, runner.config.front.metrics_port)
        warmup_s = min(60.0, duration_s / 4)
        verdict = judge(result, samples, duration_s, p99_ratio_limit, warmup_s, idle_before, idle_after)
        verdict.update(rate=rate, max_rate=round(max_rate, 1) if max_rate else None, duration_s=duration_s,
                       restarts=dict(runner.mesh.restarts), client_cpu_s=result.get("client_cpu_s"))
        return {"verdict": verdict, "samples": samples}
    finally:
        (workdir / "mesh.log").write_text(runner.log_text())
        runner.stop()


def markdown(report: dict[str, Any], stamp: str) -> str:
    v = report["verdict"]
    lines = [f"## switchyard soak {stamp}", "",
             f"{v['duration_s']:.0f} s at {v['rate']} req/s ({'80 % of ' + str(v['max_rate']) + ' answered/s max' if v['max_rate'] else 'fixed rate'}); "
             f"{v['requests']} requests: {v['status']}", "",
             "| check | result |", "|---|---|"]
    for name, ok in v["checks"].items():
        lines.append(f"| {name} | {'pass' if ok else '**FAIL**'} |")
    lines += ["", f"p99 first/last window: {v['p99_first_ms']} / {v['p99_last_ms']} ms (ratio {v['p99_ratio']}); "
                  f"RSS {v['rss_mb_after_warmup']} -> {v['rss_mb_end']} MB (max {v['rss_max_mb']}, growth "
                  f"{v['rss_growth']:.1%}); fds (router processes) {v['fds_after_warmup']} -> {v['fds_end']}, Envoy's "
                  f"{v['envoy_fds_after_warmup']} -> {v['envoy_fds_end']} (client connections); idle before/after the run: "
                  f"fds {v['idle_before']['fds']} / {v['idle_after']['fds']}, front tasks "
                  f"{v['idle_before']['front_tasks']:.0f} / {v['idle_after']['front_tasks']:.0f}; restarts "
                  f"{v['restarts'] or 'none'}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--utilization", type=float, default=0.8)
    parser.add_argument("--rate", type=float, default=None, help="fixed req/s instead of measuring the maximum")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-soak-"))
    report = soak(args.duration_s, args.utilization, workdir, rate=args.rate)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"soak-{stamp}.json").write_text(json.dumps(report, indent=1))
    text = markdown(report, stamp)
    (args.out / f"soak-{stamp}.md").write_text(text)
    print(text)
    print(f"wrote {args.out / f'soak-{stamp}.json'} (mesh log: {workdir / 'mesh.log'})")
    return 0 if report["verdict"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

