"""`switchyard train {domain,jailbreak,pii}`: seeded heads on the frozen encoder, weights + model card."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from services.common import model_io as io
from services.common.tokenizer import TextTokenizer, Truncation, decode_bio
from services.models import cards, metrics
from services.models.build import HEAD_WEIGHTS, onnx_path
from services.models.data import load_rows
from services.models.encoder_export import copy_tokenizer, export_encoder
from services.models.features import encoder_tag, feature_name, pooled_features, token_features
from services.models.heads import MLP
from services.models.mlp_training import HeadRecipe, softmax, train_mlp
from services.models.paths import WEIGHTS_DIR, ModelPaths
from services.models.runtime import session

RECIPES = {
    "domain": HeadRecipe(hidden=(512,), epochs=25, weight_decay=1e-2, dropout=0.3, balanced_classes=True),
    "jailbreak": HeadRecipe(hidden=(512,), epochs=30, weight_decay=1e-2, dropout=0.3),
    "pii": HeadRecipe(hidden=(256,), epochs=12, batch_size=512, weight_decay=1e-3, dropout=0.1, balanced_classes=False),
}
TASKS = tuple(RECIPES)


class _Encoder:
    """The base encoder ONNX (exported on demand) plus tokenizer, shared by the feature extractors."""

    def __init__(self, paths: ModelPaths) -> None:
        path = onnx_path(paths.repository, io.ENCODER)
        if not path.is_file():
            export_encoder(path)
        copy_tokenizer(path.parent.parent)
        self.tag = encoder_tag(path)
        self.session = session(path)
        self.tokenizer = TextTokenizer.from_repository(paths.repository)


def _pooled(paths: ModelPaths, encoder: _Encoder, task: str, split: str, commercial_only: bool):
    rows, selection = load_rows(paths.data_dir, task, split, commercial_only)
    name = feature_name(task, split, commercial_only, encoder.tag)
    x = pooled_features(paths.cache_dir, name, encoder.session, encoder.tokenizer, [r["text"] for r in rows])
    return rows, selection, x


def train_domain(paths: ModelPaths) -> dict:
    encoder = _Encoder(paths)
    train_rows, train_sel, x = _pooled(paths, encoder, "domain", "train", True)
    dev_rows, dev_sel, x_dev = _pooled(paths, encoder, "domain", "dev", True)
    index = {label: i for i, label in enumerate(io.DOMAIN_LABELS)}
    y = np.array([index[r["label"]] for r in train_rows])
    y_dev = np.array([index[r["label"]] for r in dev_rows])
    recipe = RECIPES["domain"]
    head, epoch, _ = train_mlp(x, y, len(index), recipe, lambda h: float((h.logits(x_dev).argmax(1) == y_dev).mean()))
    head.save(WEIGHTS_DIR / HEAD_WEIGHTS[io.DOMAIN_HEAD])
    return _frozen_method(recipe, epoch), [train_sel], [dev_sel]


def train_jailbreak(paths: ModelPaths) -> dict:
    encoder = _Encoder(paths)
    train_rows, train_sel, x = _pooled(paths, encoder, "jailbreak", "train", True)
    dev_rows, dev_sel, x_dev = _pooled(paths, encoder, "jailbreak", "dev", False)
    y = np.array([r["label"] == "jailbreak" for r in train_rows], dtype=np.int64)
    y_dev = np.array([r["label"] == "jailbreak" for r in dev_rows], dtype=np.int64)
    lengths = np.array([len(r["text"]) for r in dev_rows])
    # Model selection sees only commercial dev rows; non-commercial rows are reported, never selected on.
    commercial = np.array([r["commercial_ok"] for r in dev_rows])

    def f1(h: MLP) -> float:
        scores = softmax(h.logits(x_dev[commercial]))[:, 1]
        return metrics.binary_report(y_dev[commercial], scores, lengths[commercial])["f1"]

    recipe = RECIPES["jailbreak"]
    head, epoch, _ = train_mlp(x, y, 2, recipe, f1)
    head.save(WEIGHTS_DIR / HEAD_WEIGHTS[io.JAILBREAK_HEAD])
    return _frozen_method(recipe, epoch), [train_sel], [dev_sel]


def _pii_tokens(paths: ModelPaths, encoder: _Encoder, split: str, extra_negatives: list[str] = ()):
    rows, selection = load_rows(paths.data_dir, "pii", split, True)
    texts = [r["text"] for r in rows] + list(extra_negatives)
    spans = [r["spans"] for r in rows] + [[] for _ in extra_negatives]
    name = feature_name("pii", split, True, encoder.tag) + (f"_neg{len(extra_negatives)}" if extra_negatives else "")
    hidden, labels, text = token_features(paths.cache_dir, name, encoder.session, encoder.tokenizer, texts, spans)
    return rows, selection, hidden.astype(np.float32), labels, text


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


def train_pii(paths: ModelPaths) -> dict:
    encoder = _Encoder(paths)
    negatives, negatives_sel = pii_negatives(paths)
    _, train_sel, x, y, _ = _pii_tokens(paths, encoder, "train", negatives)
    dev_rows, dev_sel, x_dev, y_dev, text_dev = _pii_tokens(paths, encoder, "dev")

    def token_f1(h: MLP) -> float:
        pred = h.logits(x_dev).argmax(1)
        tp = ((pred == y_dev) & (y_dev > 0)).sum()
        return float(2 * tp / max((pred > 0).sum() + (y_dev > 0).sum(), 1))

    recipe = RECIPES["pii"]
    head, epoch, _ = train_mlp(x, y, len(io.PII_BIO_LABELS), recipe, token_f1)
    head.save(WEIGHTS_DIR / HEAD_WEIGHTS[io.PII_HEAD])
    return _frozen_method(recipe, epoch), [train_sel, _negatives_selection(negatives_sel, len(negatives))], [dev_sel]


def _negatives_selection(selection, count: int):
    return selection.__class__(selection.file, "train", True, count, ())


def _frozen_method(recipe: HeadRecipe, epoch: int) -> dict:
    return {"method": "frozen encoder + MLP head (CPU)", "head": asdict(recipe), "selected_epoch": epoch}


def _selections(paths: ModelPaths, task: str) -> tuple[list, list]:
    """Provenance for the card: the same row filters the trainers use."""
    _, train_sel = load_rows(paths.data_dir, task, "train", True)
    _, dev_sel = load_rows(paths.data_dir, task, "dev", task != "jailbreak")
    train = [train_sel]
    if task == "pii":
        negatives, negatives_sel = pii_negatives(paths)
        train.append(_negatives_selection(negatives_sel, len(negatives)))
    return train, [dev_sel]


def _import_finetuned(task: str, source: Path) -> dict:
    """Copy <task>_encoder_lora.npz and <task>_head.npz (from finetune.py) into the committed weights."""
    for name in (f"{task}_encoder_lora.npz", f"{task}_head.npz"):
        if not (source / name).is_file():
            raise FileNotFoundError(f"{source / name} missing: run `python -m services.models.finetune {task} ...` first")
        if (source / name).resolve() != (WEIGHTS_DIR / name).resolve():
            shutil.copyfile(source / name, WEIGHTS_DIR / name)
    record_path = WEIGHTS_DIR / f"{task}_finetune.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    return {"method": "LoRA fine-tuned encoder (merged at build time) + MLP head", **record}


def train(task: str, paths: ModelPaths, method: str = "frozen", finetuned: Path | None = None) -> dict:
    """Train one task, rebuild the repository, evaluate the built models on dev and write the model card.

    method "frozen": head on the frozen encoder (CPU, minutes); removes the task's encoder adapter.
    method "finetune": LoRA adapter + head; imports them from `finetuned` (a finetune.py output folder),
    or, without it, runs finetune.py here (GPU strongly advised).
    """
    if method == "frozen":
        for stale in (f"{task}_encoder_lora.npz", f"{task}_finetune.json"):
            (WEIGHTS_DIR / stale).unlink(missing_ok=True)
        trainer = {"domain": train_domain, "jailbreak": train_jailbreak, "pii": train_pii}[task]
        method_record, train_sel, dev_sel = trainer(paths)
        _, dev_sel = _selections(paths, task)
    elif method == "finetune":
        if finetuned is None:
            from services.models.finetune import finetune, prepare_bundle

            bundle = prepare_bundle(task, paths.work_dir / "gpu")
            finetuned = paths.work_dir / "finetune" / task
            finetune(task, bundle, finetuned)
        method_record = _import_finetuned(task, finetuned)
        train_sel, dev_sel = _selections(paths, task)
    else:
        raise ValueError(f"unknown training method {method!r}; use 'frozen' or 'finetune'")
    from services.models.build import build_repository
    from services.models.evaluate import EVALUATORS, OnnxPipeline

    build_repository(paths)
    results = EVALUATORS[task](OnnxPipeline(paths.repository), paths)
    return cards.write(task, method_record, train_sel, dev_sel, results)


TRUNK_EVAL_TASKS = ("domain", "jailbreak", "pii", "pii_guard")


def trunk_repository(paths: ModelPaths, int8: bool = False) -> Path:
    """Where `switchyard train trunk` builds the trunk layout to evaluate it (triton_models/ keeps the default)."""
    return paths.work_dir / ("trunk-repository-int8" if int8 else "trunk-repository-fp32")


def evaluate_trunk(paths: ModelPaths, int8: bool = False) -> dict:
    """Build the trunk layout (fp32 or int8) into its own repository and score every task on dev."""
    from services.models.build import build_trunk_repository
    from services.models.evaluate import EVALUATORS, OnnxPipeline

    built = ModelPaths(repository=trunk_repository(paths, int8), data_dir=paths.data_dir, work_dir=paths.work_dir)
    build_trunk_repository(built, int8=int8)
    pipeline = OnnxPipeline(built.repository)
    return {task: EVALUATORS[task](pipeline, paths) for task in TRUNK_EVAL_TASKS}


def train_trunk(paths: ModelPaths, finetuned: Path | None = None) -> dict:
    """The shared trunk: joint training (services.models.trunk; GPU) or import of its output folder,
    then dev metrics of the built trunk in fp32 and int8, written to cards/trunk.*."""
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
    train_sel = [load_rows(paths.data_dir, task, "train", True)[1] for task in ("domain", "jailbreak", "pii")]
    negatives, negatives_sel = pii_negatives(paths)
    train_sel.append(_negatives_selection(negatives_sel, len(negatives)))
    dev_sel = [load_rows(paths.data_dir, task, "dev", False)[1] for task in ("domain", "jailbreak", "pii")]
    return cards.write_trunk({"method": "shared trunk: one LoRA adapter + all heads, jointly trained", **record},
                             train_sel, dev_sel, results)
