"""The domain classifier's yardstick: a k-NN baseline on frozen embeddings, calibration and the confidence threshold."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.common import model_io as io
from services.common.tokenizer import Truncation
from services.models import metrics
from services.models.data import load_rows
from services.models.paths import ModelPaths, base_encoder_path, base_tokenizer_path

if TYPE_CHECKING:
    from services.models.evaluate import OnnxPipeline

K = 10
ECE_BINS = 15
THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))  # 0.0 .. 0.95
# The threshold rule: the lowest one that makes the classifier this accurate on the prompts it still routes.
TARGET_ACCURACY = 0.9
REPORT_FILE = "domain_yardstick.json"
# The domain classifier's truncation; the baseline sees the same tokens.
TRUNCATION = Truncation.HEAD_TAIL
EMBEDDING = "all-MiniLM-L6-v2 (frozen `encoder`), masked mean pooling, L2 norm"


# Plain functions over vectors and probabilities --------------------------------------------------

def knn_predict(train_vecs: np.ndarray, train_labels: np.ndarray, vecs: np.ndarray, k: int = K,
                n_classes: int | None = None, chunk: int = 512) -> np.ndarray:
    """Label per row of vecs: majority vote of its k most cosine-similar train rows; a tied vote goes to
    the class whose voters have the larger summed similarity (then to the lower class index)."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    n_classes = n_classes or int(train_labels.max()) + 1
    k = min(k, len(train_labels))
    train = _unit(np.asarray(train_vecs, dtype=np.float32))
    queries = _unit(np.asarray(vecs, dtype=np.float32))
    out = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ train.T
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        rows = np.repeat(np.arange(len(sims)), k)
        voted = train_labels[nearest].ravel()
        counts = np.zeros((len(sims), n_classes))
        summed = np.zeros((len(sims), n_classes))
        np.add.at(counts, (rows, voted), 1)
        np.add.at(summed, (rows, voted), np.take_along_axis(sims, nearest, axis=1).ravel())
        leading = counts == counts.max(axis=1, keepdims=True)
        out[start : start + len(sims)] = np.where(leading, summed, -np.inf).argmax(axis=1)
    return out


def _unit(vecs: np.ndarray) -> np.ndarray:
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def top_confidence(probabilities: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top probability, whether the top class is the true one) per row: what the router thresholds."""
    return probabilities.max(axis=1), probabilities.argmax(axis=1) == y_true


def _bins(confidence: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges and each row's bin: (lo, hi], the first bin also holding 0."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return edges, np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)


def reliability_table(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Equal-width confidence bins (lo, hi] (the first also holds 0): rows, mean confidence and accuracy."""
    edges, which = _bins(confidence, bins)
    table = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        table.append({
            "low": round(float(edges[b]), 4),
            "high": round(float(edges[b + 1]), 4),
            "rows": n,
            "confidence": round(float(confidence[inside].mean()), 4) if n else None,
            "accuracy": round(float(correct[inside].mean()), 4) if n else None,
        })
    return table


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Row-weighted mean |accuracy - confidence| over the reliability bins."""
    _, which = _bins(confidence, bins)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.sum() * abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
    return round(gap / max(len(confidence), 1), 4)


def coverage_curve(confidence: np.ndarray, correct: np.ndarray,
                   thresholds: tuple[float, ...] = THRESHOLDS) -> list[dict]:
    """Per threshold: the share of rows the classifier still routes (top probability >= threshold; the rest
    go to the default model) and its accuracy on them (None when it routes none)."""
    curve = []
    for threshold in thresholds:
        covered = confidence >= threshold
        n = int(covered.sum())
        curve.append({
            "threshold": threshold,
            "coverage": round(n / max(len(confidence), 1), 4),
            "rows": n,
            "accuracy": round(float(correct[covered].mean()), 4) if n else None,
        })
    return curve


def recommend_threshold(curve: list[dict], target_accuracy: float = TARGET_ACCURACY) -> dict:
    """The lowest threshold whose covered accuracy reaches the target; the knee when none does."""
    for point in curve:
        if point["accuracy"] is not None and point["accuracy"] >= target_accuracy:
            return {**point, "rule": f"lowest threshold with covered accuracy >= {target_accuracy}"}
    return {**knee(curve), "rule": f"no threshold reaches covered accuracy {target_accuracy}: the knee"}


def knee(curve: list[dict]) -> dict:
    """The point where raising the threshold stops paying: with the deferred share and the covered accuracy
    both scaled to [0, 1] between the curve's ends, the point furthest above the straight line (kneedle)."""
    points = [p for p in curve if p["accuracy"] is not None]
    deferred = np.array([1 - p["coverage"] for p in points])
    accuracy = np.array([p["accuracy"] for p in points])
    span_x, span_y = np.ptp(deferred), np.ptp(accuracy)
    if span_x == 0 or span_y == 0:
        return dict(points[0])
    lift = (accuracy - accuracy.min()) / span_y - (deferred - deferred.min()) / span_x
    return dict(points[int(lift.argmax())])


def gap_points(classifier: dict, baseline: dict) -> dict:
    """Classifier minus baseline, in percentage points, overall and per class F1/recall."""
    def points(a: float, b: float) -> float:
        return round(100 * (a - b), 2)

    return {
        "accuracy": points(classifier["accuracy"], baseline["accuracy"]),
        "macro_f1": points(classifier["macro_f1"], baseline["macro_f1"]),
        "per_class": {label: {"recall": points(c["recall"], baseline["per_class"][label]["recall"]),
                              "f1": points(c["f1"], baseline["per_class"][label]["f1"])}
                      for label, c in classifier["per_class"].items()},
    }


# The report on the built models and the data ------------------------------------------------------

def train_embeddings(pipeline: OnnxPipeline, paths: ModelPaths, texts: list[str]) -> np.ndarray:
    """Base embeddings of the train texts, cached in .switchyard/cache under a hash of encoder, tokenizer
    and texts (embedding 11k rows on two cores takes minutes)."""
    digest = hashlib.sha256()
    for path in (base_encoder_path(paths.work_dir), base_tokenizer_path(paths.work_dir)):
        digest.update(_file_digest(path))
    digest.update(json.dumps([TRUNCATION.value, io.MAX_TOKENS, texts]).encode())
    cache = paths.cache_dir / f"knn_domain_train_{digest.hexdigest()[:16]}.npy"
    if cache.is_file():
        print(f"  k-NN train embeddings: cached {cache}", file=sys.stderr, flush=True)
        return np.load(cache)
    started = time.time()

    def progress(done: int, total: int) -> None:
        if done == total or done % 1024 < 32:
            print(f"  k-NN train embeddings: {done}/{total} ({time.time() - started:.0f}s)", file=sys.stderr, flush=True)

    vecs = pipeline.base_embeddings(texts, TRUNCATION, progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".tmp.npy")
    np.save(partial, vecs)
    partial.replace(cache)  # another run never reads a half-written cache
    return vecs


def _file_digest(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run `switchyard models build` first")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.digest()


def domain_report(pipeline: OnnxPipeline, paths: ModelPaths) -> dict:
    """Classifier vs k-NN baseline on every dev row, calibration, and the coverage/accuracy curve that the
    routing confidence threshold moves along (JSON-serialisable; the domain model card includes it)."""
    from services.common.config import RoutingConfig

    labels = io.DOMAIN_LABELS
    index = {label: i for i, label in enumerate(labels)}
    train, train_selection = load_rows(paths.data_dir, "domain", "train", True)
    dev, dev_selection = load_rows(paths.data_dir, "domain", "dev", False)
    y_train = np.array([index[r["label"]] for r in train])
    y_dev = np.array([index[r["label"]] for r in dev])
    dev_texts = [r["text"] for r in dev]

    print(f"  classifier: {len(dev)} dev rows", file=sys.stderr, flush=True)
    probabilities = pipeline.domain_probabilities(dev_texts)
    train_vecs = train_embeddings(pipeline, paths, [r["text"] for r in train])
    print(f"  k-NN: {len(dev)} dev rows", file=sys.stderr, flush=True)
    knn_pred = knn_predict(train_vecs, y_train, pipeline.base_embeddings(dev_texts, TRUNCATION), K, len(labels))

    classifier = metrics.classification_report(y_dev, probabilities.argmax(axis=1), labels)
    baseline = metrics.classification_report(y_dev, knn_pred, labels)
    confidence, correct = top_confidence(probabilities, y_dev)
    curve = coverage_curve(confidence, correct)
    configured = float(RoutingConfig.model_fields["confidence_threshold"].default)
    at_configured = coverage_curve(confidence, correct, (configured,))[0]
    return {
        "data": {"train": train_selection.describe(), "dev": dev_selection.describe()},
        "classifier": classifier,
        "knn": {**baseline, "k": K, "embedding": EMBEDDING, "similarity": "cosine",
                "vote": "majority; ties by summed similarity", "train_rows": len(train)},
        "gap_points": gap_points(classifier, baseline),
        "calibration": {"ece": expected_calibration_error(confidence, correct), "bins": ECE_BINS,
                        "reliability": reliability_table(confidence, correct)},
        "threshold": {
            "configured_default": configured,
            "at_configured_default": at_configured,
            "coverage_curve": curve,
            "recommended": recommend_threshold(curve),
            "knee": knee(curve),
        },
    }


def run_domain_report(paths: ModelPaths, output: Path | None = None) -> dict:
    """`switchyard eval domain --yardstick`: domain_report on the built models, written to JSON and printed."""
    from services.models.evaluate import OnnxPipeline

    report = domain_report(OnnxPipeline(paths.repository, base_encoder=base_encoder_path(paths.work_dir)), paths)
    output = output or paths.reports_dir / REPORT_FILE
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    print(f"report: {output}", file=sys.stderr)
    return report


def summary(report: dict) -> str:
    c, b, gap = report["classifier"], report["knn"], report["gap_points"]
    lines = [
        f"domain yardstick ({c['rows']} dev rows)      accuracy  macro-F1",
        f"  classifier                        {c['accuracy']:.4f}    {c['macro_f1']:.4f}",
        f"  k-NN (k={b['k']}, frozen MiniLM)        {b['accuracy']:.4f}    {b['macro_f1']:.4f}",
        f"  gap (points)                      {gap['accuracy']:+.2f}    {gap['macro_f1']:+.2f}",
        f"  {'class':<17} {'recall cls/knn':>15} {'F1 cls/knn':>15} {'F1 gap':>7}",
    ]
    for label, v in c["per_class"].items():
        k = b["per_class"][label]
        lines.append(f"  {label:<17} {v['recall']:.3f} / {k['recall']:.3f}   {v['f1']:.3f} / {k['f1']:.3f}"
                     f"  {gap['per_class'][label]['f1']:+6.2f}")
    calibration = report["calibration"]
    lines.append(f"calibration  ECE ({calibration['bins']} bins) {calibration['ece']:.4f}")
    lines += [f"  ({r['low']:.2f}, {r['high']:.2f}]  n={r['rows']:<5} confidence {r['confidence']:.3f}  accuracy {r['accuracy']:.3f}"
              for r in calibration["reliability"] if r["rows"]]
    threshold = report["threshold"]
    lines.append("coverage/accuracy (threshold: share routed by the classifier, its accuracy there)")
    lines += [f"  {p['threshold']:.2f}  coverage {p['coverage']:.3f}  accuracy "
              + (f"{p['accuracy']:.3f}" if p["accuracy"] is not None else "-") for p in threshold["coverage_curve"]]
    r, now, kn = threshold["recommended"], threshold["at_configured_default"], threshold["knee"]
    lines.append(f"recommended confidence_threshold {r['threshold']:.2f} ({r['rule']}): coverage {r['coverage']:.3f}, "
                 f"accuracy {r['accuracy']:.3f}; knee {kn['threshold']:.2f}; configured {now['threshold']:.2f}: "
                 f"coverage {now['coverage']:.3f}, accuracy {now['accuracy']}")
    return "\n".join(lines)
