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
    # The client API the body came in (services/front/apis); None is chat completions.
    api: Any = None
    # For another API: the body as a chat completion would carry it (chat field names, `messages` in the
    # order of `messages` above, an `api` key so that answers of two APIs never share a cache entry).
    # The fingerprint and the params are computed from it.
    view: dict[str, Any] | None = None
    # For another API: where each message's content lives in `body` (a path of keys and indexes).
    content_paths: list[tuple[Any, ...]] = field(default_factory=list)

    def to_context(self, request_id: str, tenant: str, cache_directives: list[str],
                   traceparent: str = "") -> common_pb2.RequestContext:
        return common_pb2.RequestContext(
            request_id=request_id,
            requested_model=self.model,
            messages=self.messages,
            tenant=tenant,
            params=_params(self.view if self.view is not None else self.body),
            cache_directives=cache_directives,
            traceparent=traceparent,
            answer_fingerprint=answer_fingerprint(self.view if self.view is not None else self.body),
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
# output_text: the assistant turns of the Responses API.
TEXT_PART_TYPES = ("text", "input_text", "output_text")
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


# JSON nesting deeper than this is refused: no chat request needs it, and a parser must not recurse on it.
MAX_JSON_DEPTH = 64
_INT64 = 2**63
_Number = (int, float)


def _number(low: float, high: float) -> Any:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, _Number) or not low <= value <= high:
            return f"a number from {low:g} to {high:g}"
        return None
    return check


def _integer(low: int, high: int) -> Any:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"an integer from {low} to {high}"
        return None
    return check


def _of_type(kind: type | tuple[type, ...], name: str) -> Any:
    def check(value: Any) -> str | None:
        # bool is an int in Python: it counts only where a bool is asked for.
        ok = isinstance(value, bool) if kind is bool else isinstance(value, kind) and not isinstance(value, bool)
        return None if ok else name
    return check


def _stop(value: Any) -> str | None:
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value)):
        return None
    return "a string or a list of strings"


# The fields the router reads or rewrites, and what each must be (OpenAI's ranges). null means "not set".
# Other fields travel to the backend as they are.
FIELD_CHECKS: dict[str, Any] = {
    "n": _integer(1, 128),
    "max_tokens": _integer(0, 2**31 - 1),
    "max_completion_tokens": _integer(0, 2**31 - 1),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "seed": _integer(-_INT64, _INT64 - 1),
    "logprobs": _of_type(bool, "true or false"),
    "top_logprobs": _integer(0, 20),
    "stream_options": _of_type(dict, "an object"),
    "chat_template_kwargs": _of_type(dict, "an object"),
    "reasoning_effort": _of_type(str, "a string (low, medium or high)"),
    "response_format": _of_type(dict, "an object with a 'type'"),
    "tools": _of_type(list, "a list of tool objects"),
    "functions": _of_type(list, "a list of function objects"),
    "tool_choice": _of_type((str, dict), "a string or an object"),
    "stop": _stop,
    "user": _of_type(str, "a string"),
    "logit_bias": _of_type(dict, "an object"),
}


def check_json_values(value: Any, path: str = "", depth: int = 0) -> None:
    """Refuse what no backend can take and the router must not pass on: nesting beyond MAX_JSON_DEPTH,
    integers beyond 64 bits, strings with lone surrogates (not UTF-8)."""
    if depth > MAX_JSON_DEPTH:
        where = path if len(path) <= 80 else path[:80] + "..."
        raise RequestError(400, f"the request nests JSON deeper than {MAX_JSON_DEPTH} levels at {where}",
                           "invalid_body")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{path}.{key}" if path else str(key))
            check_json_values(item, f"{path}.{key}" if path else str(key), depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_json_values(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        raise RequestError(400, f"{path} is an integer beyond 64 bits", "invalid_value", path)


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, f"{path} contains a lone UTF-16 surrogate (\\ud800-\\udfff without its pair); "
                           "send valid UTF-8 text", "invalid_text", path) from None


def check_fields(body: dict[str, Any]) -> None:
    for name, check in FIELD_CHECKS.items():
        value = body.get(name)
        if value is None:
            continue
        expected = check(value)
        if expected:
            shown = repr(value) if len(repr(value)) <= 40 else type(value).__name__
            raise RequestError(400, f"'{name}' must be {expected}, got {shown}", f"invalid_{name}", name)


def load_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """The JSON object of a request body (any API), with the checks every body gets: empty, not JSON,
    not an object, nesting, 64-bit integers, lone surrogates."""
    if not raw.strip():
        raise RequestError(400, f"the request body is empty; send a JSON {what} request", "empty_body")
    try:
        body = loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON: {str(exc)[:200]}", "invalid_json") from None
    except RecursionError:
        raise RequestError(400, f"the request nests JSON deeper than {MAX_JSON_DEPTH} levels", "invalid_body") \
            from None
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {type(body).__name__}",
                           "invalid_body")
    check_json_values(body)
    return body


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and check a /v1/chat/completions body; raise RequestError with the fix on bad input."""
    body = load_json_object(raw, "chat completion")
    check_fields(body)
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
