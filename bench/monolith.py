"""Measurement 4: the same classifiers in one process with onnxruntime (no services, no Triton)."""

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
from services.common.tokenizer import TextTokenizer, Truncation

# Same threading as the Triton stand-in backend (services/models/triton_backend/model.py), so the
# comparison prices the architecture, not a different thread count.
INTRA_OP_THREADS = min(2, os.cpu_count() or 1)


class Monolith:
    """Encoder + the four heads as plain onnxruntime sessions, fed by the services' tokenizer."""

    def __init__(self, repository: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = INTRA_OP_THREADS
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(name: str) -> ort.InferenceSession:
            return ort.InferenceSession(str(repository / name / "1" / "model.onnx"), options,
                                        providers=["CPUExecutionProvider"])

        self.encoder = session(io.ENCODER)
        self.heads = {name: session(name) for name in (io.DOMAIN_HEAD, io.JAILBREAK_HEAD, io.PII_HEAD,
                                                      io.POOL_NORMALIZE)}
        self.tokenizer = TextTokenizer.from_repository(repository)

    def _encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.encoder.run(None, {io.INPUT_IDS: ids, io.ATTENTION_MASK: mask})[0]

    def _head(self, name: str, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        session = self.heads[name]
        feed = {io.HIDDEN_STATES: hidden}
        if any(i.name == io.ATTENTION_MASK for i in session.get_inputs()):
            feed[io.ATTENTION_MASK] = mask
        return session.run(None, feed)[0]

    def same_work(self, text: str) -> None:
        """What the mesh computes: one encoder pass per task, each with its own truncation policy."""
        for head, truncation in ((io.DOMAIN_HEAD, Truncation.HEAD_TAIL), (io.JAILBREAK_HEAD, Truncation.HEAD_TAIL),
                                 (io.PII_HEAD, Truncation.CHUNKS), (io.POOL_NORMALIZE, Truncation.HEAD)):
            batch = self.tokenizer.encode([text], truncation)
            self._head(head, self._encode(batch.input_ids, batch.attention_mask), batch.attention_mask)

    def shared_encoder(self, text: str) -> None:
        """What a monolith would do: one encoder pass feeding all four heads (PII sees the same window)."""
        batch = self.tokenizer.encode([text], Truncation.HEAD_TAIL)
        hidden = self._encode(batch.input_ids, batch.attention_mask)
        for head in self.heads:
            self._head(head, hidden, batch.attention_mask)


def monolith_latency(repository: Path, prompts: list[Prompt], rounds: int, iterations: int) -> dict[str, Any]:
    mono = Monolith(repository)
    out: dict[str, Any] = {}
    for size in SIZES:
        texts = [p.text for p in prompts if p.size == size]
        for text in texts:  # warm-up: first runs allocate arenas
            mono.same_work(text)
        per_round: dict[str, list[float]] = {"same_work": [], "shared_encoder": []}
        for r in range(rounds):
            order = ("same_work", "shared_encoder") if r % 2 == 0 else ("shared_encoder", "same_work")
            for variant in order:
                fn = getattr(mono, variant)
                samples = []
                for i in range(iterations):
                    started = time.perf_counter()
                    fn(texts[i % len(texts)])
                    samples.append((time.perf_counter() - started) * 1000)
                per_round[variant].append(percentiles(samples)["p50"])
        out[size] = {variant: spread(values) for variant, values in per_round.items()}
        print(f"  monolith {size:>6}: same work p50 {out[size]['same_work']['median']} ms, "
              f"shared encoder p50 {out[size]['shared_encoder']['median']} ms", flush=True)
    return out


class TrunkPass:
    """The shared-trunk layout in one process: the unique rows of a text's window plan, one trunk run,
    every head on its rows (what Triton computes per request once the services' rows coalesce)."""

    def __init__(self, repository: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = INTRA_OP_THREADS
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(name: str) -> ort.InferenceSession:
            return ort.InferenceSession(str(repository / name / "1" / "model.onnx"), options,
                                        providers=["CPUExecutionProvider"])

        self.trunk = session(io.TRUNK)
        self.heads = {name: session(name) for name in (io.DOMAIN_HEAD, io.JAILBREAK_HEAD, io.PII_HEAD,
                                                      io.POOL_NORMALIZE)}
        self.tokenizer = TextTokenizer.from_repository(repository)

    def run(self, text: str) -> int:
        """One request's model work; returns the number of trunk rows computed."""
        whole = self.tokenizer.encode([text], Truncation.HEAD_TAIL)
        windows = self.tokenizer.encode([text], Truncation.CHUNKS)
        rows = {}
        for batch in (whole, windows):
            for i in range(len(batch)):
                n = int(batch.attention_mask[i].sum())
                rows.setdefault(batch.input_ids[i, :n].tobytes(), batch.input_ids[i, :n])
        for ids in rows.values():
            ids = ids[None, :]
            mask = np.ones_like(ids)
            hidden = self.trunk.run(None, {io.INPUT_IDS: ids, io.ATTENTION_MASK: mask})[0]
            for name, session in self.heads.items():
                feed = {io.HIDDEN_STATES: hidden}
                if any(i.name == io.ATTENTION_MASK for i in session.get_inputs()):
                    feed[io.ATTENTION_MASK] = mask
                session.run(None, feed)
        return len(rows)


def trunk_latency(repositories: dict[str, Path], prompts: list[Prompt], iterations: int = 30) -> dict[str, Any]:
    """p50 ms of TrunkPass.run per prompt size for each built trunk repository (e.g. fp32, int8)."""
    out: dict[str, Any] = {}
    for label, repository in repositories.items():
        trunk = TrunkPass(repository)
        for size in SIZES:
            texts = [p.text for p in prompts if p.size == size]
            for text in texts[:3]:
                trunk.run(text)
            samples, rows = [], []
            for i in range(iterations):
                started = time.perf_counter()
                rows.append(trunk.run(texts[i % len(texts)]))
                samples.append((time.perf_counter() - started) * 1000)
            out[f"{label}/{size}"] = {"p50_ms": percentiles(samples)["p50"], "rows_mean": float(np.mean(rows))}
            print(f"  trunk {label} {size:>6}: p50 {out[f'{label}/{size}']['p50_ms']} ms, "
                  f"{np.mean(rows):.1f} trunk rows", flush=True)
    return out


if __name__ == "__main__":
    from bench.prompts import load_prompts

    root = Path(__file__).resolve().parents[1] / ".switchyard"
    trunk_latency({"fp32": root / "trunk-repository-fp32", "int8": root / "trunk-repository-int8"}, load_prompts())
