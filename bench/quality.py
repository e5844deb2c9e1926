"""Measurement 7: routing accuracy through the whole path (Envoy → front → decision), from response headers."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from bench.prompts import chat_body
from bench.stack import BenchStack, run_load

DOMAIN_DATA = Path("/work/shared/data/domain.jsonl")
CAPTURE = ["x-vsr-selected-category", "x-vsr-selected-model", "x-vsr-jailbreak-blocked", "x-vsr-pii-violation"]


def dev_rows(path: Path) -> list[dict[str, Any]]:
    return [r for r in (json.loads(line) for line in path.read_text().split("\n") if line.strip())
            if r.get("split") == "dev"]


def routing_accuracy(stack: BenchStack, data: Path, size: int, seed: int, core: int) -> dict[str, Any]:
    if not data.is_file():
        return {"skipped": f"{data} not found"}
    dev = dev_rows(data)
    # A fixed, seeded sample: the same rows on every run with the same seed and data file.
    rows = random.Random(seed).sample(dev, min(size, len(dev)))
    run = run_load({"mode": "list", "url": stack.router_url, "bodies": [chat_body(r["text"], unique=False) for r in rows],
                    "concurrency": 4, "core": core, "headers": {"cache-control": "no-store"},
                    "capture_headers": CAPTURE})
    correct, blocked, missing = 0, 0, 0
    confusion: Counter[tuple[str, str]] = Counter()
    for i, headers, outcome in zip(run["index"], run["headers"], run["outcome"]):
        label = rows[i]["label"]
        got = headers.get("x-vsr-selected-category")
        if outcome == "blocked":
            blocked += 1
        if got is None:
            missing += 1
            continue
        correct += got == label
        if got != label:
            confusion[(label, got)] += 1
    n = len(rows)
    result = {"rows": n, "dev_rows_total": len(dev), "seed": seed, "accuracy": round(correct / n, 4) if n else None,
              "blocked": blocked, "no_category_header": missing,
              "errors": sum(o == "error" for o in run["outcome"]),
              "top_confusions": [{"label": a, "routed_as": b, "count": c} for (a, b), c in confusion.most_common(5)]}
    print(f"  quality: accuracy {result['accuracy']} on {n} dev rows (blocked {blocked}, no header {missing})",
          flush=True)
    return result
