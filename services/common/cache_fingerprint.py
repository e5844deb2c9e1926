"""The exact half of the cache key: a digest of everything in a chat request that can change the answer.

The cache compares the last user message's text by meaning (services/cache); everything else must be equal.
"Everything else" is every field of the body, by default: only the fields listed in ANSWER_NEUTRAL_FIELDS,
each with the reason it cannot change what the model says, are left out. A field the router does not know
yet therefore splits the cache instead of sharing a wrong answer. The front computes the digest (it has the
body) and sends it in RequestContext.answer_fingerprint; the cache service only compares it.

`route_fingerprint` is the same idea for what the router itself changes in the body (the injected system
prompt, the reasoning switch), which is only known once the decision is made.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Sequence
from typing import Any

import orjson

# Fields that cannot change the answer, and why. Everything not listed here is part of the fingerprint.
ANSWER_NEUTRAL_FIELDS: dict[str, str] = {
    "model": "the front serves a hit only for the model (or, with scope_by: category, the category) it routes to",
    "user": "names the end user for abuse monitoring; the tenant header, not this, scopes the cache",
    "stream": "how the answer is delivered: a stored answer is replayed as a stream when one is asked for",
    "stream_options": "delivery details of a stream (include_usage); the replay always ends with the usage",
    "temperature": "sampling above cache.max_temperature bypasses the cache; at or below it, answers are reused",
    "metadata": "tags for the provider's stored completions, not read by the model",
    "store": "whether the provider keeps the completion, not what it says",
    "service_tier": "price and latency tier of the provider, not the model's output",
    "prompt_cache_key": "a hint for the provider's prompt cache",
    "safety_identifier": "names the end user for abuse monitoring, like `user`",
}
# Values that mean the same as leaving the field out (OpenAI's documented defaults).
_DEFAULTS: dict[str, Any] = {
    "n": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False,
    "response_format": {"type": "text"}, "logit_bias": {}, "stop": [], "tools": [], "functions": [],
}
# Stands for the last user message's text, which the cache compares by meaning instead.
QUERY_PLACEHOLDER = "\x00query"
_TEXT_PARTS = frozenset({"text", "input_text"})
_UNSET = object()


def normalize_text(text: str) -> str:
    """Unicode NFC with whitespace runs collapsed: formatting noise must not split the cache."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def last_user_index(roles: Sequence[str]) -> int | None:
    """Which message is the question the cache compares by meaning: the last one with role user."""
    return next((i for i in range(len(roles) - 1, -1, -1) if roles[i] == "user"), None)


def answer_fingerprint(body: dict[str, Any]) -> str:
    """Digest of the request body minus the neutral fields and the last user message's text."""
    canonical = {k: _canonical(v) for k, v in body.items() if k not in ANSWER_NEUTRAL_FIELDS and k != "messages"}
    canonical = {k: v for k, v in canonical.items() if v is not None and _DEFAULTS.get(k, _UNSET) != v}
    if canonical.get("tool_choice") == ("auto" if canonical.get("tools") else "none"):
        del canonical["tool_choice"]
    if canonical.get("parallel_tool_calls") is True:
        del canonical["parallel_tool_calls"]
    if "max_tokens" in canonical and "max_completion_tokens" not in canonical:
        canonical["max_completion_tokens"] = canonical.pop("max_tokens")  # two names of one limit
    messages = body.get("messages")
    canonical["messages"] = _messages(messages) if isinstance(messages, list) else _canonical(messages)
    return _digest(canonical)


def route_fingerprint(system_prompt: str, system_prompt_mode: int, use_reasoning: bool,
                      reasoning_effort: str) -> str:
    """Digest of what the router changes in the body for one route (services/front/body_rewrite.py):
    the system prompt it injects and how (replace / insert), and the reasoning switch and effort."""
    return _digest({
        "system_prompt": normalize_text(system_prompt),
        "system_prompt_mode": system_prompt_mode if system_prompt else 0,
        "use_reasoning": use_reasoning,
        "reasoning_effort": reasoning_effort if use_reasoning else "",
    })


def _messages(messages: list[Any]) -> list[Any]:
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    query = last_user_index(roles)  # type: ignore[arg-type]
    call_ids: dict[str, str] = {}
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            out.append(_canonical(message))
            continue
        item = {k: _canonical(v) for k, v in message.items() if v is not None and k not in ("content",
                                                                                          "tool_calls")}
        item["content"] = _content(message.get("content"), is_query=i == query)
        # Tool call ids are opaque and new on every answer: what matters is which call a result belongs to.
        if isinstance(message.get("tool_calls"), list):
            item["tool_calls"] = [_tool_call(c, call_ids) for c in message["tool_calls"]]
        if isinstance(message.get("tool_call_id"), str):
            item["tool_call_id"] = call_ids.setdefault(message["tool_call_id"], f"call_{len(call_ids)}")
        out.append(item)
    return out


def _tool_call(call: Any, call_ids: dict[str, str]) -> Any:
    if not isinstance(call, dict):
        return _canonical(call)
    item = {k: _canonical(v) for k, v in call.items() if k != "id"}
    if isinstance(call.get("id"), str):
        item["id"] = call_ids.setdefault(call["id"], f"call_{len(call_ids)}")
    function = item.get("function")
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        # Arguments are a JSON string: key order and spacing are not part of what was called.
        try:
            function["arguments"] = _canonical(json.loads(function["arguments"]))
        except ValueError:
            pass
    return item


def _content(content: Any, is_query: bool) -> Any:
    """Text normalised (the query's replaced by a placeholder); other parts (images, audio, files) kept whole,
    so that another image is another fingerprint. Text-only part lists read like the string they join to."""
    if isinstance(content, str):
        return QUERY_PLACEHOLDER if is_query else normalize_text(content)
    if not isinstance(content, list):
        return _canonical(content)
    if all(isinstance(p, dict) and p.get("type") in _TEXT_PARTS and isinstance(p.get("text"), str) for p in content):
        return QUERY_PLACEHOLDER if is_query else normalize_text("\n".join(p["text"] for p in content))
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": QUERY_PLACEHOLDER if is_query else normalize_text(part["text"])})
        else:
            parts.append(_canonical(part))
    return parts


def _canonical(value: Any) -> Any:
    """JSON values that mean the same compare equal: 1.0 and 1, key order."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _digest(value: Any) -> str:
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # integers over 64 bits
        data = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(data).hexdigest()[:32]
