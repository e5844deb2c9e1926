"""OpenAI chat streams: SSE chunks reassembled into one completion, and a completion replayed as SSE."""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Any

DONE = b"data: [DONE]\n\n"
# A replayed answer is cut into at most this many content chunks: enough to look like a stream,
# few enough that the replay costs nothing.
REPLAY_CHUNKS = 8
# The opening of an answer that declines ("I'm sorry, but I can't help with that."). A refusal is about
# the moment it was given (a guard, a policy, a bad day of the model); replayed, it refuses again for good.
_REFUSAL = re.compile(
    r"^\W*(?:(?:i am|i'm|i\u2019m|we are|we're)\s+(?:so\s+|very\s+|really\s+)?sorry|sorry|i apologi[sz]e|"
    r"unfortunately|as an ai(?: language model)?)?[,.!]?\s*(?:but\s+)?"
    r"(?:i|we)\s+(?:can(?:no|'|\u2019)?t|can not|cannot|won(?:'|\u2019)t|will not|am unable to|'m unable to|am not able to|"
    r"'m not able to|must decline|do not feel comfortable|don(?:'|\u2019)t feel comfortable)"
    r"(?:\s+(?:help|assist|comply|provide|do|fulfil|fulfill|support|answer|create|write|generate|engage|"
    r"share|give|continue|discuss)\b|\s+with\b)",
    re.IGNORECASE)


class Uncacheable(str, Enum):
    """Why a chat.completion must not be cached (a StoreResponse.reason and a metrics label)."""

    NOT_A_COMPLETION = "not-a-completion"
    TRUNCATED = "truncated"  # finish_reason length: the answer was cut off by max_tokens
    CONTENT_FILTER = "content-filter"
    TOOL_CALLS = "tool-calls"  # a call for the client to run, not an answer
    NOT_FINISHED = "not-finished"  # no finish_reason, or one this router does not know
    REFUSAL = "refusal"  # message.refusal, or an answer that opens by declining
    EMPTY = "empty"  # no content at all

    @property
    def detail(self) -> str:
        return _DETAILS[self]


_DETAILS = {
    Uncacheable.NOT_A_COMPLETION: "the body is not a chat.completion with choices",
    Uncacheable.TRUNCATED: "a choice finished with length (cut off by max_tokens)",
    Uncacheable.CONTENT_FILTER: "a choice finished with content_filter",
    Uncacheable.TOOL_CALLS: "a choice finished with tool_calls",
    Uncacheable.NOT_FINISHED: "a choice did not finish with stop",
    Uncacheable.REFUSAL: "a choice is a refusal",
    Uncacheable.EMPTY: "a choice has no content",
}
_FINISH_REASONS = {"length": Uncacheable.TRUNCATED, "content_filter": Uncacheable.CONTENT_FILTER,
                   "tool_calls": Uncacheable.TOOL_CALLS, "function_call": Uncacheable.TOOL_CALLS}


def uncacheable_reason(completion: dict[str, Any]) -> Uncacheable | None:
    """Why this chat.completion must not be stored, or None when every choice is a finished, plain answer."""
    if completion.get("object", "chat.completion") != "chat.completion":
        return Uncacheable.NOT_A_COMPLETION
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
        return Uncacheable.NOT_A_COMPLETION
    for choice in choices:
        finish_reason = choice.get("finish_reason")
        if finish_reason != "stop":
            return _FINISH_REASONS.get(finish_reason, Uncacheable.NOT_FINISHED)
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        if message.get("refusal"):
            return Uncacheable.REFUSAL
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            return Uncacheable.EMPTY
        if _REFUSAL.match(content[:300]):
            return Uncacheable.REFUSAL
    return None


def cacheable(completion: dict[str, Any]) -> bool:
    """True when every choice finished with stop and holds an answer (not cut off, filtered or refused)."""
    return uncacheable_reason(completion) is None


def _events(raw: bytes) -> list[str] | None:
    """The data payloads of an SSE body, in order; None when the body is not UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    payloads = []
    for block in text.split("\n\n"):
        data = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            payloads.append("\n".join(data))
    return payloads


class _Choice:
    """One choice being rebuilt from its deltas."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.role = "assistant"
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None

    def add(self, delta: dict[str, Any]) -> None:
        if delta.get("role"):
            self.role = delta["role"]
        if delta.get("content"):
            self.content.append(delta["content"])
        # vLLM's reasoning parsers stream the thinking as reasoning_content.
        for key, parts in (("reasoning_content", self.reasoning), ("refusal", self.refusal)):
            if delta.get(key):
                parts.append(delta[key])
        for call in delta.get("tool_calls") or []:
            slot = self.tool_calls.setdefault(int(call.get("index", 0)),
                                              {"id": "", "type": "function",
                                               "function": {"name": "", "arguments": ""}})
            if call.get("id"):
                slot["id"] = call["id"]
            if call.get("type"):
                slot["type"] = call["type"]
            function = call.get("function") or {}
            slot["function"]["name"] += function.get("name") or ""
            slot["function"]["arguments"] += function.get("arguments") or ""

    def message(self) -> dict[str, Any]:
        text = "".join(self.content)
        # A tool-calling answer has content null, as the non-streamed completion would.
        message: dict[str, Any] = {"role": self.role, "content": text if text or not self.tool_calls else None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return message


def reassemble_sse(raw: bytes) -> dict[str, Any] | None:
    """Rebuild the chat.completion a chat.completion.chunk stream carried.

    None when the body is not such a stream: not SSE, a chunk that is not JSON, an error event,
    no choices at all, or no closing `data: [DONE]` (a stream cut off mid-way is not an answer).
    """
    payloads = _events(raw)
    if not payloads:
        return None
    head: dict[str, Any] | None = None
    choices: dict[int, _Choice] = {}
    usage: dict[str, Any] | None = None
    done = False
    for payload in payloads:
        if payload.strip() == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(chunk, dict) or "error" in chunk or chunk.get("object") != "chat.completion.chunk":
            return None
        if head is None:
            head = chunk
        if chunk.get("usage"):
            usage = chunk["usage"]
        for delta_choice in chunk.get("choices") or []:
            index = int(delta_choice.get("index", 0))
            choice = choices.setdefault(index, _Choice(index))
            choice.add(delta_choice.get("delta") or {})
            if delta_choice.get("finish_reason"):
                choice.finish_reason = delta_choice["finish_reason"]
    if not done or head is None or not choices:
        return None
    completion: dict[str, Any] = {
        "id": head.get("id", ""),
        "object": "chat.completion",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [{"index": c.index, "message": c.message(), "logprobs": None, "finish_reason": c.finish_reason}
                    for c in (choices[i] for i in sorted(choices))],
    }
    if head.get("system_fingerprint"):
        completion["system_fingerprint"] = head["system_fingerprint"]
    if usage is not None:
        completion["usage"] = usage
    return completion


def _pieces(text: str, count: int) -> list[str]:
    """`text` cut, at spaces where possible, into about `count` pieces that join back to exactly `text`."""
    if not text:
        return []
    size = max(1, -(-len(text) // count))
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        cut = text.find(" ", end)
        # Prefer a word boundary close by; a long word is cut where it is.
        if cut != -1 and cut - end <= size:
            end = cut + 1
        elif cut == -1 and len(text) - end <= size:
            end = len(text)
        pieces.append(text[start:end])
        start = end
    return pieces


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def completion_to_sse(completion: dict[str, Any], include_usage: bool = True) -> bytes:
    """Replay a chat.completion as the chunk stream a backend would have sent, ending in `data: [DONE]`.

    Per choice: a role chunk, the content in a few pieces, then a chunk with the finish_reason;
    after all choices one usage chunk (`choices: []`) when the completion has usage.
    """
    base = {"id": completion.get("id", ""), "object": "chat.completion.chunk",
            "created": completion.get("created", 0), "model": completion.get("model", "")}
    if completion.get("system_fingerprint"):
        base["system_fingerprint"] = completion["system_fingerprint"]
    out = bytearray()
    for choice in completion.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return _event({**base, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                                "finish_reason": finish_reason}]})

        out += chunk({"role": message.get("role", "assistant"), "content": None if message.get("tool_calls") else ""})
        if message.get("reasoning_content"):
            out += chunk({"reasoning_content": message["reasoning_content"]})
        for piece in _pieces(message.get("content") or "", REPLAY_CHUNKS):
            out += chunk({"content": piece})
        if message.get("refusal"):
            out += chunk({"refusal": message["refusal"]})
        if message.get("tool_calls"):
            out += chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]})
        out += chunk({}, choice.get("finish_reason"))
    if include_usage and completion.get("usage"):
        out += _event({**base, "choices": [], "usage": completion["usage"]})
    out += DONE
    return bytes(out)


# -- typed event streams (the Responses API, Anthropic Messages): `event: <type>` + a JSON `data` with "type" --

def typed_event(payload: dict[str, Any]) -> bytes:
    """One event of a typed stream; the event name is the payload's own "type"."""
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()


def typed_payloads(raw: bytes) -> list[dict[str, Any]] | None:
    """The JSON objects of a typed stream, in order; None when it is not one (not UTF-8, a payload not an
    object with a "type")."""
    payloads = _events(raw)
    if payloads is None:
        return None
    out = []
    for payload in payloads:
        try:
            value = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            return None
        out.append(value)
    return out


def text_pieces(text: str) -> list[str]:
    """A stored answer's text cut as a replay sends it (about REPLAY_CHUNKS pieces, at spaces)."""
    return _pieces(text, REPLAY_CHUNKS)
