"""OpenAI chat streams: SSE chunks reassembled into one completion, and a completion replayed as SSE."""

from __future__ import annotations

import json
from typing import Any

# Only finished answers are worth replaying; content_filter, tool_calls and cut-off streams are not.
CACHEABLE_FINISH_REASONS = frozenset({"stop", "length"})
DONE = b"data: [DONE]\n\n"
# A replayed answer is cut into at most this many content chunks: enough to look like a stream,
# few enough that the replay costs nothing.
REPLAY_CHUNKS = 8


def cacheable(completion: dict[str, Any]) -> bool:
    """True when every choice of a chat.completion finished with stop or length."""
    if completion.get("object", "chat.completion") != "chat.completion":
        return False
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(c, dict) and c.get("finish_reason") in CACHEABLE_FINISH_REASONS for c in choices)


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
