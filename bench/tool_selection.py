"""Tool auto-selection quality: recall of the needed tool among the kept ones, and the tool tokens saved.

Dev set: bench/data/tool_selection_dev.jsonl — 106 questions of the Berkeley Function Calling Leaderboard
(BFCL v3 "simple", Apache-2.0, github.com/ShishirPatil/gorilla), each with the one function it needs (name and
description; the parameters are left out). A request is built per question: its needed tool plus N-1 tools
of other questions (distinct names), shuffled; the selection runs exactly as in the front (tool_text, choose)
with the cache service's ranker (ToolRanker) on the real Triton `embedder` (all-MiniLM-L6-v2). Many
distractors are near-duplicates (five hotel bookings, eight probability tools, six sports rankings).

    .venv/bin/python -m bench.tool_selection [--sizes 20 50 100] [--seeds 3] [--triton-grpc-port 8001]

Triton at the given port is used when it answers; otherwise one is started from triton_models/ for the run.
Tokens: estimated (services/common/text_units) over the tools' JSON as a client sends them, each with a
two-argument parameters schema standing in for the real one — so the saving is a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from services.cache.embedder import TritonEmbedder
from services.cache.tool_ranker import ToolRanker
from services.common.config import TritonConfig
from services.common.text_units import estimate_tokens
from services.common.triton_server import launch_spec, wait_until_ready
from services.front.apis.base import ToolRef
from services.front.tool_selection import choose, tool_text

REPO = Path(__file__).resolve().parent.parent
DEV_SET = REPO / "bench" / "data" / "tool_selection_dev.jsonl"
RESULTS = REPO / "bench" / "results" / "tool_selection.json"
PARAMETERS = {"type": "object", "properties": {"value": {"type": "string", "description": "What to act on."},
                                               "options": {"type": "string", "description": "Optional settings."}},
              "required": ["value"]}


def load_dev_set(path: Path = DEV_SET) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tool_json(tool: dict[str, str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": tool["name"], "description": tool["description"],
                                             "parameters": PARAMETERS}}


def requests(rows: list[dict[str, Any]], size: int, seed: int) -> list[tuple[str, list[dict[str, str]], int]]:
    """(question, tools, index of the needed tool) per row."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        others = [r["tool"] for r in rows if r["tool"]["name"] != row["tool"]["name"]]
        tools = [row["tool"], *rng.sample(others, min(size - 1, len(others)))]
        rng.shuffle(tools)
        out.append((row["question"], tools, tools.index(row["tool"])))
    return out


async def evaluate(ranker: ToolRanker, rows: list[dict[str, Any]], sizes: list[int], seeds: int,
                   top_ks: list[int], thresholds: list[float]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for size in sizes:
        cases = [case for seed in range(seeds) for case in requests(rows, size, seed)]
        scored, latencies = [], []
        for question, tools, needed in cases:
            texts = [tool_text(t["name"], t["description"]) for t in tools]
            started = time.perf_counter()
            scores = await ranker.rank(question, [(text, text) for text in texts])
            latencies.append((time.perf_counter() - started) * 1000)
            scored.append((tools, needed, scores))
        # Once the tools are known (after the first 20 requests), a request costs its query's encoding; only
        # the first size's first seed has queries not seen before (an embedder may remember recent texts).
        fresh = sorted(latencies[20:len(rows)]) if size == sizes[0] else []
        by_setting: dict[str, Any] = {}
        for k in top_ks:
            for threshold in thresholds:
                hits, kept_total, sent_tokens, kept_tokens = 0, 0, 0, 0
                for tools, needed, scores in scored:
                    refs = [ToolRef(i, t["name"], t["description"]) for i, t in enumerate(tools)]
                    keep = choose(refs, dict(enumerate(scores)), k, threshold, set())
                    hits += needed in keep
                    kept_total += len(keep)
                    sent_tokens += estimate_tokens(json.dumps([tool_json(t) for t in tools]))
                    kept_tokens += estimate_tokens(json.dumps([tool_json(tools[i]) for i in keep]))
                by_setting[f"k={k},threshold={threshold}"] = {
                    "recall": round(hits / len(scored), 4), "mean_kept": round(kept_total / len(scored), 2),
                    "tool_tokens_per_request": round(sent_tokens / len(scored)),
                    "tool_tokens_saved_per_request": round((sent_tokens - kept_tokens) / len(scored)),
                    "tool_tokens_saved_share": round(1 - kept_tokens / sent_tokens, 4)}
        timing = {"rank_ms_p50": round(fresh[len(fresh) // 2], 1),
                  "rank_ms_p95": round(fresh[int(len(fresh) * 0.95)], 1)} if fresh else {}
        report[f"{size}_tools"] = {"requests": len(scored), **timing, **by_setting}
    return report


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--top-k", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    parser.add_argument("--triton-grpc-port", type=int, default=8001)
    parser.add_argument("--triton-http-port", type=int, default=8000)
    args = parser.parse_args()
    config = TritonConfig(grpc_port=args.triton_grpc_port, http_port=args.triton_http_port,
                          model_repository=REPO / "triton_models", timeout_ms=30000)
    process = None
    try:
        wait_until_ready(config, timeout_s=2)
    except Exception:  # noqa: BLE001 - not running: start one for this run
        spec = launch_spec(config)
        log = tempfile.NamedTemporaryFile("w+", prefix="tritonserver-", suffix=".log", delete=False)
        process = subprocess.Popen(spec.argv, env=spec.env, stdout=log, stderr=subprocess.STDOUT)
        wait_until_ready(config, timeout_s=180, is_alive=lambda: process.poll() is None)
    embedder = TritonEmbedder(config)
    try:
        rows = load_dev_set()
        report = await evaluate(ToolRanker(embedder), rows, args.sizes, args.seeds, args.top_k, args.thresholds)
    finally:
        await embedder.close()
        if process is not None:
            process.terminate()
            process.wait(30)
    result = {"dev_set": str(DEV_SET.relative_to(REPO)), "questions": len(rows),
              "source": rows[0]["source"], "license": rows[0]["license"], "seeds": args.seeds, "results": report}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
