"""Frozen-encoder features, computed once and cached in .switchyard/cache (git-ignored)."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.common.model_io import PII_BIO_LABELS
from services.common.tokenizer import Batch, TextTokenizer, Truncation
from services.models.runtime import encode_batches, mean_pool


def encoder_tag(encoder_path: Path) -> str:
    """Short fingerprint of the encoder file so a new export invalidates cached features."""
    stat = encoder_path.stat()
    with encoder_path.open("rb") as handle:
        head = handle.read(1 << 20)
    return hashlib.sha1(head + str(stat.st_size).encode()).hexdigest()[:10]


def pooled_features(
    cache: Path,
    name: str,
    encoder: ort.InferenceSession,
    tokenizer: TextTokenizer,
    texts: list[str],
    truncation: Truncation = Truncation.HEAD_TAIL,
) -> np.ndarray:
    """[n, 2*384]: masked mean and masked max of the last hidden state, per text."""
    path = cache / f"{name}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape[0] == len(texts):
            return cached
    out = np.zeros((len(texts), 2 * 384), dtype=np.float32)
    started, done = time.time(), 0
    for chosen, batch, hidden in encode_batches(encoder, tokenizer, texts, truncation):
        masked = np.where(batch.attention_mask[..., None] > 0, hidden, -1e4)
        out[chosen] = np.concatenate([mean_pool(hidden, batch.attention_mask), masked.max(axis=1)], axis=1)
        done += len(chosen)
        _progress(name, done, len(texts), started)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def token_labels(batch: Batch, row: int, spans: list[dict]) -> np.ndarray:
    """BIO label id per token of one row (-100 for [CLS]/[SEP]/padding, which are not scored)."""
    label_ids = {label: i for i, label in enumerate(PII_BIO_LABELS)}
    mask = batch.attention_mask[row]
    offsets = batch.offsets[row]
    labels = np.full(mask.shape[0], -100, dtype=np.int64)
    length = int(mask.sum())
    labels[1 : length - 1] = 0
    for span in spans:
        if f"B-{span['label']}" not in label_ids:
            continue  # structured types (EMAIL, PHONE, ...) belong to the regex recognisers
        first = True
        for t in range(1, length - 1):
            start, end = offsets[t]
            if start < span["end"] and end > span["start"]:
                labels[t] = label_ids[("B-" if first else "I-") + span["label"]]
                first = False
    return labels


def token_features(
    cache: Path,
    name: str,
    encoder: ort.InferenceSession,
    tokenizer: TextTokenizer,
    texts: list[str],
    spans: list[list[dict]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hidden [tokens, 384] float16, BIO labels [tokens], text index [tokens]) for every real word piece."""
    path = cache / f"{name}.npz"
    if path.is_file():
        data = np.load(path)
        return data["hidden"], data["labels"], data["text"]
    hidden_parts, label_parts, text_parts = [], [], []
    started, done = time.time(), 0
    for chosen, batch, hidden in encode_batches(encoder, tokenizer, texts, Truncation.CHUNKS):
        for row in range(len(batch)):
            text = chosen[int(batch.text_index[row])]
            labels = token_labels(batch, row, spans[text])
            keep = labels != -100
            hidden_parts.append(hidden[row][keep].astype(np.float16))
            label_parts.append(labels[keep])
            text_parts.append(np.full(int(keep.sum()), text, dtype=np.int32))
        done += len(chosen)
        _progress(name, done, len(texts), started)
    result = (np.concatenate(hidden_parts), np.concatenate(label_parts), np.concatenate(text_parts))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, hidden=result[0], labels=result[1], text=result[2])
    return result


def _progress(name: str, done: int, total: int, started: float) -> None:
    if done == total or done % 1024 < 32:
        print(f"  features {name}: {done}/{total} ({time.time() - started:.0f}s)", file=sys.stderr, flush=True)


def feature_name(task: str, split: str, commercial_only: bool, tag: str) -> str:
    return f"{task}_{split}_{'commercial' if commercial_only else 'all'}_{tag}"
