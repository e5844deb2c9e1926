"""Dev-set metrics for the three heads (pure functions over labels and predictions)."""

from __future__ import annotations

import numpy as np

LONG_CHARS = 1000


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = {}
    f1s = []
    for i, label in enumerate(labels):
        tp = confusion[i, i]
        precision = tp / max(confusion[:, i].sum(), 1)
        recall = tp / max(confusion[i].sum(), 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        f1s.append(f1)
        per_class[label] = {
            "precision": round(float(precision), 4),
            "recall": round(float(recall), 4),
            "f1": round(float(f1), 4),
            "support": int(confusion[i].sum()),
        }
    return {
        "accuracy": round(float((y_true == y_pred).mean()), 4),
        "macro_f1": round(float(np.mean(f1s)), 4),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "rows": int(len(y_true)),
    }


def binary_report(y_true: np.ndarray, scores: np.ndarray, lengths: np.ndarray, threshold: float = 0.5) -> dict:
    """Precision/recall/F1 of the positive class, FPR overall and on long (> 1,000 chars) negatives."""
    pred = scores >= threshold
    tp = int((pred & (y_true == 1)).sum())
    fp = int((pred & (y_true == 0)).sum())
    fn = int((~pred & (y_true == 1)).sum())
    negatives = y_true == 0
    long_negatives = negatives & (lengths > LONG_CHARS)
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return {
        "threshold": threshold,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / max(precision + recall, 1e-12), 4),
        "fpr": round(fp / max(int(negatives.sum()), 1), 4),
        "fpr_long_benign": round(int((pred & long_negatives).sum()) / max(int(long_negatives.sum()), 1), 4),
        "positives": int((y_true == 1).sum()),
        "negatives": int(negatives.sum()),
        "long_negatives": int(long_negatives.sum()),
    }


def entity_report(gold: list[list[tuple[int, int, str]]], predicted: list[list[tuple[int, int, str]]], types) -> dict:
    """Entity-level P/R/F1 per type, exact (same offsets) and overlap (any shared character) matching."""
    report: dict = {}
    for mode in ("exact", "overlap"):
        per_type = {}
        for kind in types:
            tp_p = tp_g = n_p = n_g = 0
            for g_spans, p_spans in zip(gold, predicted):
                g = [s for s in g_spans if s[2] == kind]
                p = [s for s in p_spans if s[2] == kind]
                n_g += len(g)
                n_p += len(p)
                tp_p += sum(any(_match(a, b, mode) for b in g) for a in p)
                tp_g += sum(any(_match(a, b, mode) for a in p) for b in g)
            precision = tp_p / max(n_p, 1)
            recall = tp_g / max(n_g, 1)
            per_type[kind] = {
                "precision": round(precision, 4),
                "recall": round(recall, 4),
                "f1": round(2 * precision * recall / max(precision + recall, 1e-12), 4),
                "support": n_g,
            }
        report[mode] = per_type
    return report


def _match(a: tuple[int, int, str], b: tuple[int, int, str], mode: str) -> bool:
    if mode == "exact":
        return a[0] == b[0] and a[1] == b[1]
    return a[0] < b[1] and b[0] < a[1]



def overall_report(gold: list[list[tuple[int, int, str]]], predicted: list[list[tuple[int, int, str]]],
                   mode: str) -> dict:
    """P/R/F1 over all entities of all types together (a match needs the same type)."""
    tp_p = tp_g = n_p = n_g = 0
    for g, p in zip(gold, predicted):
        n_g += len(g)
        n_p += len(p)
        tp_p += sum(any(a[2] == b[2] and _match(a, b, mode) for b in g) for a in p)
        tp_g += sum(any(a[2] == b[2] and _match(a, b, mode) for a in p) for b in g)
    precision, recall = tp_p / max(n_p, 1), tp_g / max(n_g, 1)
    return {"precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(2 * precision * recall / max(precision + recall, 1e-12), 4), "support": n_g}
