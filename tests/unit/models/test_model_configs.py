"""Committed config.pbtxt files are exactly what the code (tensor constants) generates."""

from __future__ import annotations

from pathlib import Path

from services.common import model_io as io
from services.models.configs import repository_configs

REPOSITORY = Path(__file__).resolve().parents[3] / "triton_models"


def test_committed_configs_match_the_constants() -> None:
    generated = repository_configs()
    for name, text in generated.items():
        path = REPOSITORY / name / "config.pbtxt"
        assert path.is_file(), f"{path} missing: run `switchyard models build`"
        assert path.read_text() == text, f"{path} is stale: run `switchyard models build` and commit it"
    on_disk = {p.parent.name for p in REPOSITORY.glob("*/config.pbtxt")}
    assert on_disk == set(generated), f"unexpected model folders: {on_disk - set(generated)}"


def test_every_model_uses_onnxruntime_and_dynamic_batching() -> None:
    for name, text in repository_configs().items():
        if name in io.ENSEMBLE_NAMES:
            assert 'platform: "ensemble"' in text
            continue
        assert 'backend: "onnxruntime"' in text
        assert "dynamic_batching" in text
        # Kept generic: the deployment (Helm) decides devices and accelerators.
        assert "instance_group" not in text and "KIND_GPU" not in text


def test_ensembles_expose_the_contract() -> None:
    configs = repository_configs()
    for spec in io.ENSEMBLE_SPECS:
        text = configs[spec.name]
        for tensor in (*spec.inputs, *spec.outputs):
            assert f'name: "{tensor.name}"' in text
