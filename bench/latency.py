"""Measurement 1: router-added latency, Envoy → simulator vs Envoy → switchyard → simulator, A/B per round."""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.metrics_scrape import degraded_total, scrape
from bench.prompts import SIZES, Prompt, chat_body
from bench.stack import BenchStack, run_load
from bench.stats import percentiles, spread, thin

# Sent on both paths: the cache still looks every request up (a miss), but never stores, so repeated
# prompts stay misses instead of turning into hits that skip the backend.
NO_STORE = {"cache-control": "no-store"}


def _run(stack: BenchStack, url: str, bodies: list[str], concurrency: int, duration_s: float,
         core: int) -> dict[str, Any]:
    return run_load({"mode": "closed", "url": url, "bodies": bodies, "concurrency": concurrency,
                     "duration_s": duration_s, "headers": NO_STORE, "core": core})


def routed_comparison(router: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    """Percentiles over the same prompts on both paths: those the router sent on to the backend.

    Prompts the router blocks (jailbreak, SSN) never reach the backend, so keeping them would make the
    router look faster than Envoy alone; their share is reported instead.
    """
    routed = {i for i, o in zip(router["index"], router["outcome"]) if o == "backend"}
    r_lat = [lat for i, lat, o in zip(router["index"], router["lat_ms"], router["outcome"]) if o == "backend"]
    d_lat = [lat for i, lat, o in zip(direct["index"], direct["lat_ms"], direct["outcome"])
             if o == "backend" and i in routed]
    rp, dp = percentiles(r_lat), percentiles(d_lat)
    added = {k: (round(rp[k] - dp[k], 3) if rp[k] is not None and dp[k] is not None else None) for k in rp}
    outcomes = Counter(router["outcome"])
    return {"router_n": len(router["lat_ms"]), "router": rp, "direct": dp, "added": added, "router_samples": r_lat, "direct_samples": d_lat,
            "router_rps": len(router["lat_ms"]) / router["wall_s"], "direct_rps": len(direct["lat_ms"]) / direct["wall_s"],
            "errors": outcomes.get("error", 0) + Counter(direct["outcome"]).get("error", 0),
            "blocked_share": outcomes.get("blocked", 0) / max(len(router["outcome"]), 1),
            "client_cpu_share": (router["client_cpu_s"] + direct["client_cpu_s"]) / (router["wall_s"] + direct["wall_s"])}


def latency_matrix(stack: BenchStack, prompts: list[Prompt], concurrencies: list[int], rounds: int,
                   duration_s: float, core: int) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    for size in SIZES:
        bodies = [chat_body(p.text) for p in prompts if p.size == size]
        for concurrency in concurrencies:
            per_round = []
            degraded = 0.0
            for r in range(rounds):
                # Alternate which path goes first so that drift (thermal, neighbours) hits both equally.
                order = ("direct", "router") if r % 2 == 0 else ("router", "direct")
                runs: dict[str, Any] = {}
                for path in order:
                    before = degraded_total(scrape({"front": stack.metrics_urls()["front"]})) if path == "router" else 0
                    url = stack.router_url if path == "router" else stack.direct_url
                    runs[path] = _run(stack, url, bodies, concurrency, duration_s, core)
                    if path == "router":
                        degraded += degraded_total(scrape({"front": stack.metrics_urls()["front"]})) - before
                per_round.append(routed_comparison(runs["router"], runs["direct"]))
            cell = {
                "size": size, "concurrency": concurrency,
                **{f"{side}_{p}": spread(rr[side][p] for rr in per_round)
                   for side in ("router", "direct", "added") for p in ("p50", "p95", "p99")},
                "router_rps": spread(rr["router_rps"] for rr in per_round),
                "direct_rps": spread(rr["direct_rps"] for rr in per_round),
                "errors": sum(rr["errors"] for rr in per_round),
                "router_requests": sum(rr["router_n"] for rr in per_round),
                "degraded": int(degraded),
                "blocked_share": round(per_round[0]["blocked_share"], 3),
                "client_cpu_share": spread(rr["client_cpu_share"] for rr in per_round),
                "router_samples": thin([x for rr in per_round for x in rr["router_samples"]]),
                "direct_samples": thin([x for rr in per_round for x in rr["direct_samples"]]),
            }
            cells[f"{size}/c{concurrency}"] = cell
            print(f"  latency {size:>6} c={concurrency:<3} added p50 {cell['added_p50']['median']} ms, "
                  f"p99 {cell['added_p99']['median']} ms; router {cell['router_rps']['median']:.1f} rps; "
                  f"errors {cell['errors']}, degraded {cell['degraded']}", flush=True)
    return cells
