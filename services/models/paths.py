"""Where model build inputs and outputs live (repository, weights, cards, caches, data)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parents[1]
WEIGHTS_DIR = PACKAGE_DIR / "weights"
CARDS_DIR = PACKAGE_DIR / "cards"
BACKEND_SOURCE = PACKAGE_DIR / "triton_backend" / "model.py"


@dataclass(frozen=True)
class ModelPaths:
    """Folders one build/train/eval run works with; defaults fit a checkout next to ../shared."""

    repository: Path = PROJECT_ROOT / "triton_models"
    data_dir: Path = PROJECT_ROOT.parent / "shared" / "data"
    work_dir: Path = PROJECT_ROOT / ".switchyard"

    @property
    def cache_dir(self) -> Path:
        return self.work_dir / "cache"

    @property
    def backend_dir(self) -> Path:
        return self.work_dir / "triton-backends"

    @property
    def reports_dir(self) -> Path:
        return self.work_dir / "reports"


def base_trunk_repository(work_dir: Path) -> Path:
    """Where the base trunk's repository is built for its card and its test (`make base-models`); to serve
    it, build it into the served repository instead (`make models TRUNK=base`)."""
    return Path(work_dir) / "base-repository"


def base_encoder_path(work_dir: Path) -> Path:
    """The frozen base model (all-MiniLM-L6-v2) as ONNX, with `<name>.tokenizer.json` beside it: the k-NN
    yardstick's encoder. A build output, outside Triton's repository: nothing serves it."""
    return Path(work_dir) / "build" / "base_encoder.onnx"


def base_tokenizer_path(work_dir: Path) -> Path:
    return base_encoder_path(work_dir).with_suffix(".tokenizer.json")


def default_paths() -> ModelPaths:
    # SWITCHYARD_DATA_DIR lets CI point at the data without a config file (the models CLI has no config).
    data = os.environ.get("SWITCHYARD_DATA_DIR")
    return ModelPaths(data_dir=Path(data)) if data else ModelPaths()
