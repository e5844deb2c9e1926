"""Measurement 5: the front's fan-out, decision + guard + cache concurrently vs one after another.

Runs in its own process (`python -m bench.fanout CONFIG ROUNDS ITERATIONS`): grpc.aio binds to one
event loop per process, and the bench process already runs the mesh supervisor's loop in a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.prompts import SIZES, Prompt, chat_body, load_prompts
from bench.stats import percentiles, spread
from services.common.config import SwitchyardConfig, load_config
from services.front.chat_request import parse_chat_request
from services.front.mesh_clients import MeshClients


async def _fanout(config: SwitchyardConfig, prompts: list[Prompt], rounds: int, iterations: int) -> dict[str, Any]:
    # Missed deadlines are counted below; one warning line per failed call would flood the progress output.
    logging.getLogger("switchyard.front").setLevel(logging.ERROR)
    clients = MeshClients(config)
    await clients.start()
    out: dict[str, Any] = {}
    try:
        for size in SIZES:
            texts = [p.text for p in prompts if p.size == size]

            def context(i: int):  # type: ignore[no-untyped-def]
                # A new text every call (the trunk's row cache would answer a repeat from memory); no-store:
                # the cache looks up (a miss, like the latency runs) but the bench leaves no entries.
                ref = "".join(chr(97 + int(c, 16)) for c in uuid.uuid4().hex[:10])  # letters: digits may read as PII
                text = f"{texts[i % len(texts)]} (ref {ref})"
                request = parse_chat_request(chat_body(text, unique=False).encode())
                return request.to_context(uuid.uuid4().hex, "", ["no-store"])

            async def concurrent(i: int) -> bool:
                c = context(i)
                calls = await asyncio.gather(clients.decide(c), clients.check(c), clients.lookup(c))
                return any(call.failed for call in calls)

            async def sequential(i: int) -> bool:
                c = context(i)
                calls = [await clients.decide(c), await clients.check(c), await clients.lookup(c)]
                return any(call.failed for call in calls)

            for i in range(len(texts)):  # warm-up
                await concurrent(i)
            per_round: dict[str, list[float | None]] = {"concurrent": [], "sequential": []}
            failures = 0
            for r in range(rounds):
                variants = (("concurrent", concurrent), ("sequential", sequential))
                for name, fn in (variants if r % 2 == 0 else variants[::-1]):
                    samples = []
                    for i in range(iterations):
                        started = time.perf_counter()
                        failures += await fn(i)
                        samples.append((time.perf_counter() - started) * 1000)
                    per_round[name].append(percentiles(samples)["p50"])
            ratios = [s / c for c, s in zip(per_round["concurrent"], per_round["sequential"]) if c and s]
            out[size] = {**{k: spread(v) for k, v in per_round.items()}, "sequential_over_concurrent": spread(ratios),
                         "failed_calls": failures}
            print(f"  fan-out {size:>6}: concurrent p50 {out[size]['concurrent']['median']} ms, "
                  f"sequential p50 {out[size]['sequential']['median']} ms, failed calls {failures}", file=sys.stderr)
    finally:
        await clients.close()
    return out


def fanout_gain(config_path: Path, rounds: int, iterations: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.fanout", str(config_path), str(rounds), str(iterations)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, check=False)
    sys.stdout.write(proc.stderr)  # its progress lines
    if proc.returncode != 0:
        return {"skipped": f"bench.fanout exited {proc.returncode}"}
    return json.loads(proc.stdout)


if __name__ == "__main__":
    result = asyncio.run(_fanout(load_config(Path(sys.argv[1])), load_prompts(), int(sys.argv[2]), int(sys.argv[3])))
    json.dump(result, sys.stdout)
