"""Cache answer quality on cache_pairs.jsonl: hits on "same" pairs against wrong hits on "different" ones.

Each pair is a stored question `a` and an asked question `b`. Similarities come from the real embedder
(all-MiniLM-L6-v2 through Triton), computed once and kept in .switchyard/cache_pairs_minilm.npz (a
tritonserver is started on free loopback ports only for texts not in that file). The pair classifier's
p(same) (Triton `cache_pair_classifier`, through TritonModels.pair_same_scores, as the cache calls it) is kept
in .switchyard/cache_pairs_pair_model.npz the same way, for the dev pairs and their nearest neighbours.
Both files are keyed by the model files they came from: a rebuilt model is asked again. Three caches:

- similarity only (the cache before verification): a hit when similarity >= t;
- rules (services/cache/verify.py, cache.pair_model: false): a hit when the verifier shows the two ask the same
  and the similarity reaches the threshold of that kind of agreement (cache.lexical_threshold for the same
  words or a self-correction, cache.similarity_threshold for a paraphrase);
- rules + pair model (the default): the same words or a self-correction as above; what the rules reject on
  numbers, names, negations, operators or direction stays rejected; every other candidate at
  cache.candidate_threshold or above is served when p(same) >= cache.pair_threshold. Decided by the cache's
  own CachePolicy.screen, so the bench and the service cannot disagree.

The rules' thresholds are tuned on the train rows with commercial_ok: true (the most hits with a wrong-hit
rate of at most --max-wrong) and reported on dev. The pair model was trained on train, so its threshold is
read off the dev curve (the report gives the lowest pair_threshold that keeps dev and its neighbours at
most --max-wrong; a held-out split judges the default). The curve is hit rate against wrong-hit rate over
thresholds.

Run: .venv/bin/python -m bench.cache_quality [--data PATH] [--max-wrong 0.005] [--no-pair-model]
Writes bench/results/cache_quality.json and bench/results/cache_quality.png.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import socket
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np

from services.cache.embedder import TritonEmbedder
from services.cache.policy import CachePolicy, Step
from services.cache.verify import EDIT_RATIO, Agreement, Rejection, Verdict, verify
from services.common import model_io as io
from services.common.config import CacheConfig, PairJudgedVerdict, TritonConfig
from services.common.triton import TritonModels
from services.common.triton_server import launch_spec, wait_until_ready

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "cache_pairs.jsonl"
EMBEDDINGS = REPO / ".switchyard" / "cache_pairs_minilm.npz"
PAIR_SCORES = REPO / ".switchyard" / "cache_pairs_pair_model.npz"
MODELS = REPO / "triton_models"
RESULTS = REPO / "bench" / "results"
TODAY_THRESHOLD = 0.9  # the similarity_threshold of the cache before verification
# Finer near 1, where threshold-only caches have to sit to stay clear of look-alikes.
GRID = sorted({round(float(x), 3) for x in [*np.arange(0.5, 0.99, 0.01), *np.arange(0.99, 1.0001, 0.001)]})
# p(same) thresholds swept for the pair model: finer near 1, where a strict cache sits.
PAIR_GRID = sorted({round(float(x), 4) for x in [*np.arange(0.05, 0.9, 0.05), *np.arange(0.9, 0.99, 0.01),
                                                  *np.arange(0.99, 1.0, 0.001), 0.9995, 0.9999]})
EMBED_BATCH = 64


# -- embeddings ---------------------------------------------------------------------------------------------

def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _pair_key(stored: str, asked: str) -> str:
    return hashlib.sha256(f"{stored}\x00{asked}".encode()).hexdigest()[:24]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def model_fingerprint(ensemble: str, repository: Path = MODELS) -> str:
    """A digest of the ensemble's config and of every step's model file: what its outputs depend on."""
    config = repository / ensemble / "config.pbtxt"
    if not config.is_file():
        return ""
    digest = hashlib.sha256(config.read_bytes())
    for step in sorted(set(re.findall(r'model_name: "([^"]+)"', config.read_text()))):
        for path in sorted((repository / step).glob("*/model.*")) + [repository / step / "config.pbtxt"]:
            if path.is_file():
                stat = path.stat()  # size and mtime: hashing 90 MB encoders on every run is slow
                digest.update(f"{path.relative_to(repository)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_vectors(path: Path, fingerprint: str | None = None) -> dict[str, np.ndarray]:
    """Kept values; none when the file came from another model (`fingerprint`, when the file has one)."""
    if not path.is_file():
        return {}
    with np.load(path) as data:
        kept = str(data["fingerprint"]) if "fingerprint" in data else ""
        if fingerprint is not None and kept != fingerprint:
            print(f"  {path.name} came from another model; asking again", flush=True)
            return {}
        return dict(zip(data["keys"].tolist(), data["vectors"]))


def save_vectors(path: Path, vectors: dict[str, np.ndarray], fingerprint: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(vectors)
    np.savez(path, keys=np.array(keys), vectors=np.stack([vectors[k] for k in keys]) if keys else np.zeros(0),
             fingerprint=np.array(fingerprint))


@contextmanager
def local_triton(models: tuple[str, ...]) -> Iterator[TritonConfig]:
    """A tritonserver on free loopback ports serving triton_models/, until the block ends."""
    http_port, grpc_port, metrics_port = _free_ports(3)
    config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          model_repository=MODELS, timeout_ms=60000)
    spec = launch_spec(config)
    with tempfile.NamedTemporaryFile("w+", prefix="tritonserver-", suffix=".log") as log:
        process = subprocess.Popen(spec.argv, env=spec.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(config, timeout_s=300, models=models, is_alive=lambda: process.poll() is None)
            yield config
        finally:
            process.terminate()
            process.wait(60)


async def _embed(config: TritonConfig, texts: list[str], vectors: dict[str, np.ndarray], path: Path,
                 fingerprint: str) -> None:
    embedder = TritonEmbedder(config)
    try:
        for start in range(0, len(texts), EMBED_BATCH):
            chunk = texts[start:start + EMBED_BATCH]
            for text, vector in zip(chunk, await embedder.embed(chunk)):
                vectors[_key(text)] = vector.astype(np.float32)
            if start // EMBED_BATCH % 40 == 0:
                print(f"  embedded {start + len(chunk)}/{len(texts)}", flush=True)
                save_vectors(path, vectors, fingerprint)
    finally:
        await embedder.close()
        save_vectors(path, vectors, fingerprint)


def embeddings(texts: Iterable[str], path: Path = EMBEDDINGS) -> dict[str, np.ndarray]:
    """Text hash -> embedder vector for every text; the missing ones are embedded by a local tritonserver."""
    fingerprint = model_fingerprint(io.EMBEDDER)
    vectors = load_vectors(path, fingerprint)
    todo = sorted({t for t in texts if _key(t) not in vectors})
    if not todo:
        return vectors
    print(f"  {len(todo)} texts to embed through Triton (kept in {path})", flush=True)
    with local_triton((io.EMBEDDER,)) as config:
        asyncio.run(_embed(config, todo, vectors, path, fingerprint))
    return vectors


async def _score(config: TritonConfig, todo: list[tuple[str, str]], scores: dict[str, np.ndarray], path: Path,
                 fingerprint: str) -> None:
    async with TritonModels.from_config(config) as models:
        try:
            for start in range(0, len(todo), EMBED_BATCH):
                chunk = todo[start:start + EMBED_BATCH]
                for pair, score in zip(chunk, await models.pair_same_scores(chunk)):
                    scores[_pair_key(*pair)] = np.float32(score)
                if start // EMBED_BATCH % 20 == 0:
                    print(f"  scored {start + len(chunk)}/{len(todo)} pairs", flush=True)
        finally:
            save_vectors(path, scores, fingerprint)


def pair_scores(pairs: Iterable[tuple[str, str]], path: Path = PAIR_SCORES) -> dict[str, float] | None:
    """(stored, asked) hash -> p(same) of the pair classifier; None when triton_models/ has no such model."""
    fingerprint = model_fingerprint(io.CACHE_PAIR_CLASSIFIER)
    if not fingerprint:
        print(f"  no {io.CACHE_PAIR_CLASSIFIER} in {MODELS}: the rules + pair model cache is left out", flush=True)
        return None
    scores = load_vectors(path, fingerprint)
    todo = sorted({pair for pair in pairs if _pair_key(*pair) not in scores})
    if todo:
        print(f"  {len(todo)} pairs to score through Triton (kept in {path})", flush=True)
        with local_triton((io.CACHE_PAIR_CLASSIFIER,)) as config:
            asyncio.run(_score(config, todo, scores, path, fingerprint))
    return {k: float(v) for k, v in scores.items()}


# -- pairs -------------------------------------------------------------------------------------------------

@dataclass
class Pair:
    row: dict[str, Any]
    similarity: float
    agreement: Agreement | None
    rejection: str
    # p(same) of the pair classifier for (stored a, asked b); None when not scored.
    score: float | None = None

    @property
    def same(self) -> bool:
        return self.row["label"] == "same"

    @property
    def verdict(self) -> Verdict:
        return Verdict(self.agreement, Rejection(self.rejection) if self.rejection else None)

    @property
    def texts(self) -> tuple[str, str]:
        return self.row["a"], self.row["b"]

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


def attach_scores(pairs: Iterable[Pair], scores: dict[str, float]) -> None:
    for p in pairs:
        p.score = scores.get(_pair_key(*p.texts))


def policy_for(**overrides: Any) -> CachePolicy:
    return CachePolicy(CacheConfig(port=1, metrics_port=1, **overrides))


def cache_hit(policy: CachePolicy):  # type: ignore[no-untyped-def]
    """Whether the cache with this policy serves the stored `a` for the asked `b`: CachePolicy.screen, then
    (for what it leaves to the pair model) the pair classifier's score. An unscored pair is a miss, as a
    failed pair call is in the service."""
    def hit(pair: Pair) -> bool:
        screening = policy.screen(pair.verdict, pair.similarity, "")
        if screening.step is Step.ASK_PAIR_MODEL:
            return pair.score is not None and policy.pair_accepts(pair.score)
        return screening.step is Step.SERVE
    return hit


def pair_model_alone_hit(pair: Pair, candidate: float, threshold: float) -> bool:
    """The pair classifier without the text checks (for comparison; not a cache mode)."""
    return pair.similarity >= candidate and pair.score is not None and pair.score >= threshold


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


def pair_model_curves(pairs: list[Pair], defaults: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Rules + pair model over pair_threshold (at the default candidate_threshold) and over
    candidate_threshold (at the default pair_threshold); the pair model alone for comparison."""
    candidate, threshold = defaults["candidate_threshold"], defaults["pair_threshold"]
    out: dict[str, list[dict[str, Any]]] = {"rules_pair_model": [], "rules_pair_model_by_candidate": [],
                                            "pair_model_alone": []}
    for t in PAIR_GRID:
        hit = cache_hit(policy_for(**{**defaults, "pair_threshold": t}))
        out["rules_pair_model"].append({"pair_threshold": t, "candidate_threshold": candidate, **rates(pairs, hit)})
        out["pair_model_alone"].append({"pair_threshold": t, "candidate_threshold": candidate,
                                        **rates(pairs, lambda p: pair_model_alone_hit(p, candidate, t))})
    for c in GRID:
        hit = cache_hit(policy_for(**{**defaults, "candidate_threshold": c}))
        out["rules_pair_model_by_candidate"].append({"candidate_threshold": c, "pair_threshold": threshold,
                                                     **rates(pairs, hit)})
    return out


def pair_model_by_rule(pairs: list[Pair], defaults: dict[str, Any]) -> dict[str, dict[str, int]]:
    """For every verdict the pair model may judge (all of them, whatever the default), at the default
    thresholds: how many 'same' and 'different' pairs it was asked about and accepted. What it tells apart well
    belongs in cache.pair_model_judges."""
    policy = policy_for(**{**defaults, "pair_model_judges": list(get_args(PairJudgedVerdict))})
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # type: ignore[arg-type]
    for p in pairs:
        if policy.screen(p.verdict, p.similarity, "").step is not Step.ASK_PAIR_MODEL:
            continue
        rule = p.agreement.value if p.agreement else p.rejection
        label = p.row["label"]
        out[rule][f"{label}_asked"] += 1
        out[rule][f"{label}_accepted"] += int(p.score is not None and policy.pair_accepts(p.score))
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def suggest_pair_threshold(dev: list[Pair], neighbours: list[Pair], defaults: dict[str, Any],
                           max_wrong: float) -> float | None:
    """The lowest pair_threshold (the most hits) at which dev and its nearest neighbours both stay at most
    max_wrong wrong hits."""
    for t in PAIR_GRID:
        hit = cache_hit(policy_for(**{**defaults, "pair_threshold": t}))
        if all(rates(split, hit)["wrong_hit_rate"] <= max_wrong for split in (dev, neighbours)):
            return t
    return None


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

CURVES = (("threshold_only", "similarity only", "tab:blue", "-"),
          ("verified", "rules (sweeping similarity_threshold)", "tab:orange", "-"),
          ("rules_pair_model", "rules + pair model (sweeping pair_threshold)", "tab:green", "-"),
          ("pair_model_alone", "pair model alone, no rules (not a mode)", "tab:gray", "--"))
POINTS = (("today", "x", f"similarity >= {TODAY_THRESHOLD} (the cache before verification)"),
          ("verified_default", "s", "rules, defaults"),
          ("pair_model_default", "*", "rules + pair model, defaults"))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    dev = result["splits"]["dev"]
    curve = {**dev["curve"], **dev.get("pair_model_curve", {})}
    for ax, xmax in zip(axes, (1.0, 0.05)):
        for name, label, color, style in CURVES:
            if name in curve:
                points = curve[name]
                ax.plot([p["wrong_hit_rate"] for p in points], [p["hit_rate"] for p in points], style, color=color,
                        label=label, marker=".", markersize=3)
        for name, marker, label in POINTS:
            point = dev["operating_points"].get(name)
            if point is not None:
                ax.plot(point["wrong_hit_rate"], point["hit_rate"], marker, color="black", markersize=9, label=label)
        ax.axvline(0.01, color="red", linestyle="--", linewidth=1, label="1 % wrong hits")
        ax.axhline(0.8, color="gray", linestyle="--", linewidth=1, label="80 % hits")
        ax.set_xlim(0, xmax)
        ax.set_ylim(0, 1)
        ax.set_xlabel("wrong-hit rate on 'different' pairs (dev)")
        ax.set_ylabel("hit rate on 'same' pairs (dev)")
        ax.grid(alpha=0.3)
    defaults = result["config_defaults"]
    axes[0].set_title("cache_pairs.jsonl dev: hit rate vs wrong-hit rate over thresholds")
    axes[1].set_title(f"zoom (lexical_threshold {defaults['lexical_threshold']}, candidate_threshold "
                      f"{defaults['candidate_threshold']})", fontsize=9)
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
    fields = CacheConfig.model_fields
    config_defaults = {name: fields[name].default for name in
                       ("lexical_threshold", "similarity_threshold", "candidate_threshold", "pair_threshold")}
    config_defaults["pair_model_judges"] = fields["pair_model_judges"].default_factory()  # type: ignore[misc]
    # The pair model learnt from train: it is judged on dev (and dev's neighbours) only.
    judged = ("dev", "dev_commercial_ok")
    scores = None if args.no_pair_model else pair_scores(
        p.texts for name in judged for p in (*splits[name], *neighbours[name]))
    if scores is not None:
        for name in judged:
            attach_scores([*splits[name], *neighbours[name]], scores)
    rules_hit = cache_hit(policy_for(pair_model=False))
    model_hit = cache_hit(policy_for())
    hits: dict[str, Any] = {"verified_default": rules_hit,
                            "today": lambda p: threshold_only_hit(p, TODAY_THRESHOLD),
                            "threshold_only_tuned": lambda p: threshold_only_hit(p, matched)}
    result: dict[str, Any] = {
        "benchmark": "cache_quality", "data": str(args.data), "embedder": "Triton `embedder`",
        "embedder_fingerprint": model_fingerprint(io.EMBEDDER),
        "pair_model": None if scores is None else {
            "model": io.CACHE_PAIR_CLASSIFIER, "fingerprint": model_fingerprint(io.CACHE_PAIR_CLASSIFIER),
            "input": "[CLS] stored a [SEP] asked b [SEP]"},
        "pair": "a is stored, b is asked", "max_wrong_on_train": args.max_wrong, "edit_ratio": EDIT_RATIO,
        "tuned": tuned, "config_defaults": config_defaults, "threshold_only_tuned": matched,
        "today_threshold": TODAY_THRESHOLD,
        "verify_ms_per_pair": round(verify_s * 1000 / max(len(pairs), 1), 3), "splits": {}}
    for name, split in splits.items():
        split_hits = {**hits, "pair_model_default": model_hit} if scores is not None and name in judged else hits
        result["splits"][name] = {
            "operating_points": {k: rates(split, hit) for k, hit in split_hits.items()},
            "neighbours": {k: rates(neighbours[name], hit) for k, hit in split_hits.items()},
            "per_source": breakdown(split, split_hits, lambda p: (p.row["label"], p.source)),
            "per_kind": breakdown(split, split_hits, lambda p: (p.row["label"], p.row["kind"])),
            "verdicts": verdicts(split),
            "curve": curves(split, config_defaults["lexical_threshold"]),
            "neighbour_curve": curves(neighbours[name], config_defaults["lexical_threshold"]),
        }
        if scores is not None and name in judged:
            result["splits"][name]["pair_model_curve"] = pair_model_curves(split, config_defaults)
            result["splits"][name]["pair_model_by_rule"] = pair_model_by_rule(split, config_defaults)
            result["splits"][name]["neighbour_pair_model_curve"] = pair_model_curves(neighbours[name],
                                                                                     config_defaults)
    if scores is not None:
        result["suggested_pair_threshold"] = {
            f"max_wrong_{bound}": suggest_pair_threshold(splits["dev"], neighbours["dev"], config_defaults, bound)
            for bound in (0.003, 0.005, 0.0075, 0.01)}
    return result


def print_summary(result: dict[str, Any]) -> None:
    print(f"tuned on train (wrong <= {result['max_wrong_on_train']:.2%}): {result['tuned']}; "
          f"config defaults {result['config_defaults']}; threshold alone: {result['threshold_only_tuned']}")
    if "suggested_pair_threshold" in result:
        print(f"pair_threshold suggested by dev + dev neighbours: {result['suggested_pair_threshold']}")
    for name, split in result["splits"].items():
        points = split["operating_points"]
        line = "  ".join(f"{k} hit {v['hit_rate']:.3f} wrong {v['wrong_hit_rate']:.4f} "
                         f"(neighbours {split['neighbours'][k]['wrong_hit_rate']:.4f})" for k, v in points.items())
        print(f"{name:>17}: {line}")
    for table in ("per_kind", "per_source"):
        print(f"dev {table.replace('_', ' ')} (hit rate on same / wrong-hit rate on different):")
        for row in result["splits"]["dev"][table]:
            cells = "  ".join(f"{k} {row[k]:.3f}" for k in ("today", "verified_default", "pair_model_default")
                              if k in row)
            print(f"  {row['group']:<45} n={row['n']:>4}  {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--embeddings", type=Path, default=EMBEDDINGS)
    parser.add_argument("--max-wrong", type=float, default=0.005,
                        help="wrong-hit rate the tuned thresholds may reach on train (half the 1 %% target: "
                             "dev and held-out pairs include noisier sources)")
    parser.add_argument("--no-pair-model", action="store_true", help="leave the rules + pair model cache out")
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
