"""Masking of guard-found PII in an outgoing chat body with typed placeholders (<PERSON_1>), and back.

The front calls these pure functions. Spans are code-point offsets into a message's text as the
front flattens it (services.front.chat_request.text_segments, the one definition). The mapping from
placeholder to value stays inside the router: it prints as a count, never with its values.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.front.chat_request import PART_JOINER, TextSegment, text_segments

PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*?)_(\d+)>")
# Longest placeholder unmask_stream may have to wait for (type names are short upper-case words).
MAX_PLACEHOLDER_CHARS = 48


class MaskingError(ValueError):
    """The entities do not fit the body (the guard saw other text than the front sends)."""


class EntityLike(Protocol):
    """switchyard.v1.guard_pb2.PiiEntity has this shape."""

    type: str
    message_index: int
    start: int
    end: int
    confidence: float


@dataclass(repr=False)
class MaskMapping:
    """Placeholder -> original value for one request. Never log it: its repr shows only a count."""

    _values: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"MaskMapping({len(self._values)} placeholders)"

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, placeholder: object) -> bool:
        return placeholder in self._values

    @property
    def placeholders(self) -> list[str]:
        return list(self._values)

    def original(self, placeholder: str) -> str:
        return self._values[placeholder]


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    type: str


def masked_types(entities: Iterable[EntityLike], mask_types: Iterable[str]) -> list[str]:
    """Types the body will carry as placeholders."""
    wanted = set(mask_types)
    return sorted({e.type for e in entities} & wanted)


def routing_types(entities: Iterable[EntityLike], mask_types: Iterable[str]) -> list[str]:
    """Types the chosen model's pii_policy must allow: everything found that is not masked."""
    return sorted({e.type for e in entities} - set(mask_types))


def mask_body(
    body: dict[str, Any], entities: Sequence[EntityLike], mask_types: set[str]
) -> tuple[dict[str, Any], MaskMapping]:
    """A copy of `body` whose entities of `mask_types` are replaced by <TYPE_n> placeholders.

    Placeholders are numbered per type in order of first appearance over the messages; the same
    value of the same type always gets the same placeholder. Overlapping entities are masked as
    one span (typed after the most confident of them). Non-text parts and every other field are
    left as they are; the input body is not modified.
    """
    chosen = [e for e in entities if e.type in mask_types]
    mapping = MaskMapping()
    if not chosen:
        return body, mapping
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise MaskingError("the body has no 'messages' list, but the guard reported entities in it")
    by_message: dict[int, list[EntityLike]] = {}
    for entity in chosen:
        if not 0 <= entity.message_index < len(messages):
            raise MaskingError(f"entity of type {entity.type} names message {entity.message_index}, "
                               f"but the body has {len(messages)} messages")
        by_message.setdefault(entity.message_index, []).append(entity)

    taken = _existing_placeholders(messages)
    numbers: dict[str, int] = {}
    assigned: dict[tuple[str, str], str] = {}
    new_messages = list(messages)
    for index in sorted(by_message):
        message = messages[index]
        segments = _segments(message, index)
        length = segments[-1].end if segments else 0
        spans = _merged_spans(by_message[index], index, length)
        flat = PART_JOINER.join(s.text for s in segments)
        replacements: list[tuple[_Span, str]] = []
        for span in spans:
            key = (span.type, flat[span.start:span.end])
            if key not in assigned:
                assigned[key] = _next_placeholder(span.type, numbers, taken)
                mapping._values[assigned[key]] = key[1]  # noqa: SLF001 - built here only
            replacements.append((span, assigned[key]))
        new_messages[index] = _rewrite(message, segments, replacements)
    masked = dict(body)
    masked["messages"] = new_messages
    return masked, mapping


def unmask_text(text: str, mapping: MaskMapping) -> str:
    """Put the original values back for every placeholder of this request; others stay as they are."""
    if not mapping:
        return text
    return PLACEHOLDER.sub(lambda m: mapping._values.get(m.group(), m.group()), text)  # noqa: SLF001


class StreamUnmasker:
    """unmask_text for streamed answers: a placeholder may be split across chunks, so a trailing
    unfinished "<..." is held back until the next chunk (or flush) completes it."""

    def __init__(self, mapping: MaskMapping) -> None:
        self._mapping = mapping
        self._pending = ""

    def feed(self, chunk: str) -> str:
        text = self._pending + chunk
        cut = text.rfind("<")
        if cut != -1 and ">" not in text[cut:] and len(text) - cut < MAX_PLACEHOLDER_CHARS:
            self._pending, text = text[cut:], text[:cut]
        else:
            self._pending = ""
        return unmask_text(text, self._mapping)

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return unmask_text(text, self._mapping)


def _segments(message: Any, index: int) -> list[TextSegment]:
    content = message.get("content") if isinstance(message, dict) else None
    segments = text_segments(content)
    if not segments:
        raise MaskingError(f"messages[{index}] has no text content, but the guard reported entities in it")
    return segments


def redact_text(text: str, entities: Sequence[EntityLike]) -> str:
    """`text` with each (merged) entity span replaced by "[TYPE]": the classification API's masked_text,
    with the same span merging as mask_body."""
    if not entities:
        return text
    out, cursor = [], 0
    for span in _merged_spans(list(entities), 0, len(text)):
        out += [text[cursor:span.start], f"[{span.type}]"]
        cursor = span.end
    return "".join(out) + text[cursor:]


def _merged_spans(entities: list[EntityLike], index: int, length: int) -> list[_Span]:
    """Overlapping entities become one span covering all of them, typed after the most confident."""
    for e in entities:
        if not 0 <= e.start < e.end <= length:
            raise MaskingError(f"entity of type {e.type} at [{e.start}, {e.end}) does not fit messages[{index}] "
                               f"({length} characters); the guard and the front disagree on the message text")
    ordered = sorted(entities, key=lambda e: (e.start, -e.end))
    spans: list[_Span] = []
    group = [ordered[0]]
    end = ordered[0].end
    for entity in ordered[1:]:
        if entity.start < end:
            group.append(entity)
            end = max(end, entity.end)
            continue
        spans.append(_group_span(group, end))
        group, end = [entity], entity.end
    spans.append(_group_span(group, end))
    return spans


def _group_span(group: list[EntityLike], end: int) -> _Span:
    leader = max(group, key=lambda e: (e.confidence, e.end - e.start))
    return _Span(group[0].start, end, leader.type)


def _existing_placeholders(messages: list[Any]) -> set[str]:
    """Placeholder-shaped text already in the body: a new placeholder must not collide with it."""
    found: set[str] = set()
    for index, message in enumerate(messages):
        try:
            segments = _segments(message, index)
        except MaskingError:
            continue
        for segment in segments:
            found.update(m.group() for m in PLACEHOLDER.finditer(segment.text))
    return found


def _next_placeholder(kind: str, numbers: dict[str, int], taken: set[str]) -> str:
    while True:
        numbers[kind] = numbers.get(kind, 0) + 1
        candidate = f"<{kind}_{numbers[kind]}>"
        if candidate not in taken:
            return candidate


def _rewrite(message: dict[str, Any], segments: list[TextSegment],
             replacements: list[tuple[_Span, str]]) -> dict[str, Any]:
    texts = {id(s): s.text for s in segments}
    # Right to left, so earlier offsets stay valid while later text changes length.
    for span, placeholder in reversed(replacements):
        touched = [s for s in segments if span.start < s.end and s.start < span.end]
        # A span that crosses a part boundary: the placeholder goes in its first part, the rest is cut.
        for position, segment in enumerate(reversed(touched)):
            first = position == len(touched) - 1
            local_start = max(span.start, segment.start) - segment.start
            local_end = min(span.end, segment.end) - segment.start
            text = texts[id(segment)]
            texts[id(segment)] = text[:local_start] + (placeholder if first else "") + text[local_end:]
    new_message = dict(message)
    if segments[0].part is None:
        new_message["content"] = texts[id(segments[0])]
        return new_message
    parts = list(message["content"])
    for segment in segments:
        if texts[id(segment)] != segment.text:
            part = copy.copy(parts[segment.part])
            part["text"] = texts[id(segment)]
            parts[segment.part] = part
    new_message["content"] = parts
    return new_message
