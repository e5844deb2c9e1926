"""onnxruntime sessions and batched encoder runs used by training, evaluation and tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.common.model_io import ATTENTION_MASK, HIDDEN_STATES, INPUT_IDS
from services.common.tokenizer import Batch, TextTokenizer, Truncation


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Other processes share the few cores; spinning threads would steal them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def encode_batches(
    encoder: ort.InferenceSession,
    tokenizer: TextTokenizer,
    texts: list[str],
    truncation: Truncation,
    batch_size: int = 32,
    output: str = HIDDEN_STATES,
) -> Iterator[tuple[list[int], Batch, np.ndarray]]:
    """Yield (text indices, token batch, the model's `output`) in length-sorted batches to waste little padding.

    `output` is the token states by default (the base encoder's only output, and one of the served trunk's);
    for the trunk it can be any head's output.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        batch = tokenizer.encode([texts[i] for i in chosen], truncation)
        result = encoder.run([output], {INPUT_IDS: batch.input_ids, ATTENTION_MASK: batch.attention_mask})[0]
        yield chosen, batch, result


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean over tokens, the pooling of all-MiniLM-L6-v2 (CLS and SEP included)."""
    weights = mask.astype(np.float32)[..., None]
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
