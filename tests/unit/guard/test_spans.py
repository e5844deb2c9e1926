"""Span merging and thresholds."""

from __future__ import annotations

import pytest

from services.guard.spans import PATTERN, TAGGER, Entity, above_threshold, merge_overlapping


def spans(entities: list[Entity]) -> list[tuple[str, int, int]]:
    return [(e.type, e.start, e.end) for e in entities]


def test_same_type_overlaps_join() -> None:
    merged = merge_overlapping([Entity("PERSON", 0, 4, 0.7, TAGGER), Entity("PERSON", 2, 9, 0.9, TAGGER)])
    assert spans(merged) == [("PERSON", 0, 9)]
    assert merged[0].confidence == 0.9


def test_touching_spans_stay_apart() -> None:
    merged = merge_overlapping([Entity("PERSON", 0, 4, 0.7, TAGGER), Entity("PERSON", 4, 9, 0.9, TAGGER)])
    assert spans(merged) == [("PERSON", 0, 4), ("PERSON", 4, 9)]


def test_stronger_type_wins_overlap() -> None:
    email = Entity("EMAIL_ADDRESS", 0, 17, 0.95, PATTERN)
    person = Entity("PERSON", 0, 8, 0.8, TAGGER)
    domain = Entity("DOMAIN_NAME", 9, 17, 0.6, PATTERN)
    assert spans(merge_overlapping([person, domain, email])) == [("EMAIL_ADDRESS", 0, 17)]


def test_pattern_beats_tagger_on_a_tie() -> None:
    tagged = Entity("DATE_TIME", 3, 14, 0.85, TAGGER)
    ssn = Entity("US_SSN", 3, 14, 0.85, PATTERN)
    assert spans(merge_overlapping([tagged, ssn])) == [("US_SSN", 3, 14)]


def test_result_sorted_and_disjoint() -> None:
    merged = merge_overlapping([Entity("A", 10, 12, 0.5, PATTERN), Entity("B", 0, 3, 0.5, PATTERN),
                                Entity("C", 2, 5, 0.4, PATTERN)])
    assert spans(merged) == [("B", 0, 3), ("A", 10, 12)]


def test_empty() -> None:
    assert merge_overlapping([]) == []


def test_per_type_thresholds() -> None:
    entities = [Entity("PERSON", 0, 3, 0.6, TAGGER), Entity("LOCATION", 4, 8, 0.6, TAGGER),
                Entity("ZIP_CODE", 9, 14, 0.3, PATTERN)]
    kept = above_threshold(entities, 0.5, {"LOCATION": 0.8, "ZIP_CODE": 0.2})
    assert [e.type for e in kept] == ["PERSON", "ZIP_CODE"]


def test_empty_span_refused() -> None:
    with pytest.raises(ValueError):
        Entity("PERSON", 3, 3, 0.9, TAGGER)
