"""`switchyard train trunk`: the shared trunk and all its heads (GPU), imported into weights/, with model cards.

Also the PII helpers the trainer and the evaluator share (benign negatives, entity spans per text).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from services.common import model_io as io
from services.common.tokenizer import TextTokenizer, Truncation, decode_bio
from services.models import cards
from services.models.build import HEAD_WEIGHTS
from services.models.data import load_rows
from services.models.paths import WEIGHTS_DIR, ModelPaths


def pii_negatives(paths: ModelPaths, count: int = 1500) -> tuple[list[str], object]:
    """Short benign commercial prompts: the PII data has few PII-free sentences (see data README)."""
    rows, selection = load_rows(paths.data_dir, "jailbreak", "train", True)
    benign = [r["text"] for r in rows if r["label"] == "benign" and len(r["text"]) < 400]
    rng = np.random.default_rng(7)
    chosen = sorted(rng.choice(len(benign), size=min(count, len(benign)), replace=False))
    return [benign[i] for i in chosen], selection


def pii_entities(tokenizer: TextTokenizer, texts: list[str], token_probs: list[np.ndarray]):
    """Entity spans per text from per-token probabilities of the real word pieces (no CLS/SEP)."""
    return [[(s.start, s.end, s.label) for s in spans] for spans in pii_spans(tokenizer, texts, token_probs)]


def pii_spans(tokenizer: TextTokenizer, texts: list[str], token_probs: list[np.ndarray]):
    """EntitySpans (with scores) per text from per-token probabilities of the real word pieces."""
    batch = tokenizer.encode(texts, Truncation.CHUNKS)
    out: list[list] = [[] for _ in texts]
    for row in range(len(batch)):
        i = int(batch.text_index[row])
        n = int(batch.attention_mask[row].sum())
        probs = np.zeros((batch.input_ids.shape[1], len(io.PII_BIO_LABELS)), dtype=np.float32)
        probs[1 : n - 1] = token_probs[i][: n - 2]
        spans = decode_bio(batch.offsets[row], probs, batch.attention_mask[row], io.PII_BIO_LABELS, batch.word_ids[row])
        out[i] += spans
    return out


def gold_entities(rows: list[dict]) -> list[list[tuple[int, int, str]]]:
    return [[(s["start"], s["end"], s["label"]) for s in r["spans"] if s["label"] in io.PII_ENTITY_TYPES] for r in rows]


def _negatives_selection(selection, count: int):
    return selection.__class__(selection.file, "train", True, count, ())


TRUNK_EVAL_TASKS = ("domain", "jailbreak", "pii", "pii_guard", "safety", "cache_pair")


def trunk_repository(paths: ModelPaths, int8: bool = False) -> Path:
    """Where `switchyard train trunk` builds each precision to evaluate it."""
    return paths.work_dir / ("trunk-repository-int8" if int8 else "trunk-repository-fp32")


def evaluate_trunk(paths: ModelPaths, int8: bool = False) -> dict:
    """Build the repository (fp32 or int8) into its own folder and score every head on dev."""
    from services.models.build import build_repository
    from services.models.evaluate import EVALUATORS, OnnxPipeline

    built = ModelPaths(repository=trunk_repository(paths, int8), data_dir=paths.data_dir, work_dir=paths.work_dir)
    build_repository(built, int8=int8)
    pipeline = OnnxPipeline(built.repository)
    return {task: EVALUATORS[task](pipeline, paths) for task in TRUNK_EVAL_TASKS}


def train_trunk(paths: ModelPaths, finetuned: Path | None = None) -> dict:
    """The shared trunk: joint training (services.models.trunk; GPU) or import of its output folder, then
    dev metrics of the built trunk in fp32 and int8: cards/trunk.* compares them, and one card per head
    records the served (int8) figures, which the card test recomputes."""
    from services.models import trunk
    from services.models.build import EMBED_HEAD, TRUNK_ADAPTER, TRUNK_DIR

    if finetuned is None:
        bundle = trunk.prepare_bundle(paths.work_dir / "trunk")
        finetuned = paths.work_dir / "trunk-out"
        trunk.train(bundle, finetuned)
    target = WEIGHTS_DIR / TRUNK_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in (TRUNK_ADAPTER, EMBED_HEAD, "trunk_train.json", *HEAD_WEIGHTS.values()):
        if not (finetuned / name).is_file():
            raise FileNotFoundError(f"{finetuned / name} missing: run `python -m services.models.trunk train ...` first")
        if (finetuned / name).resolve() != (target / name).resolve():
            shutil.copyfile(finetuned / name, target / name)
    record = json.loads((target / "trunk_train.json").read_text())
    results = {"fp32": evaluate_trunk(paths), "int8": evaluate_trunk(paths, int8=True)}
    sources = ("domain", "jailbreak", "pii", "safety")
    train_sel = [load_rows(paths.data_dir, task, "train", True)[1] for task in sources]
    negatives, negatives_sel = pii_negatives(paths)
    train_sel.append(_negatives_selection(negatives_sel, len(negatives)))
    dev_sel = [load_rows(paths.data_dir, task, "dev", False)[1] for task in sources]
    method = {"method": "shared trunk: one LoRA adapter + all heads, jointly trained", **record}
    head_method = {k: v for k, v in method.items() if k not in ("history", "dev_selection")}
    head_sources = {"domain": ("domain",), "jailbreak": ("jailbreak",), "pii": ("pii",), "pii_guard": ("pii",),
                    "safety": ("safety",), "cache_pair": ()}
    for task in TRUNK_EVAL_TASKS:
        chosen = head_sources[task]
        cards.write(task, head_method, [s for s in train_sel if s.file.split(".")[0] in chosen],
                    [s for s in dev_sel if s.file.split(".")[0] in chosen], results["int8"][task])
    return cards.write_trunk(method, train_sel, dev_sel, results)


def train_base_trunk(paths: ModelPaths, finetuned: Path) -> dict:
    """Import a GPU run of the base trunk (`python -m services.models.trunk train --trunk base ...`) into
    weights/trunk_base, build it (int8) into its own repository, and write cards/trunk_base.*: the served
    domain head's dev figures (recomputed by the card test) beside the GPU run's for every head."""
    from services.models.build import EMBED_HEAD, TRUNK_ADAPTER, TRUNK_WEIGHTS, build_repository
    from services.models.evaluate import OnnxPipeline, evaluate_domain
    from services.models.paths import base_trunk_repository

    target = WEIGHTS_DIR / TRUNK_WEIGHTS["base"]
    target.mkdir(parents=True, exist_ok=True)
    for name in (TRUNK_ADAPTER, EMBED_HEAD, "trunk_train.json", *HEAD_WEIGHTS.values()):
        if not (finetuned / name).is_file():
            raise FileNotFoundError(f"{finetuned / name} missing: run `python -m services.models.trunk train --trunk "
                                    "base ...` first")
        if (finetuned / name).resolve() != (target / name).resolve():
            shutil.copyfile(finetuned / name, target / name)
    repository = base_trunk_repository(paths.work_dir)
    build_repository(ModelPaths(repository=repository, data_dir=paths.data_dir, work_dir=paths.work_dir), trunk="base")
    results = {"domain": evaluate_domain(OnnxPipeline(repository), paths)}
    record = json.loads((target / "trunk_train.json").read_text())
    small = json.loads((WEIGHTS_DIR / TRUNK_WEIGHTS["small"] / "trunk_train.json").read_text())
    gpu_file = target / "gpu_figures.json"
    gpu = json.loads(gpu_file.read_text()) if gpu_file.is_file() else None
    sources = ("domain", "jailbreak", "pii", "safety")
    train_sel = [load_rows(paths.data_dir, task, "train", True)[1] for task in sources]
    dev_sel = [load_rows(paths.data_dir, task, "dev", False)[1] for task in sources]
    method = {"method": "base shared trunk: one LoRA adapter + all heads on all-mpnet-base-v2, jointly trained",
              **record}
    return cards.write_base_trunk(method, small, train_sel, dev_sel, results, gpu)
