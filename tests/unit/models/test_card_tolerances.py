"""How far a card check lets a figure move: two of its rows (tests/unit/models/test_model_cards.py)."""

from __future__ import annotations

import pytest

from tests.unit.models.test_model_cards import TOLERANCE, _stale, tolerances

CARD = {
    "dev": {"rows": 1505, "accuracy": 0.8133, "per_class": {"biology": {"precision": 0.77, "support": 48}}},
    "dev_commercial": {"f1": 0.90, "fpr": 0.0021, "positives": 283, "negatives": 1398},
    "dev_all": {"positives": 321},
    "guard": {"fpr_short_instructions": 0.0, "short_instructions": 40, "recall_all_dev": 0.83},
    "pair": {"per_kind_accuracy_at_0.5": {"negation": 0.9}, "per_kind_pairs": {"negation": 44}},
    "other": {"auc": 0.86},
}


def test_each_figure_may_move_by_two_of_its_rows() -> None:
    allowed = tolerances(CARD)
    assert allowed["dev.per_class.biology.precision"] == pytest.approx(2 / 48)
    assert allowed["dev_commercial.f1"] == pytest.approx(2 / 283)
    assert allowed["dev_commercial.fpr"] == TOLERANCE  # 2 / 1398 is less than the floor
    assert allowed["dev.accuracy"] == TOLERANCE
    assert allowed["guard.fpr_short_instructions"] == pytest.approx(2 / 40)
    assert allowed["guard.recall_all_dev"] == pytest.approx(2 / 321)
    assert allowed["pair.per_kind_accuracy_at_0.5.negation"] == pytest.approx(2 / 44)
    assert allowed["other.auc"] == TOLERANCE  # no count: the floor


def test_a_stale_card_is_still_caught() -> None:
    moved_one_row = {**CARD, "dev": {**CARD["dev"], "per_class": {"biology": {"precision": 0.77 - 1 / 48, "support": 48}}}}
    assert not _stale(CARD, moved_one_row)
    moved_many = {**CARD, "dev_commercial": {**CARD["dev_commercial"], "f1": 0.88}}
    assert _stale(CARD, moved_many) == {"dev_commercial.f1": (0.90, 0.88)}
    with pytest.raises(AssertionError):  # a figure the card lacks (or one too many) is a stale card too
        _stale(CARD, {**CARD, "extra": {"auc": 0.5}})
