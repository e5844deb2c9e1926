"""Measurement 6: a cache hit vs a miss that reaches the simulator, and lookup latency by cache size."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.prompts import chat_body
from bench.stack import REPO, BenchStack, run_load
from bench.stats import percentiles, spread

CACHE_LOOKUP_SCRIPT = REPO / "bench" / "cache_lookup.py"  # owned by the cache helper; called, not edited


TENANT = {"x-user-id": "bench"}


def hit_vs_miss(stack: BenchStack, texts: list[str], rounds: int, core: int) -> dict[str, Any]:
    """Each round: fresh prompts once (misses, answered by the simulator and stored), then again (hits)."""
    per_round: dict[str, list[float | None]] = {"miss": [], "hit": []}
    hit_ratio = []
    chunk = max(len(texts) // rounds, 1)
    for r in range(rounds):
        bodies = [chat_body(t, unique=False) for t in texts[r * chunk:(r + 1) * chunk]]
        # A tenant: anonymous requests bypass the cache by default (cache.anonymous: bypass).
        miss = run_load({"mode": "list", "url": stack.router_url, "bodies": bodies, "concurrency": 1,
                         "core": core, "capture_headers": ["x-vsr-cache-hit"], "headers": TENANT})
        time.sleep(1.0)  # stores are written behind the response; give the write queue time to land them
        hit = run_load({"mode": "list", "url": stack.router_url, "bodies": bodies, "concurrency": 1,
                        "core": core, "capture_headers": ["x-vsr-cache-hit"], "headers": TENANT})
        per_round["miss"].append(percentiles([x for x, o in zip(miss["lat_ms"], miss["outcome"]) if o == "backend"])["p50"])
        per_round["hit"].append(percentiles([x for x, o in zip(hit["lat_ms"], hit["outcome"]) if o == "hit"])["p50"])
        hit_ratio.append(sum(o == "hit" for o in hit["outcome"]) / max(len(bodies), 1))
    result = {k: spread(v) for k, v in per_round.items()}
    result["hit_ratio_on_repeat"] = spread(hit_ratio)
    result["simulator_first_token_ms"] = stack.config.simulator.first_token_ms
    print(f"  cache: hit p50 {result['hit']['median']} ms vs miss p50 {result['miss']['median']} ms "
          f"(simulator delay {result['simulator_first_token_ms']} ms, repeat hit ratio "
          f"{result['hit_ratio_on_repeat']['median']})", flush=True)
    return result


def lookup_by_size(quick: bool, out_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Runs the cache helper's bench/cache_lookup.py when it exists; its JSON is kept as it wrote it."""
    if not CACHE_LOOKUP_SCRIPT.is_file():
        return {"skipped": f"{CACHE_LOOKUP_SCRIPT.relative_to(REPO)} does not exist yet"}
    # The script has no --quick; smaller sizes and fewer lookups keep `make bench` inside its budget.
    sizes = ["1000", "10000"] if quick else ["1000", "10000", "100000"]
    argv = [sys.executable, str(CACHE_LOOKUP_SCRIPT), "--sizes", *sizes, "--lookups", "200" if quick else "500"]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False)
    result: dict[str, Any] = {"command": " ".join(argv[1:]), "returncode": proc.returncode,
                              "wall_s": round(time.monotonic() - started, 1), "stdout": proc.stdout[-4000:]}
    if proc.returncode != 0:
        result["stderr"] = proc.stderr[-2000:]
    for candidate in sorted((REPO / "bench" / "results").glob("cache_lookup.json")):
        if candidate.stat().st_mtime < time.time() - (time.monotonic() - started):
            continue  # an older file (another run's): not this run's numbers
        try:
            result["data"] = json.loads(candidate.read_text())
            result["data_file"] = str(candidate.relative_to(REPO))
        except ValueError:
            pass
    return result
