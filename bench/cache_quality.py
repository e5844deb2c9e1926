"""Cache answer quality on cache_pairs.jsonl: hits on "same" pairs against wrong hits on "different" ones.

Each pair is a stored question `a` and an asked question `b`. Similarities come from the real embedder
(all-MiniLM-L6-v2 through Triton), computed once and kept in .switchyard/cache_pairs_minilm.npz (a
tritonserver is started on free loopback ports only for texts not in that file). Two caches are compared:

- threshold only (the cache before verification): a hit when similarity >= t;
- threshold + verification (services/cache/verify.py): a hit when the verifier shows the two ask the same and
  the similarity reaches the threshold of that kind of agreement (cache.lexical_threshold for the same
  words or a self-correction, cache.similarity_threshold for a paraphrase).

Thresholds are tuned on the train rows with commercial_ok: true (the most hits with a wrong-hit rate of at
most --max-wrong) and reported on dev, which is never tuned on (a held-out split judges it). The curve is
hit rate against wrong-hit rate over thresholds, per split.

Run: .venv/bin/python -m bench.cache_quality [--data PATH] [--max-wrong 0.005]
Writes bench/results/cache_quality.json and bench/results/cache_quality.png.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.cache.embedder import TritonEmbedder
from services.cache.verify import EDIT_RATIO, Agreement, verify
from services.common.config import CacheConfig, TritonConfig
from services.common.triton_server import launch_spec, wait_until_ready

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "cache_pairs.jsonl"
EMBEDDINGS = REPO / ".switchyard" / "cache_pairs_minilm.npz"
RESULTS = REPO / "bench" / "results"
TODAY_THRESHOLD = 0.9  # the similarity_threshold of the cache before verification
# Finer near 1, where threshold-only caches have to sit to stay clear of look-alikes.
GRID = sorted({round(float(x), 3) for x in [*np.arange(0.5, 0.99, 0.01), *np.arange(0.99, 1.0001, 0.001)]})
EMBED_BATCH = 64


# -- embeddings ---------------------------------------------------------------------------------------------

def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def load_vectors(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path) as data:
        return dict(zip(data["keys"].tolist(), data["vectors"]))


def save_vectors(path: Path, vectors: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(vectors)
    np.savez(path, keys=np.array(keys), vectors=np.stack([vectors[k] for k in keys]))


async def _embed(config: TritonConfig, texts: list[str], vectors: dict[str, np.ndarray], path: Path) -> None:
    embedder = TritonEmbedder(config)
    try:
        for start in range(0, len(texts), EMBED_BATCH):
            chunk = texts[start:start + EMBED_BATCH]
            for text, vector in zip(chunk, await embedder.embed(chunk)):
                vectors[_key(text)] = vector.astype(np.float32)
            if start // EMBED_BATCH % 40 == 0:
                print(f"  embedded {start + len(chunk)}/{len(texts)}", flush=True)
                save_vectors(path, vectors)
    finally:
        await embedder.close()
        save_vectors(path, vectors)


def embeddings(texts: Iterable[str], path: Path = EMBEDDINGS) -> dict[str, np.ndarray]:
    """Text hash -> MiniLM vector for every text; the missing ones are embedded by a local tritonserver."""
    vectors = load_vectors(path)
    todo = sorted({t for t in texts if _key(t) not in vectors})
    if not todo:
        return vectors
    print(f"  {len(todo)} texts to embed through Triton (kept in {path})", flush=True)
    http_port, grpc_port, metrics_port = _free_ports(3)
    config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          model_repository=REPO / "triton_models", timeout_ms=60000)
    spec = launch_spec(config)
    with tempfile.NamedTemporaryFile("w+", prefix="tritonserver-", suffix=".log") as log:
        process = subprocess.Popen(spec.argv, env=spec.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(config, timeout_s=300, models=("embedder",), is_alive=lambda: process.poll() is None)
            asyncio.run(_embed(config, todo, vectors, path))
        finally:
            process.terminate()
            process.wait(60)
    return vectors


# -- pairs -------------------------------------------------------------------------------------------------

@dataclass
class Pair:
    row: dict[str, Any]
    similarity: float
    agreement: Agreement | None
    rejection: str

    @property
    def same(self) -> bool:
        return self.row["label"] == "same"

    @property
    def source(self) -> str:
        return self.row["source"]


def load_pairs(data: Path, vectors: dict[str, np.ndarray]) -> list[Pair]:
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    pairs = []
    for r in rows:
        similarity = float(vectors[_key(r["a"])] @ vectors[_key(r["b"])])
        verdict = verify(r["b"], r["a"])  # b asks, a is stored
        pairs.append(Pair(r, similarity, verdict.agreement,
                          verdict.rejection.value if verdict.rejection else ""))
    return pairs


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def neighbour_pairs(pairs: list[Pair], vectors: dict[str, np.ndarray]) -> list[Pair]:
    """For each question, its nearest question of another pair group: what a populated cache would offer
    instead of the question's own rewording. Counted as "different" (a few are duplicates across groups, so
    the rate is an upper bound)."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        parent[root(_normalized(p.row["a"]))] = root(_normalized(p.row["b"]))
    texts = sorted({t for p in pairs for t in (p.row["a"], p.row["b"])})
    matrix = np.stack([vectors[_key(t)] for t in texts])
    groups = np.array([hash(root(_normalized(t))) for t in texts])
    out = []
    for start in range(0, len(texts), 1024):
        block = matrix[start:start + 1024] @ matrix.T
        block[groups[start:start + 1024, None] == groups[None, :]] = -1.0
        for offset, j in enumerate(block.argmax(axis=1)):
            asked, stored = texts[start + offset], texts[int(j)]
            verdict = verify(asked, stored)
            out.append(Pair({"a": stored, "b": asked, "label": "different", "kind": "neighbour",
                             "source": "neighbour"}, float(block[offset, j]), verdict.agreement,
                            verdict.rejection.value if verdict.rejection else ""))
    return out


def threshold_only_hit(pair: Pair, threshold: float) -> bool:
    return pair.similarity >= threshold


def verified_hit(pair: Pair, lexical: float, paraphrase: float) -> bool:
    if pair.agreement is None:
        return False
    needed = paraphrase if pair.agreement is Agreement.PARAPHRASE else lexical
    return pair.similarity >= needed


def rates(pairs: list[Pair], hit) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    same = [p for p in pairs if p.same]
    different = [p for p in pairs if not p.same]
    hits = sum(hit(p) for p in same)
    wrong = sum(hit(p) for p in different)
    return {"same": len(same), "hits": hits, "hit_rate": round(hits / len(same), 4) if same else None,
            "different": len(different), "wrong_hits": wrong,
            "wrong_hit_rate": round(wrong / len(different), 4) if different else None}


def tune(train: list[Pair], neighbours: list[Pair], max_wrong: float) -> dict[str, float]:
    """The thresholds with the most train hits at a wrong-hit rate of at most max_wrong, on the pairs and on
    the nearest neighbours alike; of those within 0.1 % of the most hits, the highest (a margin for free)."""
    feasible: list[tuple[int, float, float]] = []
    for lexical in GRID:
        for paraphrase in [*GRID, 1.01]:  # 1.01: paraphrases never hit
            r = rates(train, lambda p: verified_hit(p, lexical, paraphrase))
            if r["wrong_hit_rate"] > max_wrong:
                continue
            if rates(neighbours, lambda p: verified_hit(p, lexical, paraphrase))["wrong_hit_rate"] > max_wrong:
                continue
            feasible.append((r["hits"], lexical, paraphrase))
    most = max(hits for hits, _, _ in feasible)
    tolerance = int(0.001 * sum(p.same for p in train))
    _, lexical, paraphrase = max((f for f in feasible if f[0] >= most - tolerance), key=lambda f: (f[1] + f[2], f[2]))
    return {"lexical_threshold": lexical, "similarity_threshold": paraphrase}


def tune_threshold_only(train: list[Pair], neighbours: list[Pair], max_wrong: float) -> float:
    """The lowest similarity threshold alone that keeps train's wrong-hit rates at most max_wrong."""
    for t in [*GRID, 1.01]:
        if all(rates(split, lambda p: threshold_only_hit(p, t))["wrong_hit_rate"] <= max_wrong
               for split in (train, neighbours)):
            return t
    return 1.01


def curves(pairs: list[Pair], lexical: float) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"threshold_only": [], "verified": [], "verified_lexical_only": []}
    for t in GRID:
        out["threshold_only"].append({"threshold": t, **rates(pairs, lambda p: threshold_only_hit(p, t))})
        out["verified"].append({"similarity_threshold": t, "lexical_threshold": lexical,
                                **rates(pairs, lambda p: verified_hit(p, lexical, t))})
        out["verified_lexical_only"].append({"lexical_threshold": t,
                                             **rates(pairs, lambda p: verified_hit(p, t, 1.01))})
    return out


def breakdown(pairs: list[Pair], hits: dict[str, Any], by) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    groups: dict[tuple[str, ...], list[Pair]] = defaultdict(list)
    for p in pairs:
        groups[by(p)].append(p)
    table = []
    for key in sorted(groups):
        group = groups[key]
        row: dict[str, Any] = {"group": "/".join(key), "label": group[0].row["label"], "n": len(group)}
        for name, hit in hits.items():
            row[name] = round(sum(hit(p) for p in group) / len(group), 3)
        table.append(row)
    return table


def verdicts(pairs: list[Pair]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {"same": defaultdict(int), "different": defaultdict(int)}  # type: ignore[dict-item]
    for p in pairs:
        out[p.row["label"]][p.agreement.value if p.agreement else "rejected:" + p.rejection] += 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


# -- report --------------------------------------------------------------------------------------------------

def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    tuned = result["tuned"]
    for ax, xmax in zip(axes, (1.0, 0.05)):
        for split, style in (("dev", "-"), ("train", ":")):
            curve = result["splits"][split]["curve"]
            for name, label, color in (("threshold_only", "threshold only", "tab:blue"),
                                       ("verified", "threshold + verification", "tab:orange"),
                                       ("verified_lexical_only", "verification, paraphrases off", "tab:green")):
                points = curve[name]
                ax.plot([p["wrong_hit_rate"] for p in points], [p["hit_rate"] for p in points], style, color=color,
                        label=f"{label} ({split})", marker="." if split == "dev" else None, markersize=3)
        dev = result["splits"]["dev"]["operating_points"]
        for name, marker, label in (("today", "x", f"today: similarity >= {TODAY_THRESHOLD}"),
                                    ("threshold_only_tuned", "s", "threshold only, tuned on train"),
                                    ("verified_default", "*", "verified, defaults (tuned on train)")):
            point = dev[name]
            ax.plot(point["wrong_hit_rate"], point["hit_rate"], marker, color="black", markersize=9,
                    label=f"{label} (dev)")
        ax.axvline(0.01, color="red", linestyle="--", linewidth=1, label="1 % wrong hits")
        ax.axhline(0.8, color="gray", linestyle="--", linewidth=1, label="80 % hits")
        ax.set_xlim(0, xmax)
        ax.set_ylim(0, 1)
        ax.set_xlabel("wrong-hit rate on 'different' pairs")
        ax.set_ylabel("hit rate on 'same' pairs")
        ax.grid(alpha=0.3)
    axes[0].set_title("cache_pairs.jsonl: hit rate vs wrong-hit rate over thresholds")
    axes[1].set_title(f"zoom (lexical_threshold {tuned['lexical_threshold']}; the verified curve sweeps "
                      "similarity_threshold)", fontsize=9)
    axes[1].legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    vectors = embeddings((t for r in rows for t in (r["a"], r["b"])), args.embeddings)
    started = time.perf_counter()
    pairs = load_pairs(args.data, vectors)
    verify_s = time.perf_counter() - started
    train = [p for p in pairs if p.row["split"] == "train" and p.row["commercial_ok"]]
    splits = {"train": train, "dev": [p for p in pairs if p.row["split"] == "dev"],
              "dev_commercial_ok": [p for p in pairs if p.row["split"] == "dev" and p.row["commercial_ok"]]}
    neighbours = {name: neighbour_pairs(split, vectors) for name, split in splits.items()}
    tuned = tune(train, neighbours["train"], args.max_wrong)
    matched = tune_threshold_only(train, neighbours["train"], args.max_wrong)
    defaults = CacheConfig.model_fields
    config_defaults = {"lexical_threshold": defaults["lexical_threshold"].default,
                       "similarity_threshold": defaults["similarity_threshold"].default}
    lexical, paraphrase = config_defaults["lexical_threshold"], config_defaults["similarity_threshold"]
    hits = {"verified_default": lambda p: verified_hit(p, lexical, paraphrase),
            "today": lambda p: threshold_only_hit(p, TODAY_THRESHOLD),
            "threshold_only_tuned": lambda p: threshold_only_hit(p, matched)}
    result: dict[str, Any] = {
        "benchmark": "cache_quality", "data": str(args.data), "embedder": "all-MiniLM-L6-v2 (Triton `embedder`)",
        "pair": "a is stored, b is asked", "max_wrong_on_train": args.max_wrong, "edit_ratio": EDIT_RATIO,
        "tuned": tuned, "config_defaults": config_defaults, "threshold_only_tuned": matched,
        "today_threshold": TODAY_THRESHOLD,
        "verify_ms_per_pair": round(verify_s * 1000 / max(len(pairs), 1), 3), "splits": {}}
    for name, split in splits.items():
        result["splits"][name] = {
            "operating_points": {k: rates(split, hit) for k, hit in hits.items()},
            "neighbours": {k: rates(neighbours[name], hit) for k, hit in hits.items()},
            "per_source": breakdown(split, hits, lambda p: (p.row["label"], p.source)),
            "per_kind": breakdown(split, hits, lambda p: (p.row["label"], p.row["kind"])),
            "verdicts": verdicts(split),
            "curve": curves(split, lexical),
            "neighbour_curve": curves(neighbours[name], lexical),
        }
    return result


def print_summary(result: dict[str, Any]) -> None:
    print(f"tuned on train (wrong <= {result['max_wrong_on_train']:.2%}): {result['tuned']}; "
          f"config defaults {result['config_defaults']}; threshold alone: {result['threshold_only_tuned']}")
    for name, split in result["splits"].items():
        points = split["operating_points"]
        line = "  ".join(f"{k} hit {v['hit_rate']:.3f} wrong {v['wrong_hit_rate']:.4f} "
                         f"(neighbours {split['neighbours'][k]['wrong_hit_rate']:.4f})" for k, v in points.items())
        print(f"{name:>17}: {line}")
    print("dev per source (hit rate on same / wrong-hit rate on different):")
    for row in result["splits"]["dev"]["per_source"]:
        print(f"  {row['group']:<45} n={row['n']:>4}  verified {row['verified_default']:.3f}  "
              f"today {row['today']:.3f}  threshold-only tuned {row['threshold_only_tuned']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--embeddings", type=Path, default=EMBEDDINGS)
    parser.add_argument("--max-wrong", type=float, default=0.005,
                        help="wrong-hit rate the tuned thresholds may reach on train (half the 1 %% target: "
                             "dev and held-out pairs include noisier sources)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data} not found: pass --data with the path of cache_pairs.jsonl")
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cache_quality.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "cache_quality.png")
    print_summary(result)
    print(f"wrote {args.out / 'cache_quality.json'} and {args.out / 'cache_quality.png'}")


if __name__ == "__main__":
    main()
