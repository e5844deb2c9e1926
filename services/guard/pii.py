"""PII detection in one text: learned tagger spans plus validated patterns, thresholded and merged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from services.guard.patterns import recognize
from services.guard.spans import TAGGER, Entity, above_threshold, merge_overlapping


class TaggedSpan(Protocol):
    """One learned entity (services.common.tokenizer.EntitySpan has this shape)."""

    start: int
    end: int
    label: str
    score: float


class PiiTagger(Protocol):
    """What the guard needs from the Triton client (services.common.triton.TritonModels has it)."""

    async def tag_pii(self, texts: list[str]) -> Sequence[Sequence[TaggedSpan]]: ...


def tagger_entities(spans: Sequence[TaggedSpan], text: str) -> list[Entity]:
    """Tagger spans as entities, clipped to the text and widened to whole words.

    The tagger labels word pieces; a span that starts or ends inside a word ("Chat[GP]T") would
    mask half a word and leave the rest readable, so it is widened to the word's edges. A span of
    punctuation alone names nothing (the tagger at times reads a bracket before an ID as LOCATION)
    and is dropped.
    """
    found: list[Entity] = []
    for span in spans:
        start, end = max(0, int(span.start)), min(len(text), int(span.end))
        if not any(c.isalnum() for c in text[start:end]):
            continue
        while 0 < start < end and text[start - 1].isalnum():
            start -= 1
        while start < end < len(text) and text[end].isalnum():
            end += 1
        if start < end:
            found.append(Entity(span.label, start, end, float(span.score), TAGGER))
    return found


def entities_in_text(
    text: str,
    tagged: Sequence[TaggedSpan],
    threshold: float,
    type_thresholds: Mapping[str, float],
) -> list[Entity]:
    """The PII of one text: each finding must reach its type's threshold (override, else `threshold`);
    the survivors are merged so that no two entities overlap."""
    candidates = tagger_entities(tagged, text) + recognize(text)
    return merge_overlapping(above_threshold(candidates, threshold, type_thresholds))
