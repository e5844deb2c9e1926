"""Parsing of OpenAI chat-completion request bodies into what the mesh needs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.common.cache_fingerprint import answer_fingerprint
from switchyard.v1 import common_pb2


class RequestError(Exception):
    """A request the router answers itself with an OpenAI error body."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 error_type: str = "invalid_request_error", headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type
        # Extra response headers of the error reply (Retry-After on 429/503).
        self.headers = headers


@dataclass
class ChatRequest:
    """A parsed chat completion body; `body` is the full JSON object, kept for the rewrite."""

    body: dict[str, Any]
    model: str
    stream: bool
    messages: list[common_pb2.ChatMessage] = field(default_factory=list)

    def to_context(self, request_id: str, tenant: str, cache_directives: list[str],
                   traceparent: str = "") -> common_pb2.RequestContext:
        return common_pb2.RequestContext(
            request_id=request_id,
            requested_model=self.model,
            messages=self.messages,
            tenant=tenant,
            params=_params(self.body),
            cache_directives=cache_directives,
            traceparent=traceparent,
            answer_fingerprint=answer_fingerprint(self.body),
        )


def loads(raw: bytes) -> Any:
    """orjson for speed; the stdlib for what orjson refuses (integers over 64 bits)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # integers over 64 bits
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


# How a message's content becomes the one text the services read (and PII offsets refer to): string
# content as it is; a list of content parts -> the `text` of its text parts, joined by PART_JOINER.
TEXT_PART_TYPES = ("text", "input_text")
PART_JOINER = "\n"


@dataclass(frozen=True)
class TextSegment:
    """Where a stretch of a message's flattened text lives: the content string, or one content part."""

    start: int  # offset in the flattened text
    text: str
    part: int | None  # index into the content list; None for string content

    @property
    def end(self) -> int:
        return self.start + len(self.text)


def text_segments(content: Any) -> list[TextSegment]:
    """The flattening contract, once: parsing (message_text) and PII masking both use it."""
    if isinstance(content, str):
        return [TextSegment(0, content, None)]
    segments: list[TextSegment] = []
    if isinstance(content, list):
        offset = 0
        for index, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") in TEXT_PART_TYPES and isinstance(part.get("text"), str):
                if segments:
                    offset += len(PART_JOINER)
                segments.append(TextSegment(offset, part["text"], index))
                offset += len(part["text"])
    return segments


def message_text(content: Any, where: str) -> tuple[str, bool]:
    """The text of a message's content: a string, null, or a list of OpenAI content parts."""
    if content is None:
        return "", False
    if isinstance(content, str):
        return content, False
    if isinstance(content, list):
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise RequestError(400, f"{where}.content[{i}] must be an object with a string 'type'",
                                   "invalid_content", f"{where}.content[{i}]")
            if part["type"] in TEXT_PART_TYPES and not isinstance(part.get("text"), str):
                raise RequestError(400, f"{where}.content[{i}].text must be a string in a {part['type']!r} part",
                                   "invalid_content", f"{where}.content[{i}].text")
        return PART_JOINER.join(s.text for s in text_segments(content)), True
    raise RequestError(400, f"{where}.content must be a string, null or a list of content parts, "
                       f"got {type(content).__name__}", "invalid_content", f"{where}.content")


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and check a /v1/chat/completions body; raise RequestError with the fix on bad input."""
    if not raw.strip():
        raise RequestError(400, "the request body is empty; send a JSON chat completion request",
                           "empty_body")
    try:
        body = loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {type(body).__name__}",
                           "invalid_body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "'model' is required: name a model, or 'MoM' to let the router choose",
                           "missing_model", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of chat messages",
                           "missing_messages", "messages")
    parsed: list[common_pb2.ChatMessage] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"{where} must be an object with 'role' and 'content'",
                               "invalid_message", where)
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise RequestError(400, f"{where}.role is required (system, user, assistant or tool)",
                               "invalid_message", f"{where}.role")
        text, from_parts = message_text(message.get("content"), where)
        name = message.get("name") if isinstance(message.get("name"), str) else ""
        parsed.append(common_pb2.ChatMessage(role=role, text=text, name=name, from_parts=from_parts))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, f"'stream' must be true or false, got {stream!r}", "invalid_stream", "stream")
    return ChatRequest(body=body, model=model, stream=stream, messages=parsed)


def _params(body: dict[str, Any]) -> common_pb2.RequestParams:
    params = common_pb2.RequestParams(
        n=body.get("n") if isinstance(body.get("n"), int) else 1,
        has_tools=bool(body.get("tools") or body.get("functions")),
        stream=body.get("stream") is True,
    )
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(params, name, float(value))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        params.max_tokens = max(0, min(max_tokens, 2**31 - 1))
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        params.response_format = str(response_format.get("type", ""))
    return params
