"""Cache lookup latency on the embedded Qdrant engine at 1k, 10k and 100k entries (store only, no Triton).

Random unit 384-d vectors stand in for MiniLM embeddings. Two layouts: "scoped" spreads entries over
100 tenants and some conversations (each lookup filters on one scope, like the service does);
"one_scope" puts every entry in the same scope (one tenant, single-turn traffic): the worst case,
where the filter narrows nothing and the engine scans every vector.
Run: .venv/bin/python bench/cache_lookup.py [--sizes 1000 10000 100000] [--lookups 2000] [--quick]
Prints a table and writes bench/results/cache_lookup.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from services.cache.metrics import CacheMetrics
from services.cache.semantic_cache import SemanticCache
from services.cache.store import CacheEntry, ScopeFilter
from services.cache.store_embedded import EmbeddedStore
from services.common.config import CacheConfig
from switchyard.v1 import common_pb2

DIM = 384
TENANTS = 100
CONTEXTS = 20  # earlier-conversation hashes per tenant; most traffic is single-turn (context 0)
RESULTS = Path(__file__).parent / "results" / "cache_lookup.json"


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


ONE_SCOPE = {"tenant": "tenant-0", "fingerprint": "fp-0"}


def scope(rng: np.random.Generator, layout: str) -> dict[str, str]:
    if layout == "one_scope":
        return ONE_SCOPE
    context = 0 if rng.random() < 0.7 else int(rng.integers(1, CONTEXTS))
    return {"tenant": f"tenant-{rng.integers(TENANTS)}", "fingerprint": f"fp-{context}"}


def fill(store: EmbeddedStore, n: int, rng: np.random.Generator,
         layout: str) -> tuple[np.ndarray, list[dict[str, str]], float]:
    vectors = unit_rows(rng, n)
    scopes = [scope(rng, layout) for _ in range(n)]
    body = json.dumps({"object": "chat.completion", "choices": [{"message": {"content": "x" * 600}}]})
    started = time.perf_counter()
    for start in range(0, n, 1000):
        store.upsert([CacheEntry(id=str(uuid.uuid4()), vector=vectors[i], scope=scopes[i], model="m1", category="",
                                 query=f"q{i}", body=body, created_at=float(i))
                      for i in range(start, min(n, start + 1000))])
    return vectors, scopes, time.perf_counter() - started


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def time_searches(store: EmbeddedStore, vectors: np.ndarray, scopes: list[dict[str, str]], lookups: int,
                  rng: np.random.Generator) -> dict[str, float]:
    samples = []
    for k in range(lookups + 50):
        i = int(rng.integers(len(vectors)))
        # Half the lookups are near-duplicates of a stored question (hits), half are new (misses).
        query = vectors[i] if k % 2 else unit_rows(rng, 1)[0]
        started = time.perf_counter()
        store.search(query, ScopeFilter(scopes[i], created_after=0.0), 16, 0.9)
        if k >= 50:  # warm-up
            samples.append(time.perf_counter() - started)
    return percentiles(samples)


class _Precomputed:
    """An embedder that answers instantly, so the full lookup path is timed without Triton."""

    name, dimension = "bench", DIM

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    async def embed(self, texts: list[str]) -> np.ndarray:
        return self.vector[None, :]


async def time_full_lookups(store: EmbeddedStore, vectors: np.ndarray, lookups: int) -> dict[str, float]:
    """What SemanticCache.lookup adds to the engine (scope hashing, executor hop, metrics, match
    selection), timed on a scope that holds no entries so the engine's share is near zero."""
    cache = SemanticCache(CacheConfig(port=0, metrics_port=0, max_entries=10**7), store, _Precomputed(vectors[0]),
                          CacheMetrics(), clock=lambda: 1e9)
    context = common_pb2.RequestContext(messages=[common_pb2.ChatMessage(role="user", text="q")], tenant="tenant-1",
                                        answer_fingerprint="fp-bench")
    samples = []
    for k in range(lookups + 50):
        started = time.perf_counter()
        await cache.lookup(context)
        if k >= 50:
            samples.append(time.perf_counter() - started)
    cache._executor.shutdown()
    return percentiles(samples)


def run_size(size: int, layout: str, lookups: int, rng: np.random.Generator) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        store = EmbeddedStore(Path(folder), "bench", DIM)
        vectors, scopes, fill_s = fill(store, size, rng, layout)
        search = time_searches(store, vectors, scopes, lookups, rng)
        full = asyncio.run(time_full_lookups(store, vectors, lookups)) if layout == "scoped" else None
        started = time.perf_counter()
        store.compact()
        compact_s = time.perf_counter() - started
        store.close()
    row = {"entries": size, "layout": layout, "fill_s": round(fill_s, 2), "compact_s": round(compact_s, 2),
           "search": search}
    line = (f"{size:>7} entries {layout:>9}  fill {fill_s:5.1f}s  search p50 {search['p50_ms']:7.3f} ms "
            f"p99 {search['p99_ms']:7.3f} ms")
    if full is not None:
        row["lookup_overhead"] = full
        line += f"  | lookup overhead p50 {full['p50_ms']:.3f} p99 {full['p99_ms']:.3f} ms"
    print(line, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--lookups", type=int, default=2_000)
    parser.add_argument("--quick", action="store_true", help="1k and 10k entries, 500 lookups")
    args = parser.parse_args()
    sizes, lookups = ([1_000, 10_000], 500) if args.quick else (args.sizes, args.lookups)
    rng = np.random.default_rng(7)
    rows = [run_size(size, layout, lookups, rng) for size in sizes for layout in ("scoped", "one_scope")]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "cache_lookup", "store": "embedded (qdrant-edge-py, no HNSW, keyword payload indexes)",
        "dimension": DIM, "tenants": TENANTS, "lookups_per_size": lookups, "quick": args.quick,
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "machine": platform.machine(),
        "python": platform.python_version(), "results": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
