"""services.common.pii_masking: typed placeholders in the outgoing body, and the way back."""

from __future__ import annotations

import copy

import pytest

from services.front.masking import (MaskingError, StreamUnmasker, mask_body, masked_types, routing_types,
                                         unmask_text)
from services.front.chat_request import message_text
from switchyard.v1 import guard_pb2


def entity(kind: str, message: int, start: int, end: int, confidence: float = 0.9) -> guard_pb2.PiiEntity:
    return guard_pb2.PiiEntity(type=kind, message_index=message, start=start, end=end, confidence=confidence)


def spans_of(text: str, *values: tuple[str, str], message: int = 0) -> list[guard_pb2.PiiEntity]:
    """Entities for every occurrence of each (type, value) in text."""
    found = []
    for kind, value in values:
        start = text.find(value)
        while start != -1:
            found.append(entity(kind, message, start, start + len(value)))
            start = text.find(value, start + 1)
    return found


def body(*contents) -> dict:
    return {"model": "MoM", "temperature": 0.2, "messages": [{"role": "user", "content": c} for c in contents]}


def test_round_trip_and_numbering() -> None:
    text = "Ann Lee met Bob Stone; Ann Lee paid. Mail ann@x.io"
    original = body(text)
    kept = copy.deepcopy(original)
    ents = spans_of(text, ("PERSON", "Ann Lee"), ("PERSON", "Bob Stone"), ("EMAIL_ADDRESS", "ann@x.io"))
    masked, mapping = mask_body(original, ents, {"PERSON", "EMAIL_ADDRESS"})
    assert masked["messages"][0]["content"] == "<PERSON_1> met <PERSON_2>; <PERSON_1> paid. Mail <EMAIL_ADDRESS_1>"
    assert original == kept  # input untouched
    assert masked["temperature"] == 0.2 and masked["model"] == "MoM"
    assert unmask_text(masked["messages"][0]["content"], mapping) == text
    assert len(mapping) == 3 and mapping.original("<PERSON_2>") == "Bob Stone"


def test_numbering_is_consistent_across_messages() -> None:
    first, second = "I am Ann.", "Ann and Bob here"
    ents = spans_of(first, ("PERSON", "Ann")) + spans_of(second, ("PERSON", "Bob"), ("PERSON", "Ann"), message=1)
    masked, _ = mask_body(body(first, second), ents, {"PERSON"})
    assert [m["content"] for m in masked["messages"]] == ["I am <PERSON_1>.", "<PERSON_1> and <PERSON_2> here"]


def test_only_mask_types_are_masked() -> None:
    text = "Ann, SSN 123-45-6789"
    ents = spans_of(text, ("PERSON", "Ann"), ("US_SSN", "123-45-6789"))
    masked, mapping = mask_body(body(text), ents, {"US_SSN"})
    assert masked["messages"][0]["content"] == "Ann, SSN <US_SSN_1>"
    assert masked_types(ents, {"US_SSN"}) == ["US_SSN"] and routing_types(ents, {"US_SSN"}) == ["PERSON"]


def test_nothing_to_mask_returns_the_body() -> None:
    original = body("Ann")
    masked, mapping = mask_body(original, spans_of("Ann", ("PERSON", "Ann")), set())
    assert masked is original and len(mapping) == 0


def test_overlapping_entities_become_one_placeholder() -> None:
    text = "contact ann.lee@acme.com now"
    ents = [entity("PERSON", 0, 8, 15, 0.7), entity("EMAIL_ADDRESS", 0, 8, 24, 0.95), entity("DOMAIN_NAME", 0, 16, 24, 0.6)]
    masked, mapping = mask_body(body(text), ents, {"PERSON", "EMAIL_ADDRESS", "DOMAIN_NAME"})
    assert masked["messages"][0]["content"] == "contact <EMAIL_ADDRESS_1> now"
    assert unmask_text(masked["messages"][0]["content"], mapping) == text


def test_partly_overlapping_entities_are_masked_as_their_union() -> None:
    text = "at Acme Oslo office"
    ents = [entity("ORGANIZATION", 0, 3, 12, 0.6), entity("LOCATION", 0, 8, 19, 0.8)]
    masked, mapping = mask_body(body(text), ents, {"ORGANIZATION", "LOCATION"})
    assert masked["messages"][0]["content"] == "at <LOCATION_1>"
    assert mapping.original("<LOCATION_1>") == "Acme Oslo office"


def test_unicode_offsets_are_code_points() -> None:
    text = "👋🏽 Grüße, ich bin Zoë Ångström — 😀 Zoë Ångström"
    masked, mapping = mask_body(body(text), spans_of(text, ("PERSON", "Zoë Ångström")), {"PERSON"})
    assert masked["messages"][0]["content"] == "👋🏽 Grüße, ich bin <PERSON_1> — 😀 <PERSON_1>"
    assert unmask_text(masked["messages"][0]["content"], mapping) == text


def test_content_parts_keep_their_structure() -> None:
    parts = [{"type": "text", "text": "My name is Ann"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,QW5u"}},
             {"type": "input_text", "text": "Lee and I live in Oslo", "extra": 1}]
    flat, _ = message_text(parts, "messages[0]")
    assert flat == "My name is Ann\nLee and I live in Oslo"
    ents = spans_of(flat, ("PERSON", "Ann\nLee"), ("LOCATION", "Oslo"))
    masked, mapping = mask_body(body(parts), ents, {"PERSON", "LOCATION"})
    new_parts = masked["messages"][0]["content"]
    # A span across two parts: the placeholder goes in the first, the rest of it is cut from the second.
    assert new_parts[0] == {"type": "text", "text": "My name is <PERSON_1>"}
    assert new_parts[1] is parts[1]
    assert new_parts[2] == {"type": "input_text", "text": " and I live in <LOCATION_1>", "extra": 1}
    assert parts[0]["text"] == "My name is Ann"  # original parts untouched
    assert mapping.original("<PERSON_1>") == "Ann\nLee"


def test_existing_placeholder_text_is_not_reused() -> None:
    text = "literal <PERSON_1> and Ann"
    masked, mapping = mask_body(body(text), spans_of(text, ("PERSON", "Ann")), {"PERSON"})
    assert masked["messages"][0]["content"] == "literal <PERSON_1> and <PERSON_2>"
    assert unmask_text("<PERSON_1> <PERSON_2>", mapping) == "<PERSON_1> Ann"


@pytest.mark.parametrize("bad", [entity("PERSON", 3, 0, 2), entity("PERSON", 0, 2, 99)])
def test_entities_that_do_not_fit_raise(bad: guard_pb2.PiiEntity) -> None:
    with pytest.raises(MaskingError) as raised:
        mask_body(body("Ann Lee"), [bad], {"PERSON"})
    assert "Ann" not in str(raised.value)


def test_message_without_text_raises() -> None:
    with pytest.raises(MaskingError):
        mask_body(body([{"type": "image_url", "image_url": {"url": "x"}}]), [entity("PERSON", 0, 0, 1)], {"PERSON"})


def test_mapping_never_prints_values() -> None:
    _, mapping = mask_body(body("Ann"), spans_of("Ann", ("PERSON", "Ann")), {"PERSON"})
    assert "Ann" not in repr(mapping) and "Ann" not in str(mapping) and "Ann" not in f"{mapping}"


def test_stream_unmasking_across_chunk_boundaries() -> None:
    text = "Ann and Bob"
    _, mapping = mask_body(body(text), spans_of(text, ("PERSON", "Ann"), ("PERSON", "Bob")), {"PERSON"})
    stream = StreamUnmasker(mapping)
    chunks = ["Hello <PERS", "ON_1>, meet <", "PERSON_2", ">! a < b", " and done"]
    out = "".join(stream.feed(c) for c in chunks) + stream.flush()
    assert out == "Hello Ann, meet Bob! a < b and done"
