"""Re-fit one pooled head on the frozen shared trunk (CPU, minutes): `python -m services.models.refit safety`.

Why: the jointly trained safety head read ordinary subject questions as harmful (8 % of the domain dev
questions at the 0.8 threshold: "Can I sue my landlord for keeping my deposit?" -> crime_fraud 1.00),
because its safe rows are chat prompts and XSTest look-alikes, with few plain questions on law, health
or chemistry. The re-fit starts from the committed head and trains it for SAFETY_EPOCHS on the trunk's
fp32 pooled states of the commercial safety rows plus SAFETY_EXTRA_SAFE commercial domain train rows
as safe; the trunk and every other head are unchanged. The next trunk training adds the same rows
(services.models.trunk.prepare_bundle), so the re-fit is a bridge, not a second recipe.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from services.common import model_io as io
from services.common.tokenizer import Truncation
from services.models.data import load_rows
from services.models.paths import WEIGHTS_DIR, ModelPaths, default_paths

SAFETY_EXTRA_SAFE = 4000
SAFETY_EPOCHS = 8
SEED = 13


def pooled_states(pipeline, texts: list[str]) -> np.ndarray:
    """Mean + max pooling of the trunk's token states, the input of every pooled head."""
    from services.models.runtime import encode_batches

    trunk = pipeline._session(io.TRUNK)
    out = np.zeros((len(texts), 2 * io.HIDDEN_SIZE), np.float32)
    for chosen, batch, hidden in encode_batches(trunk, pipeline.tokenizer, texts, Truncation.HEAD_TAIL):
        mask = batch.attention_mask[..., None].astype(np.float32)
        mean = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        top = (hidden + (mask - 1) * 1e4).max(1)
        out[[chosen[int(i)] for i in batch.text_index]] = np.concatenate([mean, top], 1)
    return out


def safety_rows(paths: ModelPaths, rows: list[dict] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Safety train rows (default: every commercial one; unsafe and XSTest safe weighted 3x), then
    SAFETY_EXTRA_SAFE commercial domain rows as safe."""
    if rows is None:
        rows, _ = load_rows(paths.data_dir, "safety", "train", True)
    domain, _ = load_rows(paths.data_dir, "domain", "train", True)
    rng = np.random.default_rng(SEED)
    extra = [domain[i]["text"] for i in rng.choice(len(domain), min(SAFETY_EXTRA_SAFE, len(domain)), replace=False)]
    texts = [r["text"] for r in rows] + extra
    labels = np.array([io.SAFETY_LABELS.index(r["category"]) for r in rows] + [0] * len(extra))
    weights = np.array([3.0 if r["category"] != io.SAFETY_NONE or r["source"] == "xstest" else 1.0 for r in rows]
                       + [1.0] * len(extra), dtype=np.float32)
    return texts, labels, weights


def refit_safety(fp32_repository: Path, paths: ModelPaths | None = None, target: Path | None = None) -> Path:
    import torch

    from services.models.evaluate import OnnxPipeline

    paths = paths or default_paths()
    target = target or WEIGHTS_DIR / "trunk" / "safety_head.npz"
    torch.manual_seed(SEED)
    started = time.time()
    texts, labels, weights = safety_rows(paths)
    x = torch.from_numpy(pooled_states(OnnxPipeline(fp32_repository), texts))
    print(f"[refit] {len(texts)} rows embedded in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    y, w = torch.from_numpy(labels), torch.from_numpy(weights)
    head = np.load(target)
    net = torch.nn.Sequential(torch.nn.Linear(2 * io.HIDDEN_SIZE, 512), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                              torch.nn.Linear(512, len(io.SAFETY_LABELS)))
    with torch.no_grad():
        for layer, i in ((net[0], 0), (net[3], 1)):
            layer.weight.copy_(torch.from_numpy(head[f"layer{i}_w"].T))
            layer.bias.copy_(torch.from_numpy(head[f"layer{i}_b"]))
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    for epoch in range(SAFETY_EPOCHS):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            rows = order[i : i + 128]
            loss = (loss_fn(net(x[rows]), y[rows]) * w[rows]).sum() / w[rows].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"[refit] epoch {epoch + 1}/{SAFETY_EPOCHS} loss {float(loss):.4f}", file=sys.stderr, flush=True)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    np.savez_compressed(target, layer0_w=state["0.weight"].T.astype(np.float32), layer0_b=state["0.bias"],
                        layer1_w=state["3.weight"].T.astype(np.float32), layer1_b=state["3.bias"])
    return target


if __name__ == "__main__":
    if sys.argv[1:2] != ["safety"]:
        raise SystemExit("usage: python -m services.models.refit safety [FP32_REPOSITORY]")
    repository = Path(sys.argv[2]) if len(sys.argv) > 2 else default_paths().work_dir / "trunk-repository-fp32"
    print(refit_safety(repository))
