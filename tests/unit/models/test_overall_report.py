"""Overall entity P/R/F1 across types (the guard's PII evaluation)."""

from __future__ import annotations

from services.models.metrics import overall_report


def test_overall_needs_the_same_type_and_counts_every_entity() -> None:
    gold = [[(0, 4, "PERSON"), (10, 20, "EMAIL_ADDRESS")], [(3, 8, "US_SSN")]]
    predicted = [[(0, 4, "PERSON"), (10, 19, "EMAIL_ADDRESS")], [(3, 8, "PHONE_NUMBER"), (30, 33, "AGE")]]
    exact = overall_report(gold, predicted, "exact")
    assert exact == {"precision": 0.25, "recall": 0.3333, "f1": 0.2857, "support": 3}
    overlap = overall_report(gold, predicted, "overlap")
    assert overlap["precision"] == 0.5 and overlap["recall"] == 0.6667
