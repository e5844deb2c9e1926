"""The domain yardstick: k-NN vote, calibration error, coverage curve and the threshold rule."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from services.models import yardstick
from services.models.cli import cmd_eval, register
from services.models.yardstick import (
    coverage_curve,
    expected_calibration_error,
    knee,
    knn_predict,
    recommend_threshold,
    reliability_table,
)


def _angles(*degrees: float) -> np.ndarray:
    """Unit vectors in the plane: cosine similarity is the cosine of the angle between them."""
    radians = np.radians(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_knn_takes_the_majority_of_the_k_nearest() -> None:
    train = _angles(0, 5, 10, 90, 95)
    labels = np.array([0, 0, 0, 1, 1])
    # Near 0°: three class-0 neighbours out of the three nearest; near 90°: two class-1 of three.
    assert knn_predict(train, labels, _angles(2, 88), k=3).tolist() == [0, 1]


def test_knn_breaks_a_tied_vote_by_summed_similarity() -> None:
    train = _angles(0, 60, 20, 25)
    labels = np.array([0, 0, 1, 1])
    # Query at 10°: 2 votes each; class 1 (10° and 15° away) is closer in sum than class 0 (10° and 50°).
    assert knn_predict(train, labels, _angles(10), k=4).tolist() == [1]
    # The same vote with class 0's second voter moved close wins for class 0.
    assert knn_predict(_angles(0, 12, 20, 25), labels, _angles(10), k=4).tolist() == [0]


def test_knn_is_cosine_so_vector_length_does_not_count() -> None:
    train = _angles(0, 90) * np.array([[100.0], [0.01]])
    assert knn_predict(train, np.array([0, 1]), _angles(80), k=1, n_classes=2).tolist() == [1]


def test_knn_with_k_above_the_train_rows_uses_them_all() -> None:
    assert knn_predict(_angles(0, 1, 90), np.array([1, 1, 0]), _angles(89), k=10).tolist() == [1]


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    # 10 rows at 0.8 with 8 right, 10 at 0.5 with 5 right: calibrated bin by bin.
    confidence = np.array([0.8] * 10 + [0.5] * 10)
    correct = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 5, dtype=bool)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0, abs=1e-9)


def test_ece_of_a_large_calibrated_sample_is_near_zero() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 1.0, 200_000)
    correct = rng.uniform(size=confidence.shape) < confidence
    assert expected_calibration_error(confidence, correct) < 0.01


def test_ece_of_an_overconfident_classifier_is_its_overconfidence() -> None:
    confidence = np.full(100, 0.95)
    correct = np.arange(100) < 60
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.35)


def test_reliability_table_bins_rows_by_confidence() -> None:
    table = reliability_table(np.array([0.0, 0.1, 0.5, 0.97, 1.0]), np.array([0, 0, 1, 1, 0], dtype=bool), bins=10)
    assert len(table) == 10 and table[0]["low"] == 0.0 and table[-1]["high"] == 1.0
    assert [row["rows"] for row in table] == [2, 0, 0, 0, 1, 0, 0, 0, 0, 2]
    assert table[9]["accuracy"] == 0.5 and table[9]["confidence"] == pytest.approx(0.985)
    assert table[1]["accuracy"] is None


def test_coverage_falls_and_accuracy_is_on_the_covered_rows() -> None:
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.2, 1.0, 5000)
    correct = rng.uniform(size=confidence.shape) < confidence
    curve = coverage_curve(confidence, correct)
    assert [p["threshold"] for p in curve] == [round(0.05 * i, 2) for i in range(20)]
    coverages = [p["coverage"] for p in curve]
    assert coverages[0] == 1.0 and all(a >= b for a, b in zip(coverages, coverages[1:]))
    at_half = next(p for p in curve if p["threshold"] == 0.5)
    assert at_half["rows"] == int((confidence >= 0.5).sum())
    assert at_half["accuracy"] == round(float(correct[confidence >= 0.5].mean()), 4)


def test_a_threshold_above_every_confidence_covers_nothing() -> None:
    point, = coverage_curve(np.array([0.3, 0.4]), np.array([True, False]), (0.9,))
    assert point == {"threshold": 0.9, "coverage": 0.0, "rows": 0, "accuracy": None}


def _curve(*accuracies: float | None) -> list[dict]:
    return [{"threshold": round(0.1 * i, 2), "coverage": round(1 - 0.1 * i, 2), "rows": 10 - i, "accuracy": a}
            for i, a in enumerate(accuracies)]


def test_recommended_threshold_is_the_lowest_reaching_the_target() -> None:
    recommended = recommend_threshold(_curve(0.8, 0.85, 0.91, 0.89, 0.95), target_accuracy=0.9)
    assert recommended["threshold"] == 0.2 and recommended["accuracy"] == 0.91
    assert "lowest threshold" in recommended["rule"]


def test_without_a_threshold_reaching_the_target_the_knee_is_recommended() -> None:
    # Accuracy climbs fast, then flattens: the knee is where it flattens.
    curve = _curve(0.50, 0.70, 0.80, 0.82, 0.83, 0.835, None)
    recommended = recommend_threshold(curve, target_accuracy=0.9)
    assert recommended["threshold"] == knee(curve)["threshold"] == 0.2
    assert "knee" in recommended["rule"]


def test_gap_is_in_points() -> None:
    per_class = lambda r, f: {"a": {"recall": r, "f1": f}}  # noqa: E731
    gap = yardstick.gap_points({"accuracy": 0.8173, "macro_f1": 0.78, "per_class": per_class(0.9, 0.8)},
                               {"accuracy": 0.7, "macro_f1": 0.8, "per_class": per_class(0.85, 0.9)})
    assert gap == {"accuracy": 11.73, "macro_f1": -2.0, "per_class": {"a": {"recall": 5.0, "f1": -10.0}}}


@pytest.mark.needs_data
def test_domain_report_on_the_built_models_is_json(tmp_path: Path) -> None:
    """The report the domain card includes: every section present and JSON-serialisable (slow the first time:
    it embeds the train rows, then reuses .switchyard/cache)."""
    from services.common.triton_server import repository_problems
    from services.models.evaluate import OnnxPipeline
    from services.models.paths import default_paths

    paths = default_paths()
    if repository_problems(paths.repository) or not paths.data_dir.is_dir():
        pytest.fail("needs the built model repository (`make models`) and the shared data", pytrace=False)
    report = json.loads(json.dumps(yardstick.domain_report(OnnxPipeline(paths.repository), paths)))
    assert report["classifier"]["rows"] == report["knn"]["rows"] > 0
    assert 0.0 <= report["calibration"]["ece"] <= 1.0 and len(report["calibration"]["reliability"]) == 15
    assert len(report["threshold"]["coverage_curve"]) == 20
    assert report["knn"]["accuracy"] > 0.3  # far above chance (1/14): the embeddings and the vote work


def test_eval_yardstick_option_is_for_the_domain_task() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "domain", "--yardstick"])
    assert args.func is cmd_eval and args.yardstick and args.tasks == ["domain"]
    with pytest.raises(SystemExit, match="eval domain --yardstick"):
        cmd_eval(parser.parse_args(["eval", "jailbreak", "--yardstick"]))
