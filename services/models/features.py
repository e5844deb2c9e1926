"""Per-token training labels for the PII tagger: BIO ids aligned to a tokenized row."""

from __future__ import annotations

import numpy as np

from services.common.model_io import PII_BIO_LABELS
from services.common.tokenizer import Batch


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
