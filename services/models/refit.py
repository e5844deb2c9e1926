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
and the re-fit does not add them twice; they also hold 600 short everyday instructions ("Say hello to the
team", augment.everyday_instructions), which the head had scored up to 1.0. The jailbreak re-fit starts
from the joint training's head (JOINT_JAILBREAK_HEAD), so it reproduces the committed head, and it keeps
the epoch that resists evasion best among those within FPR <= 1 % and long-benign FPR <= 2 % at the guard's
threshold (JAILBREAK_MAX_FPR says more).

`python -m services.models.refit domain-neighbours [REPOSITORY] [WEIGHTS]` writes the domain head's neighbour
vote (heads.NeighbourVote): the served trunk's embeddings of the commercial domain train rows, read from the
same head+tail row the domain head reads, with their labels. Nothing is trained; the next `switchyard models
build` blends the vote into the served domain head (NEIGHBOUR_K says why and how much).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
# The jailbreak re-fit keeps, among the epochs that keep FPR <= 1 % and the long-benign FPR <= 2 % at the guard's
# threshold on the commercial dev rows (the joint training's limits), the one that keeps the most blocked dev
# jailbreaks blocked with harmless text added (the bundle's evasion probes), then the best F1. Without the rule
# the 8th epoch served: on the 7-bit trunk it flagged 6 of 202 long benign documents (2.97 %). F1 alone picked
# epoch 1 (0.906 against 0.902), which let 6.7 % of blocked jailbreaks through with one harmless sentence added.
JAILBREAK_MAX_FPR = 0.01
# The jailbreak head as the joint training left it: every re-fit starts there, so that running it again
# reproduces the committed head instead of training the re-fitted one further.
JOINT_JAILBREAK_HEAD = WEIGHTS_DIR / "trunk" / "joint" / "jailbreak_head.npz"
JAILBREAK_MAX_FPR_LONG = 0.02
SEED = 13
# The neighbour vote (heads.NeighbourVote) over the commercial domain train rows: k = 10 (the yardstick's k),
# similarity weights exp((s - best) / 0.05), 30 % of the served distribution. On the small trunk's dev rows
# the blend reads 0.832 against the head's 0.813 and the vote's 0.801 alone; every setting of k in 10/20/50,
# temperature 0.05 and weight 0.2-0.5 gains 1.2-1.9 points (the base trunk: 0.7-1.5), so the choice is not a peak of the dev split.
NEIGHBOUR_K = 10
NEIGHBOUR_TEMPERATURE = 0.05
NEIGHBOUR_WEIGHT = 0.3
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


def pooled_rows(session, rows: list[np.ndarray], pad_id: int = 0, batch: int = POOL_BATCH) -> np.ndarray:
    """Mean + max pooled token states of token-id rows (special tokens included), as the served trunk computes
    them: length-sorted batches of `batch` rows, each padded to its longest row's bucket. The int8 trunk's
    activations are quantized per call, so a row's batch-mates move its states a little (up to 0.03 in a
    probability); batch=1 gives exactly what a request alone gets."""
    from services.common.tokenizer import bucket_width

    out = np.zeros((len(rows), 2 * io.HIDDEN_SIZE), np.float32)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch):
        chosen = order[start : start + batch]
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


def jailbreak_dev_rows(bundle: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """The bundle's commercial jailbreak dev rows (token ids), their labels, which are long (> 1,000 chars), its
    evasion probes (each commercial dev jailbreak with harmless text added) and each probe's row among them."""
    from services.models.metrics import LONG_CHARS
    from services.models.trunk import ragged_rows

    data = np.load(bundle / "trunk.npz")
    commercial = data["jailbreak_dev_commercial"]
    rows = [row for row, keep in zip(ragged_rows(data, "jailbreak_dev"), commercial) if keep]
    owners = np.searchsorted(np.flatnonzero(commercial), data["jailbreak_evasiondev_owner"])
    return (rows, data["jailbreak_dev_labels"][commercial].astype(np.int64),
            data["jailbreak_dev_chars"][commercial] > LONG_CHARS, ragged_rows(data, "jailbreak_evasiondev"), owners)


def jailbreak_epoch_score(scores: np.ndarray, labels: np.ndarray, long: np.ndarray, threshold: float) -> tuple[dict, bool]:
    """F1, FPR and long-benign FPR of jailbreak scores at `threshold`, and whether they keep the re-fit's limits."""
    flagged = scores >= threshold
    tp, fp = int((flagged & (labels == 1)).sum()), int((flagged & (labels == 0)).sum())
    fn = int((~flagged & (labels == 1)).sum())
    figures = {"f1": 2 * tp / max(2 * tp + fp + fn, 1), "fpr": fp / max(int((labels == 0).sum()), 1),
               "fpr_long_benign": int((flagged & long & (labels == 0)).sum()) / max(int((long & (labels == 0)).sum()), 1)}
    return figures, figures["fpr"] <= JAILBREAK_MAX_FPR and figures["fpr_long_benign"] <= JAILBREAK_MAX_FPR_LONG


def evasion_kept(originals: np.ndarray, probes: np.ndarray, threshold: float) -> float:
    """Of the jailbreaks blocked as they are (originals >= threshold), the share still blocked with harmless
    text added (probes: the same jailbreaks so varied, in the same order)."""
    blocked = originals >= threshold
    return round(float((probes[blocked] >= threshold).mean()), 4) if blocked.any() else 0.0


def _fit_head(target: Path, x: np.ndarray, y: np.ndarray, w: np.ndarray, classes: int, epochs: int,
              select: tuple[np.ndarray, Callable[[np.ndarray], tuple[Any, bool]]] | None = None,
              start: Path | None = None) -> Path:
    """Train the pooled head at `start` (default: the committed one at `target`) further on (x, y) with row
    weights w; write it to `target`.

    select: (pooled dev states, judge). After each epoch the judge reads the head's probabilities on those
    states and says (score, within the limits); the best epoch within the limits is kept, or the last one, with
    a warning, when none is.
    """
    import torch

    torch.manual_seed(SEED)
    head = np.load(start or target)
    hidden = head["layer0_b"].shape[0]
    net = torch.nn.Sequential(torch.nn.Linear(2 * io.HIDDEN_SIZE, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                              torch.nn.Linear(hidden, classes))
    with torch.no_grad():
        for layer, i in ((net[0], 0), (net[3], 1)):
            layer.weight.copy_(torch.from_numpy(head[f"layer{i}_w"].T))
            layer.bias.copy_(torch.from_numpy(head[f"layer{i}_b"]))
    xt, yt, wt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)
    best = None
    if select is not None:
        dev, judge = torch.from_numpy(select[0]), select[1]
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
        line = f"[refit] epoch {epoch + 1}/{epochs} loss {float(loss.detach()):.4f}"
        if select is not None:
            net.eval()
            with torch.no_grad():
                score, within = judge(torch.softmax(net(dev), 1).numpy())
            net.train()
            line += f" dev score {score}" + ("" if within else " (outside the limits)")
            if within and (best is None or score > best[0]):
                best = (score, epoch + 1, {k: v.detach().clone() for k, v in net.state_dict().items()})
        print(line, file=sys.stderr, flush=True)
    if select is not None and best is None:
        print(f"[refit] WARNING: no epoch kept the dev limits; keeping epoch {epochs}", file=sys.stderr, flush=True)
    elif select is not None:
        print(f"[refit] keeping epoch {best[1]} (dev score {best[0]})", file=sys.stderr, flush=True)
        net.load_state_dict(best[2])
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    MLP(((state["0.weight"].T, state["0.bias"]), (state["3.weight"].T, state["3.bias"]))).save(target)
    return target


def refit_jailbreak(repository: Path, bundle: Path, target: Path | None = None) -> Path:
    """Re-fit the jailbreak head on the served trunk's pooled states (repository: the built triton_models/)."""
    from services.common.config import JailbreakPolicy
    from services.models.runtime import session

    target = target or WEIGHTS_DIR / "trunk" / "jailbreak_head.npz"
    started = time.time()
    rows, labels = jailbreak_rows(bundle)
    trunk = session(repository / io.TRUNK / "1" / "model.onnx")
    x = pooled_rows(trunk, rows)
    dev_rows, dev_labels, dev_long, evasion_rows, evasion_owners = jailbreak_dev_rows(bundle)
    dev_x = pooled_rows(trunk, dev_rows + evasion_rows, batch=1)  # the epochs are judged on what requests get
    print(f"[refit] {len(rows)} rows and {len(dev_x)} commercial dev rows and evasion probes pooled in "
          f"{time.time() - started:.0f} s ({int(labels.sum())} jailbreak, {int((labels == 0).sum())} benign)",
          file=sys.stderr, flush=True)
    threshold = JailbreakPolicy().threshold
    jailbreak = io.JAILBREAK_LABELS.index("jailbreak")

    def judge(probabilities: np.ndarray) -> tuple[tuple[float, float], bool]:
        scores, probes = probabilities[: len(dev_rows), jailbreak], probabilities[len(dev_rows) :, jailbreak]
        figures, within = jailbreak_epoch_score(scores, dev_labels, dev_long, threshold)
        return (evasion_kept(scores[evasion_owners], probes, threshold), round(figures["f1"], 4)), within

    return _fit_head(target, x, labels, np.ones(len(labels), np.float32), len(io.JAILBREAK_LABELS), JAILBREAK_EPOCHS,
                     select=(dev_x, judge), start=JOINT_JAILBREAK_HEAD)


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


def build_domain_neighbours(repository: Path, weights_dir: Path, paths: ModelPaths | None = None) -> Path:
    """weights_dir/domain_neighbours.npz from the repository's embedder (the trunk those weights build)."""
    from services.models.build import DOMAIN_NEIGHBOURS
    from services.models.evaluate import OnnxPipeline
    from services.models.heads import NeighbourVote

    paths = paths or default_paths()
    rows, selection = load_rows(paths.data_dir, "domain", "train", True)
    started = time.time()
    vectors = OnnxPipeline(repository).domain_row_embeddings([r["text"] for r in rows])
    index = {label: i for i, label in enumerate(io.DOMAIN_LABELS)}
    vote = NeighbourVote(vectors, np.array([index[r["label"]] for r in rows]), NEIGHBOUR_K,
                         NEIGHBOUR_TEMPERATURE, NEIGHBOUR_WEIGHT)
    target = weights_dir / DOMAIN_NEIGHBOURS
    vote.save(target, source=np.array(selection.describe()))
    print(f"[refit] {len(rows)} domain train rows embedded in {time.time() - started:.0f} s -> {target}",
          file=sys.stderr, flush=True)
    return target


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
    elif head == "domain-neighbours":
        repository = Path(sys.argv[2]) if len(sys.argv) > 2 else default_paths().repository
        print(build_domain_neighbours(repository, Path(sys.argv[3]) if len(sys.argv) > 3 else WEIGHTS_DIR / "trunk"))
    else:
        raise SystemExit("usage: python -m services.models.refit safety [FP32_REPOSITORY] | jailbreak [BUNDLE] | "
                         "domain-neighbours [REPOSITORY] [WEIGHTS_DIR]")
