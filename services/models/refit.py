"""Re-fit one pooled head on the frozen shared trunk (CPU, minutes): `python -m services.models.refit safety`.

Why: the jointly trained safety head read ordinary subject questions as harmful (8 % of the domain dev
questions at the 0.8 threshold: "Can I sue my landlord for keeping my deposit?" -> crime_fraud 1.00),
because its safe rows are chat prompts and XSTest look-alikes, with few plain questions on law, health
or chemistry. The re-fit starts from the committed head and trains it for SAFETY_EPOCHS on the trunk's
fp32 pooled states of the commercial safety rows plus SAFETY_EXTRA_SAFE commercial domain train rows
as safe; the trunk and every other head are unchanged. The next trunk training adds the same rows
(services.models.trunk.prepare_bundle), so the re-fit is a bridge, not a second recipe.

`python -m services.models.refit jailbreak` does the same for the jailbreak head, which read 4.3 % of the
domain dev questions as jailbreaks at the guard's 0.97 threshold (60 of them philosophy: 27 % of that class,
e.g. "If animals have no direct or indirect moral standing, then using them for human purposes is"): its
benign rows are chat prompts and documents, with no exam questions on ethics or history. It re-fits on the
trunk's served (int8) pooled states of the joint training's jailbreak rows (services.models.trunk's bundle:
the commercial rows, their harmless-text variants, the templated benign prompts, XSTest and the buried
injections' windows) plus the same JAILBREAK_EXTRA_BENIGN commercial domain train questions as benign.
Bundles prepared since then hold those rows among their jailbreak rows (the joint training learns them),
and the re-fit does not add them twice.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from services.common import model_io as io
from services.common.tokenizer import Truncation
from services.models.data import load_rows
from services.models.heads import MLP
from services.models.paths import WEIGHTS_DIR, ModelPaths, default_paths

SAFETY_EXTRA_SAFE = 4000
SAFETY_EPOCHS = 8
# The jailbreak head's extra benign rows: as many domain questions as the safety head's (the same ones).
JAILBREAK_EXTRA_BENIGN = SAFETY_EXTRA_SAFE
JAILBREAK_EPOCHS = 8
SEED = 13
# Rows per onnxruntime run when pooling token-id rows (length-sorted, each batch padded to its bucket).
POOL_BATCH = 32


def pooled_states(pipeline, texts: list[str]) -> np.ndarray:
    """Mean + max pooling of the trunk's token states, the input of every pooled head."""
    from services.models.runtime import encode_batches

    trunk = pipeline._session(io.TRUNK)
    out = np.zeros((len(texts), 2 * io.HIDDEN_SIZE), np.float32)
    for chosen, batch, hidden in encode_batches(trunk, pipeline.tokenizer, texts, Truncation.HEAD_TAIL):
        out[[chosen[int(i)] for i in batch.text_index]] = _mean_max(hidden, batch.attention_mask)
    return out


def _mean_max(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean and masked max of token states, concatenated: what the fused pooled heads compute."""
    m = mask[..., None].astype(np.float32)
    mean = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    top = (hidden + (m - 1) * 1e4).max(1)
    return np.concatenate([mean, top], 1)


def pooled_rows(session, rows: list[np.ndarray], pad_id: int = 0) -> np.ndarray:
    """Mean + max pooled token states of token-id rows (special tokens included), as the served trunk computes
    them: length-sorted batches, each padded to its longest row's bucket."""
    from services.common.tokenizer import bucket_width

    out = np.zeros((len(rows), 2 * io.HIDDEN_SIZE), np.float32)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), POOL_BATCH):
        chosen = order[start : start + POOL_BATCH]
        width = bucket_width(max(len(rows[i]) for i in chosen))
        ids = np.full((len(chosen), width), pad_id, np.int64)
        mask = np.zeros((len(chosen), width), np.int64)
        for k, i in enumerate(chosen):
            ids[k, : len(rows[i])], mask[k, : len(rows[i])] = rows[i], 1
        hidden = session.run([io.HIDDEN_STATES], {io.INPUT_IDS: ids, io.ATTENTION_MASK: mask})[0]
        out[chosen] = _mean_max(hidden, mask)
    return out


def extra_benign_domain_rows(domain: list, count: int = JAILBREAK_EXTRA_BENIGN) -> list:
    """`count` of the commercial domain train rows (texts or token rows), seeded: the plain subject questions
    the jailbreak and safety heads learn as benign (the same questions for both)."""
    rng = np.random.default_rng(SEED)
    return [domain[i] for i in rng.choice(len(domain), min(count, len(domain)), replace=False)]


def jailbreak_rows(bundle: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The joint training's jailbreak rows (token ids) and labels, then JAILBREAK_EXTRA_BENIGN of its commercial
    domain train rows as benign (the safety re-fit's selection). A bundle that already holds them (its
    `jailbreak_train_extra_benign` says how many) is returned as it is."""
    from services.models.trunk import ragged_rows

    data = np.load(bundle / "trunk.npz")
    rows = ragged_rows(data, "jailbreak_train")
    labels = data["jailbreak_train_labels"].astype(np.int64)
    if "jailbreak_train_extra_benign" in data.files:
        return rows, labels
    extra = extra_benign_domain_rows(ragged_rows(data, "domain_train"))
    return rows + extra, np.concatenate([labels, np.zeros(len(extra), np.int64)])


def _fit_head(target: Path, x: np.ndarray, y: np.ndarray, w: np.ndarray, classes: int, epochs: int) -> Path:
    """Train the committed pooled head at `target` further on (x, y) with row weights w; overwrite it."""
    import torch

    torch.manual_seed(SEED)
    head = np.load(target)
    hidden = head["layer0_b"].shape[0]
    net = torch.nn.Sequential(torch.nn.Linear(2 * io.HIDDEN_SIZE, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                              torch.nn.Linear(hidden, classes))
    with torch.no_grad():
        for layer, i in ((net[0], 0), (net[3], 1)):
            layer.weight.copy_(torch.from_numpy(head[f"layer{i}_w"].T))
            layer.bias.copy_(torch.from_numpy(head[f"layer{i}_b"]))
    xt, yt, wt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    for epoch in range(epochs):
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            rows = order[i : i + 128]
            loss = (loss_fn(net(xt[rows]), yt[rows]) * wt[rows]).sum() / wt[rows].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"[refit] epoch {epoch + 1}/{epochs} loss {float(loss.detach()):.4f}", file=sys.stderr, flush=True)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    MLP(((state["0.weight"].T, state["0.bias"]), (state["3.weight"].T, state["3.bias"]))).save(target)
    return target


def refit_jailbreak(repository: Path, bundle: Path, target: Path | None = None) -> Path:
    """Re-fit the jailbreak head on the served trunk's pooled states (repository: the built triton_models/)."""
    from services.models.runtime import session

    target = target or WEIGHTS_DIR / "trunk" / "jailbreak_head.npz"
    started = time.time()
    rows, labels = jailbreak_rows(bundle)
    x = pooled_rows(session(repository / io.TRUNK / "1" / "model.onnx"), rows)
    print(f"[refit] {len(rows)} rows pooled in {time.time() - started:.0f} s "
          f"({int(labels.sum())} jailbreak, {int((labels == 0).sum())} benign)", file=sys.stderr, flush=True)
    return _fit_head(target, x, labels, np.ones(len(labels), np.float32), len(io.JAILBREAK_LABELS), JAILBREAK_EPOCHS)


def safety_rows(paths: ModelPaths, rows: list[dict] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Safety train rows (default: every commercial one; unsafe and XSTest safe weighted 3x), then
    SAFETY_EXTRA_SAFE commercial domain rows as safe."""
    if rows is None:
        rows, _ = load_rows(paths.data_dir, "safety", "train", True)
    domain, _ = load_rows(paths.data_dir, "domain", "train", True)
    extra = extra_benign_domain_rows([r["text"] for r in domain], SAFETY_EXTRA_SAFE)
    texts = [r["text"] for r in rows] + extra
    labels = np.array([io.SAFETY_LABELS.index(r["category"]) for r in rows] + [0] * len(extra))
    weights = np.array([3.0 if r["category"] != io.SAFETY_NONE or r["source"] == "xstest" else 1.0 for r in rows]
                       + [1.0] * len(extra), dtype=np.float32)
    return texts, labels, weights


def refit_safety(fp32_repository: Path, paths: ModelPaths | None = None, target: Path | None = None) -> Path:
    from services.models.evaluate import OnnxPipeline

    paths = paths or default_paths()
    target = target or WEIGHTS_DIR / "trunk" / "safety_head.npz"
    started = time.time()
    texts, labels, weights = safety_rows(paths)
    x = pooled_states(OnnxPipeline(fp32_repository), texts)
    print(f"[refit] {len(texts)} rows embedded in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    return _fit_head(target, x, labels, weights, len(io.SAFETY_LABELS), SAFETY_EPOCHS)


if __name__ == "__main__":
    head = sys.argv[1] if len(sys.argv) > 1 else ""
    if head == "safety":
        repository = Path(sys.argv[2]) if len(sys.argv) > 2 else default_paths().work_dir / "trunk-repository-fp32"
        print(refit_safety(repository))
    elif head == "jailbreak":
        from services.models.trunk import prepare_bundle

        paths = default_paths()
        bundle = Path(sys.argv[2]) if len(sys.argv) > 2 else prepare_bundle(paths.work_dir / "trunk")
        print(refit_jailbreak(paths.repository, bundle))
    else:
        raise SystemExit("usage: python -m services.models.refit safety [FP32_REPOSITORY] | jailbreak [BUNDLE]")
