"""The model cards' dev metrics are what the committed weights (built to ONNX) really score."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.triton_server import repository_problems
from services.models import cards
from services.models.cli import TASKS
from services.models.evaluate import EVALUATORS, OnnxPipeline
from services.models.paths import default_paths

# `make test-data` runs these (the data cannot live in the repo); `make test` passes without it.
pytestmark = pytest.mark.needs_data

REPOSITORY = Path(__file__).resolve().parents[3] / "triton_models"
TOLERANCE = 0.002  # thread scheduling may move a borderline row; more than that means a stale card


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, float):
        yield prefix, value


@pytest.fixture(scope="module")
def pipeline() -> OnnxPipeline:
    return OnnxPipeline(default_paths().repository)


@pytest.mark.parametrize("task", TASKS)
def test_card_metrics_are_reproducible(task: str, pipeline: OnnxPipeline) -> None:
    paths = default_paths()
    if repository_problems(REPOSITORY):
        pytest.fail("model repository not built (run `make models`)", pytrace=False)
    if not paths.data_dir.is_dir():
        pytest.fail(f"{paths.data_dir}: the data folder is missing, so the model cards cannot be checked; put the "
                    "shared data there or set SWITCHYARD_DATA_DIR to it", pytrace=False)
    recorded = dict(_flatten(cards.load_metrics(task)["results"]))
    measured = dict(_flatten(EVALUATORS[task](pipeline, paths)))
    assert recorded.keys() == measured.keys()
    off = {k: (recorded[k], measured[k]) for k in recorded if abs(recorded[k] - measured[k]) > TOLERANCE}
    assert not off, f"card {task} is stale (card, measured): {off}; rerun `switchyard train trunk --finetuned services/models/weights/trunk`"


def test_base_trunk_card_is_reproducible() -> None:
    """cards/trunk_base: the served (int8) base trunk's domain figures, from its own repository (make base-models)."""
    from services.models.evaluate import evaluate_domain
    from services.models.paths import base_trunk_repository

    paths = default_paths()
    repository = base_trunk_repository(paths.work_dir)
    problems = repository_problems(repository, paths.backend_dir, trunk="base")
    if problems:
        pytest.fail(f"the base trunk's repository is not built ({problems[0]}): run `make base-models`", pytrace=False)
    recorded = dict(_flatten(cards.load_metrics("trunk_base")["results"]["domain"]))
    measured = dict(_flatten(evaluate_domain(OnnxPipeline(repository), paths)))
    assert recorded.keys() == measured.keys()
    off = {k: (recorded[k], measured[k]) for k in recorded if abs(recorded[k] - measured[k]) > TOLERANCE}
    assert not off, f"card trunk_base is stale (card, measured): {off}; rerun `switchyard train trunk --trunk base --finetuned services/models/weights/trunk_base`"
