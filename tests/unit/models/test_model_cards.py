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
TOLERANCE = 0.002
# Borderline rows a figure may lose or gain against its card. Threads, and the CPU's kernels (AVX-512 and AVX2
# sum in different orders), move the int8 trunk's float outputs by ~1e-6, which flips a row that sits on a
# threshold or between two classes: one of biology's 48 predictions moved its precision by 0.016 between two
# CI machines. A stale card moves many rows. So a figure's tolerance is two of its rows, and TOLERANCE where
# that is less or its count is unknown.
BORDERLINE_ROWS = 2
# Which count a figure is a share of: the first of these keys found beside it in the card (a path with a dot
# is read from the card's top level).
_COUNT_KEYS = {
    "precision": ("support", "positives"), "recall": ("support", "positives"), "f1": ("support", "positives"),
    "fpr": ("negatives",), "fpr_long_benign": ("long_negatives",), "accuracy": ("rows",),
    "fpr_real_user_chats": ("real_user_chats",), "fpr_subject_questions": ("subject_questions",),
    "fpr_short_instructions": ("short_instructions",), "fpr_long_benign_windows": ("long_benign",),
    "buried_recall": ("buried_probes",), "evasion_kept": ("evasion_probes",), "fpr_xstest_safe": ("xstest_safe",),
    "recall_all_dev": ("dev_all.positives",),
}


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, float):
        yield prefix, value


def _counts(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _counts(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, int) and not isinstance(value, bool):
        yield prefix, value


def tolerances(results: dict) -> dict[str, float]:
    """Per float figure of a card's results: how far a re-measurement may be from it (BORDERLINE_ROWS rows)."""
    counts = dict(_counts(results))
    found = {}
    for key, _ in _flatten(results):
        parent, _, leaf = key.rpartition(".")
        candidates = [c if "." in c else (f"{parent}.{c}" if parent else c) for c in _COUNT_KEYS.get(leaf, ())]
        if parent.endswith("per_kind_accuracy_at_0.5"):  # the pair card: per kind, its pairs (the key has a dot)
            candidates.append(f"{parent[: -len('per_kind_accuracy_at_0.5')]}per_kind_pairs.{leaf}")
        n = next((counts[c] for c in candidates if counts.get(c)), None)
        found[key] = max(TOLERANCE, BORDERLINE_ROWS / n) if n else TOLERANCE
    return found


def _stale(recorded_results: dict, measured_results: dict) -> dict[str, tuple[float, float]]:
    recorded, measured = dict(_flatten(recorded_results)), dict(_flatten(measured_results))
    assert recorded.keys() == measured.keys()
    allowed = tolerances(recorded_results)
    return {k: (recorded[k], measured[k]) for k in recorded if abs(recorded[k] - measured[k]) > allowed[k]}


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
    off = _stale(cards.load_metrics(task)["results"], EVALUATORS[task](pipeline, paths))
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
    off = _stale(cards.load_metrics("trunk_base")["results"]["domain"], evaluate_domain(OnnxPipeline(repository), paths))
    assert not off, f"card trunk_base is stale (card, measured): {off}; rerun `switchyard train trunk --trunk base --finetuned services/models/weights/trunk_base`"
