"""The shared trunk: one MiniLM fine-tuned jointly for every head, its sentence embedding distilled to the base.

Every task head (domain, jailbreak, PII tags, and the embedder's pooling) reads the token states of one
encoder, so a request costs one trunk pass per window instead of one encoder pass per task. The trunk
is all-MiniLM-L6-v2 plus one LoRA adapter trained on all tasks at once; a distillation term keeps its
mean-pooled embedding next to the original model's, so the cache's similarity thresholds keep their
meaning. Rows are the serving window plan's rows (services.common.tokenizer), so training sees what
serving sends.

prepare_bundle() runs here (commercial train rows, all dev rows, tokenized) and writes .switchyard/trunk/;
`python -m services.models.trunk train BUNDLE OUT` trains where a GPU is and writes trunk_lora.npz,
the three head .npz files (services.models.heads.MLP format) and trunk_train.json;
`python -m services.models.trunk figures BUNDLE OUT` times the merged trunk with its heads in fp16.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from services.models import lora

LABEL_COUNTS = {"domain": 14, "jailbreak": 2, "pii": 15}
# Rank 128 on every linear layer of the 6 blocks: 5.3 M parameters (10.6 MB in fp16) for all tasks together;
# alpha = 2 * rank (the per-task adapters' scale). Rank 64 with distillation weight 20 lost 3 points of
# domain accuracy and 1.5 of jailbreak F1 (see the trunk card's history).
RANK = 128
# Weight of the distillation term (1 - cosine to the base embedding) against the task losses.
DISTILL_WEIGHT = 5.0
BATCH_SIZE = 32
EPOCHS = 7
DOMAIN_LABEL_SMOOTHING = 0.1
SEED = 13
LR_ADAPTER = 5e-4
LR_HEADS = 1e-3
# Texts that only feed the distillation term: the cache's own kind of text (commercial train pairs).
DISTILL_TASK = "cache"


# Bundle (runs here) -----------------------------------------------------------------------------------

def _ragged(prefix: str, batch, arrays: dict, tags: np.ndarray | None = None) -> None:
    lengths = batch.attention_mask.sum(axis=1)
    arrays[f"{prefix}_len"] = lengths.astype(np.int32)
    arrays[f"{prefix}_ids"] = np.concatenate([batch.input_ids[i, :n] for i, n in enumerate(lengths)]).astype(np.uint16)
    if tags is not None:
        arrays[f"{prefix}_tags"] = np.concatenate([tags[i, :n] for i, n in enumerate(lengths)]).astype(np.int8)


def prepare_bundle(out_dir: Path, limit: int | None = None) -> Path:
    """Write <out_dir>/trunk.npz (ragged uint16 ids per split and task) and the compact fp16 base model."""
    import json as _json

    from services.common import model_io as io
    from services.common.tokenizer import TextTokenizer, Truncation
    from services.models.data import load_rows
    from services.models.features import token_labels
    from services.models.finetune import mix_pii_examples
    from services.models.paths import default_paths
    from services.models.train import pii_negatives

    paths = default_paths()
    tokenizer = TextTokenizer.from_repository(paths.repository)
    arrays: dict[str, np.ndarray] = {}

    def rows(task: str, split: str, commercial: bool) -> list[dict]:
        found, _ = load_rows(paths.data_dir, task, split, commercial)
        return found[:limit] if limit else found

    domain_index = {label: i for i, label in enumerate(io.DOMAIN_LABELS)}
    for split in ("train", "dev"):
        # Dev rows of every license are scored (never trained on); model selection uses commercial dev rows.
        d = rows("domain", split, split == "train")
        _ragged(f"domain_{split}", tokenizer.encode([r["text"] for r in d], Truncation.HEAD_TAIL), arrays)
        arrays[f"domain_{split}_labels"] = np.array([domain_index[r["label"]] for r in d], dtype=np.int64)
        j = rows("jailbreak", split, split == "train")
        _ragged(f"jailbreak_{split}", tokenizer.encode([r["text"] for r in j], Truncation.HEAD_TAIL), arrays)
        arrays[f"jailbreak_{split}_labels"] = np.array([r["label"] == "jailbreak" for r in j], dtype=np.int64)
        arrays[f"jailbreak_{split}_chars"] = np.array([len(r["text"]) for r in j], dtype=np.int64)
        arrays[f"jailbreak_{split}_commercial"] = np.array([r["commercial_ok"] for r in j], dtype=bool)
        p = rows("pii", split, True)
        texts, spans = [r["text"] for r in p], [r["spans"] for r in p]
        if split == "train":
            negatives, _ = pii_negatives(paths)
            negatives = negatives[:limit] if limit else negatives
            mixed_texts, mixed_spans = mix_pii_examples(texts, spans, negatives, count=min(6000, 3 * len(texts)))
            texts, spans = texts + negatives + mixed_texts, spans + [[] for _ in negatives] + mixed_spans
        batch = tokenizer.encode(texts, Truncation.CHUNKS)
        tags = np.stack([token_labels(batch, i, spans[int(batch.text_index[i])]) for i in range(len(batch))])
        _ragged(f"pii_{split}", batch, arrays, tags)
        c = rows_pairs(paths.data_dir, split, limit)
        batch = tokenizer.encode([t for r in c for t in (r["a"], r["b"])], Truncation.HEAD)
        _ragged(f"cache_{split}", batch, arrays)
        arrays[f"cache_{split}_same"] = np.array([r["label"] == "same" for r in c], dtype=bool)
    out_dir.mkdir(parents=True, exist_ok=True)
    used = np.unique(np.concatenate([v for k, v in arrays.items() if k.endswith("_ids")]).astype(np.int64))
    arrays["vocab"] = used
    np.savez_compressed(out_dir / "trunk.npz", **arrays)
    _write_compact_base(out_dir / "base", used)
    (out_dir / "bundle.json").write_text(_json.dumps({k: list(v.shape) for k, v in arrays.items()}, indent=1))
    return out_dir


def rows_pairs(data_dir: Path, split: str, limit: int | None) -> list[dict]:
    """cache_pairs rows: commercial ones for training, every row for dev."""
    out = []
    with (Path(data_dir) / "cache_pairs.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["split"] == split and (row["commercial_ok"] or split != "train"):
                out.append(row)
    return out[:limit] if limit else out


def _write_compact_base(target: Path, used: np.ndarray) -> None:
    """fp16 base weights with only the word-embedding rows the bundle uses (the copy must travel small).

    The embeddings are frozen during training, so rows no text uses never matter; the committed adapter
    is merged into the full fp32 base model at build time.
    """
    from safetensors.numpy import load_file, save_file

    from services.models.encoder_export import base_model_dir

    source = base_model_dir()
    tensors = load_file(str(source / "model.safetensors"))
    out = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in tensors.items()}
    out["embeddings.word_embeddings.weight"] = tensors["embeddings.word_embeddings.weight"][used].astype(np.float16)
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(target / "compact.safetensors"))
    (target / "config.json").write_text((source / "config.json").read_text())


# Training (runs on the GPU) ---------------------------------------------------------------------------

def load_base(bundle: Path, device):
    """The base BertModel (fp32) from the compact copy; unused vocabulary rows are zero."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(bundle / "base"))
    model = AutoModel.from_config(config)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(bundle / "base" / "compact.safetensors")).items()}
    vocab = torch.from_numpy(np.load(bundle / "trunk.npz")["vocab"])
    full = torch.zeros(config.vocab_size, config.hidden_size)
    full[vocab] = tensors["embeddings.word_embeddings.weight"]
    tensors["embeddings.word_embeddings.weight"] = full
    tensors.pop("embeddings.position_ids", None)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if [m for m in missing if "position_ids" not in m] or unexpected:
        raise RuntimeError(f"base weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.to(device).eval()


def _padded(data, prefix: str, device, with_tags: bool = False):
    import torch

    lengths = data[f"{prefix}_len"].astype(np.int64)
    ids_flat = data[f"{prefix}_ids"].astype(np.int64)
    # Every row padded to the full window, so rows of different tasks slice to one width.
    width = max(256, int(lengths.max()) if len(lengths) else 2)
    ids = np.zeros((len(lengths), width), dtype=np.int64)
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


def _heads(device):
    import torch

    def mlp(width: int, hidden: int, out: int):
        return torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                   torch.nn.Linear(hidden, out))

    # The embedder's head: a linear map of the mean-pooled states back into the base model's embedding
    # space (identity at the start). The trunk may then move its states for the classifiers as long as
    # the base embedding stays linearly recoverable; the cache sees the mapped, normalised vector.
    embed = torch.nn.Linear(384, 384)
    with torch.no_grad():
        embed.weight.copy_(torch.eye(384))
        embed.bias.zero_()
    return torch.nn.ModuleDict({
        "domain": mlp(768, 512, LABEL_COUNTS["domain"]),
        "jailbreak": mlp(768, 512, LABEL_COUNTS["jailbreak"]),
        "pii": mlp(384, 256, LABEL_COUNTS["pii"]),
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


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))


def evaluate(student, teacher, heads, dev: dict, data) -> dict:
    """Dev metrics in fp32 (what the exported ONNX computes): the selection and the card's first look."""
    import torch

    student.eval()
    heads.eval()
    out: dict = {}
    with torch.no_grad():
        def run(prefix, fn, size=128):
            ids, mask = dev[prefix][0], dev[prefix][1]
            return [fn(*_encode(student, ids[i : i + size], mask[i : i + size], False), i) for i in range(0, len(ids), size)]

        probs = torch.cat(run("domain", lambda s, m, w, i: torch.softmax(heads["domain"](_pooled(s, m)), -1)))
        y = dev["domain"][2]
        out["domain_accuracy"] = float((probs.argmax(1) == y).float().mean())
        scores = torch.cat(run("jailbreak", lambda s, m, w, i: torch.softmax(heads["jailbreak"](_pooled(s, m)), -1)[:, 1]))
        scores = scores.cpu().numpy()
        y = dev["jailbreak"][2].cpu().numpy()
        commercial = data["jailbreak_dev_commercial"]
        long_neg = (y == 0) & (data["jailbreak_dev_chars"] > 1000) & commercial
        pred = scores >= 0.5
        yc, pc = y[commercial], pred[commercial]
        tp, fp, fn = (pc & (yc == 1)).sum(), (pc & (yc == 0)).sum(), (~pc & (yc == 1)).sum()
        out["jailbreak_f1"] = float(2 * tp / max(2 * tp + fp + fn, 1))
        out["jailbreak_fpr"] = float(fp / max((yc == 0).sum(), 1))
        out["jailbreak_fpr_long"] = float((pred & long_neg).sum() / max(long_neg.sum(), 1))
        preds = run("pii", lambda s, m, w, i: torch.nn.functional.pad(heads["pii"](s).argmax(-1), (0, dev["pii"][0].shape[1] - w), value=0))
        pred = torch.cat(preds)
        tags = dev["pii"][2]
        valid = tags != -100
        tp = ((pred == tags) & (tags > 0) & valid).sum()
        out["pii_token_f1"] = float(2 * tp / max(int(((pred > 0) & valid).sum() + (tags > 0).sum()), 1))
        ids, mask = dev["cache"][0], dev["cache"][1]
        student_emb, teacher_emb = [], []
        for i in range(0, len(ids), 256):
            s, m, _ = _encode(student, ids[i : i + 256], mask[i : i + 256], False)
            t, tm, _ = _encode(teacher, ids[i : i + 256], mask[i : i + 256], False)
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
        out["cache_dev_auc_trunk"] = _auc(sim_student, same)
        out["cache_dev_auc_base"] = _auc(sim_teacher, same)
        # Same hit/miss verdict as the base embedding at the cache's similarity threshold (0.89)?
        out["cache_threshold_agreement"] = float(((sim_student >= 0.89) == (sim_teacher >= 0.89)).mean())
    student.train()
    heads.train()
    return {k: round(v, 4) for k, v in out.items()}


def _selection_value(m: dict) -> float:
    within = m["jailbreak_fpr"] <= 0.01 and m["jailbreak_fpr_long"] <= 0.02
    return m["domain_accuracy"] + m["jailbreak_f1"] + m["pii_token_f1"] - (0.0 if within else 1.0)


def _teacher_targets(teacher, ids, mask, lengths: np.ndarray):
    """The base model's normalised mean-pooled embedding of every row (fp32, computed once)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(ids), 512):
            width = int(lengths[i : i + 512].max())
            states = teacher(input_ids=ids[i : i + 512, :width], attention_mask=mask[i : i + 512, :width]).last_hidden_state
            out.append(_sentence(states.float(), mask[i : i + 512, :width]))
    return torch.cat(out)


def train(bundle: Path, out: Path, epochs: int = EPOCHS, seed: int = SEED, max_steps: int | None = None,
          rank: int = RANK, distill_weight: float = DISTILL_WEIGHT) -> dict:
    """Joint training: every step is one forward over BATCH_SIZE rows of each task, padded together."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = np.load(bundle / "trunk.npz")
    teacher = load_base(bundle, device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    prefixes = {"domain": "domain_train", "jailbreak": "jailbreak_train", "pii": "pii_train", DISTILL_TASK: "cache_train"}
    tasks = tuple(prefixes)
    sets, lengths, targets = {}, {}, {}
    for task, prefix in prefixes.items():
        sets[task] = _padded(data, prefix, device, with_tags=task == "pii")
        lengths[task] = data[f"{prefix}_len"].astype(np.int64)
        targets[task] = _teacher_targets(teacher, sets[task][0], sets[task][1], lengths[task])
    labels = {t: torch.from_numpy(data[f"{t}_train_labels"]).to(device) for t in ("domain", "jailbreak")}
    dev = {
        "domain": (*_padded(data, "domain_dev", device), torch.from_numpy(data["domain_dev_labels"]).to(device)),
        "jailbreak": (*_padded(data, "jailbreak_dev", device), torch.from_numpy(data["jailbreak_dev_labels"]).to(device)),
        "pii": tuple(_padded(data, "pii_dev", device, with_tags=True)),
        "cache": tuple(_padded(data, "cache_dev", device)),
    }
    student = load_base(bundle, device)
    lora.add_adapters(student, rank=rank, alpha=2.0 * rank)
    student.to(device).train()
    heads = _heads(device)
    steps_per_epoch = max((len(v) + BATCH_SIZE - 1) // BATCH_SIZE for v in lengths.values())
    if max_steps:
        steps_per_epoch = min(steps_per_epoch, max_steps)
    total = epochs * steps_per_epoch
    adapter_params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": adapter_params, "lr": LR_ADAPTER}, {"params": heads.parameters(), "lr": LR_HEADS}],
                                  weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[LR_ADAPTER, LR_HEADS], total_steps=total, pct_start=0.1)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
    # Domain labels overlap (other/health, engineering/physics): smoothing keeps the head from memorising.
    domain_loss = torch.nn.CrossEntropyLoss(label_smoothing=DOMAIN_LABEL_SMOOTHING)
    orders = {task: np.zeros(0, dtype=np.int64) for task in tasks}

    def next_batch(task: str) -> np.ndarray:
        if len(orders[task]) < BATCH_SIZE:
            orders[task] = np.concatenate([orders[task], rng.permutation(len(lengths[task]))])
        idx, orders[task] = orders[task][:BATCH_SIZE], orders[task][BATCH_SIZE:]
        return idx

    history, best = [], None
    started = time.time()
    for epoch in range(1, epochs + 1):
        sums = {"domain": 0.0, "jailbreak": 0.0, "pii": 0.0, "distill": 0.0}
        for _ in range(steps_per_epoch):
            chosen = {task: next_batch(task) for task in tasks}
            # Widths are known on the host: no device synchronisation inside the step.
            width = int(max(lengths[t][i].max() for t, i in chosen.items()))
            index = {t: torch.from_numpy(i).to(device, non_blocking=True) for t, i in chosen.items()}
            ids = torch.cat([sets[t][0][index[t], :width] for t in tasks])
            mask = torch.cat([sets[t][1][index[t], :width] for t in tasks])
            target = torch.cat([targets[t][index[t]] for t in tasks])
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                states = student(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            distill = (1 - (_sentence(states, mask, heads["embed"]) * target).sum(-1)).mean()
            part = {t: slice(k * BATCH_SIZE, (k + 1) * BATCH_SIZE) for k, t in enumerate(tasks)}
            losses = {
                t: (domain_loss if t == "domain" else loss_fn)(heads[t](_pooled(states[part[t]], mask[part[t]])), labels[t][index[t]])
                for t in ("domain", "jailbreak")
            }
            logits = heads["pii"](states[part["pii"]])
            losses["pii"] = loss_fn(logits.reshape(-1, logits.shape[-1]), sets["pii"][2][index["pii"], :width].reshape(-1))
            loss = sum(losses.values()) + distill_weight * distill
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for t, value in losses.items():
                sums[t] += value.detach()
            sums["distill"] += distill.detach()
        metrics = evaluate(student, teacher, heads, dev, data)
        metrics["epoch"] = epoch
        metrics["train_loss"] = {k: round(float(v) / steps_per_epoch, 4) for k, v in sums.items()}
        metrics["seconds"] = round(time.time() - started, 1)
        history.append(metrics)
        print(json.dumps(metrics), flush=True)
        value = _selection_value(metrics)
        if best is None or value > best[0]:
            best = (value, epoch, lora.adapter_arrays(student),
                    {k: v.detach().cpu().numpy().copy() for k, v in heads.state_dict().items()})
            _save(out, best, history, epochs, steps_per_epoch, seed, rank, distill_weight)
    assert best is not None
    return _save(out, best, history, epochs, steps_per_epoch, seed, rank, distill_weight)


def _save(out: Path, best, history: list, epochs: int, steps_per_epoch: int, seed: int, rank: int,
          distill_weight: float) -> dict:
    """Write the adapter, the heads and the record (after every better epoch, so a cut-off run keeps its best)."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "trunk_lora.npz", **{k: v.astype(np.float16) for k, v in best[2].items()})
    for task in ("domain", "jailbreak", "pii"):
        hs = best[3]
        np.savez_compressed(out / f"{task}_head.npz",
                            layer0_w=hs[f"{task}.0.weight"].T.astype(np.float32), layer0_b=hs[f"{task}.0.bias"].astype(np.float32),
                            layer1_w=hs[f"{task}.3.weight"].T.astype(np.float32), layer1_b=hs[f"{task}.3.bias"].astype(np.float32))
    hs = best[3]
    np.savez_compressed(out / "embed_head.npz", layer0_w=hs["embed.weight"].T.astype(np.float32),
                        layer0_b=hs["embed.bias"].astype(np.float32))
    record = {
        "selected_epoch": best[1],
        "selection_rule": "best domain accuracy + jailbreak F1 + PII token F1 among epochs with jailbreak FPR <= 1 % "
                          "and long-benign FPR <= 2 % (commercial dev rows)",
        "dev_selection": next(h for h in history if h["epoch"] == best[1]),
        "history": history,
        "rank": rank, "lora_alpha": 2.0 * rank, "distill_weight": distill_weight, "domain_label_smoothing": DOMAIN_LABEL_SMOOTHING,
        "distill": "1 - cosine between the embedder head's output (linear map of the mean-pooled trunk states, "
                   "normalised) and all-MiniLM-L6-v2's embedding of the same row, on every training row", "batch_size_per_task": BATCH_SIZE,
        "epochs": epochs, "steps_per_epoch": steps_per_epoch, "seed": seed, "lr_adapters": LR_ADAPTER, "lr_heads": LR_HEADS,
        "weight_decay": 0.01, "schedule": "one-cycle, 10 % warm-up",
        "precision": f"bf16 autocast on {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
        "lora_targets": ", ".join(lora.TARGETS) + " of all 6 layers",
        "command": f"python -m services.models.trunk train .switchyard/trunk OUT {epochs} 0 {rank} {distill_weight:g}",
    }
    (out / "trunk_train.json").write_text(json.dumps(record, indent=1))
    return record


# GPU figures ------------------------------------------------------------------------------------------

def figures(bundle: Path, trained: Path, out: Path) -> dict:
    """fp16 trunk (adapter merged) + all heads: sequences/s at 32/128/256 tokens, batch-1 latency."""
    import torch

    device = torch.device("cuda")
    model = load_base(bundle, device)
    lora.merge_adapter(model, trained / "trunk_lora.npz")
    model = model.half().eval()
    heads = _heads(device).half().eval()
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


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "prepare":
        prepare_bundle(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
    elif command == "train":
        train(Path(sys.argv[2]), Path(sys.argv[3]), epochs=int(sys.argv[4]) if len(sys.argv) > 4 else EPOCHS,
              max_steps=int(sys.argv[5]) or None if len(sys.argv) > 5 else None,
              rank=int(sys.argv[6]) if len(sys.argv) > 6 else RANK,
              distill_weight=float(sys.argv[7]) if len(sys.argv) > 7 else DISTILL_WEIGHT)
    elif command == "figures":
        figures(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]) if len(sys.argv) > 4 else Path(sys.argv[3]))
    else:
        raise SystemExit(f"unknown command {command!r}: use prepare, train or figures")
