"""Measurement 4: the served models in one process with onnxruntime (no services, no Triton): the yardstick.

The monolith runs the same trunk file Triton serves (heads fused) on the same rows the services send for
one request (the whole text, its windows when long, the embedder's head cut), each distinct row once, so
router-added latency divided by its time is the price of the architecture (gRPC, services, Envoy).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.prompts import SIZES, Prompt
from bench.stats import percentiles, spread
from services.common import model_io as io
from services.common.tokenizer import TextTokenizer, Truncation, bucket_width

# Same threading as the Triton stand-in backend (services/models/triton_backend/model.py), so the
# comparison prices the architecture, not a different thread count.
INTRA_OP_THREADS = min(2, os.cpu_count() or 1)


class Monolith:
    """The served trunk as one onnxruntime session, fed by the services' tokenizer and window plan."""

    def __init__(self, repository: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = INTRA_OP_THREADS
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.trunk = ort.InferenceSession(str(repository / io.TRUNK / "1" / "model.onnx"), options,
                                          providers=["CPUExecutionProvider"])
        self.outputs = list(io.TRUNK_OUTPUTS.values())
        self.tokenizer = TextTokenizer.from_repository(repository)

    def one_pass(self, text: str) -> int:
        """One request's model work: every head on each distinct row, once; returns the number of rows."""
        rows: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        for truncation in (Truncation.HEAD_TAIL, Truncation.CHUNKS, Truncation.HEAD):
            batch = self.tokenizer.encode([text], truncation)
            for i in range(len(batch)):
                width = bucket_width(int(batch.attention_mask[i].sum()))
                ids, mask = batch.input_ids[i, :width], batch.attention_mask[i, :width]
                rows.setdefault(ids.tobytes() + mask.tobytes(), (ids, mask))
        # Each row alone, as the served backend runs them (batch-independent int8 outputs).
        for ids, mask in rows.values():
            self.trunk.run(self.outputs, {io.INPUT_IDS: ids[None, :], io.ATTENTION_MASK: mask[None, :]})
        return len(rows)


def monolith_latency(repository: Path, prompts: list[Prompt], rounds: int, iterations: int) -> dict[str, Any]:
    mono = Monolith(repository)
    out: dict[str, Any] = {}
    for size in SIZES:
        texts = [p.text for p in prompts if p.size == size]
        for text in texts:  # warm-up: first runs allocate arenas
            mono.one_pass(text)
        per_round: list[float] = []
        rows: list[int] = []
        for _ in range(rounds):
            samples = []
            for i in range(iterations):
                started = time.perf_counter()
                rows.append(mono.one_pass(texts[i % len(texts)]))
                samples.append((time.perf_counter() - started) * 1000)
            per_round.append(percentiles(samples)["p50"])
        out[size] = {"one_pass": spread(per_round), "rows_mean": round(float(np.mean(rows)), 2)}
        print(f"  monolith {size:>6}: one pass p50 {out[size]['one_pass']['median']} ms "
              f"({out[size]['rows_mean']} rows)", flush=True)
    return out
