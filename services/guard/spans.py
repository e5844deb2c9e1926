"""PII entity spans found in one text, and how overlapping findings become one answer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TAGGER = "tagger"
PATTERN = "pattern"


@dataclass(frozen=True)
class Entity:
    """A PII finding: code-point span [start, end) of its text, type, confidence and who found it.

    Deliberately no copy of the matched value: what leaves this module can be logged safely.
    """

    type: str
    start: int
    end: int
    confidence: float
    source: str  # TAGGER or PATTERN

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"entity span must satisfy 0 <= start < end, got [{self.start}, {self.end})")

    @property
    def length(self) -> int:
        return self.end - self.start

    def overlaps(self, other: Entity) -> bool:
        return self.start < other.end and other.start < self.end


def above_threshold(
    entities: Iterable[Entity], default: float, per_type: Mapping[str, float]
) -> list[Entity]:
    """Entities whose confidence reaches their type's threshold (per-type override, else the default)."""
    return [e for e in entities if e.confidence >= per_type.get(e.type, default)]


def _rank(entity: Entity) -> tuple[float, int, int]:
    # A validated pattern beats the tagger at equal confidence: its checksum/range rules are exact.
    return (entity.confidence, entity.length, 1 if entity.source == PATTERN else 0)


def merge_overlapping(entities: Iterable[Entity]) -> list[Entity]:
    """One non-overlapping list of entities, sorted by start.

    Overlapping findings of the same type are joined into one span (highest confidence kept):
    the tagger and a pattern, or two chunks, often see the same value slightly differently.
    Overlapping findings of different types: the stronger one (confidence, then length, then
    pattern over tagger) wins and the other is dropped, since one piece of text has one type.
    """
    joined: list[Entity] = []
    by_type: dict[str, list[Entity]] = {}
    for entity in entities:
        by_type.setdefault(entity.type, []).append(entity)
    for same_type in by_type.values():
        same_type.sort(key=lambda e: e.start)
        current = same_type[0]
        for entity in same_type[1:]:
            if entity.start < current.end:
                strongest = max(current, entity, key=_rank)
                current = Entity(current.type, current.start, max(current.end, entity.end),
                                 strongest.confidence, strongest.source)
            else:
                joined.append(current)
                current = entity
        joined.append(current)

    kept: list[Entity] = []
    for entity in sorted(joined, key=_rank, reverse=True):
        if not any(entity.overlaps(k) for k in kept):
            kept.append(entity)
    return sorted(kept, key=lambda e: (e.start, e.end))
