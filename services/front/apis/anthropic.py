"""Anthropic Messages (/v1/messages) as the common request: `system` + `messages` (content blocks)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from services.common.config import RoutingConfig
from services.common.sse import text_pieces, typed_event, typed_payloads
from services.front.apis.base import ApiTranslator, ToolChoice, ToolChoiceMode, ToolRef, require_object, \
    with_instructions
from services.front.chat_request import ChatRequest, RequestError, dumps, loads, message_text
from services.front.merge import Route
from services.front.replies import JSON, SSE, Reply
from switchyard.v1 import common_pb2, decision_pb2

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               503: "overloaded_error", 529: "overloaded_error"}
# Extended thinking's budget for each reasoning effort; Anthropic's floor is 1,024 tokens.
THINKING_BUDGET = {"low": 1024, "medium": 4096, "high": 16384}
MIN_THINKING_BUDGET = 1024
_CHAT_NAMES = {"stop_sequences": "stop"}


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


class AnthropicApi(ApiTranslator):
    name = "anthropic"

    # -- request ------------------------------------------------------------------------------
    def parse(self, raw: bytes) -> ChatRequest:
        body = require_object(raw, "Anthropic Messages")
        messages: list[common_pb2.ChatMessage] = []
        paths: list[tuple[Any, ...]] = []
        view_messages: list[dict[str, Any]] = []

        def add(role: str, content: Any, path: tuple[Any, ...], where: str) -> None:
            text, from_parts = message_text(content, where)
            messages.append(common_pb2.ChatMessage(role=role, text=text, from_parts=from_parts))
            paths.append(path)
            view_messages.append({"role": role, "content": content})

        system = body.get("system")
        if system is not None:
            if not isinstance(system, (str, list)):
                raise RequestError(400, "'system' must be a string or a list of text blocks", "invalid_system",
                                   "system")
            add("system", system, ("system",), "system")
        turns = body.get("messages")
        if not isinstance(turns, list) or not turns:
            raise RequestError(400, "'messages' must be a non-empty list of messages", "missing_messages",
                               "messages")
        for i, turn in enumerate(turns):
            where = f"messages[{i}]"
            if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
                raise RequestError(400, f"{where} must be an object with role 'user' or 'assistant'",
                                   "invalid_message", f"{where}.role")
            add(turn["role"], turn.get("content"), ("messages", i, "content"), where)
            blocks = turn.get("content") if isinstance(turn.get("content"), list) else []
            for j, block in enumerate(blocks):
                # A tool's result is text the model reads: the guard sees it as a tool message.
                if isinstance(block, dict) and block.get("type") == "tool_result" \
                        and isinstance(block.get("content"), (str, list)):
                    add("tool", block["content"], ("messages", i, "content", j, "content"), f"{where}.content[{j}]")
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(400, f"'max_tokens' is required: a positive integer, got {max_tokens!r}",
                               "invalid_max_tokens", "max_tokens")
        if body.get("tools") is not None and not isinstance(body["tools"], list):
            raise RequestError(400, "'tools' must be a list of tool objects", "invalid_tools", "tools")
        view = {_CHAT_NAMES.get(k, k): v for k, v in body.items() if k not in ("system", "messages")}
        view["messages"] = view_messages
        view["api"] = self.name
        return ChatRequest(body=body, model=body["model"], stream=body.get("stream", False), messages=messages,
                           api=self, view=view, content_paths=paths)

    def rewrite(self, body: dict[str, Any], route: Route, routing: RoutingConfig, decided: bool) -> dict[str, Any]:
        out = copy.copy(body)
        out["model"] = route.model
        if not decided:
            return out
        model = routing.models.get(route.model)
        family = routing.reasoning_families.get(model.reasoning_family) if model and model.reasoning_family else None
        if family is not None:
            # Extended thinking is this API's one reasoning switch, whatever the model's family.
            effort = route.reasoning_effort or "medium"
            budget = min(THINKING_BUDGET.get(effort, 4096), body["max_tokens"] - 1)
            if route.use_reasoning and budget >= MIN_THINKING_BUDGET:
                out["thinking"] = {"type": "enabled", "budget_tokens": budget}
            elif not route.use_reasoning:
                out.pop("thinking", None)
        if route.system_prompt:
            insert = route.system_prompt_mode == decision_pb2.SYSTEM_PROMPT_MODE_INSERT
            out["system"] = with_instructions(body.get("system"), route.system_prompt, insert)
        return out

    # -- tools ------------------------------------------------------------------------------------
    def tools(self, body: dict[str, Any]) -> list[ToolRef]:
        refs = []
        for i, tool in enumerate(body.get("tools") or []):
            # Client tools have no type (or "custom"); server tools (web_search_..., bash_...) are kept.
            if isinstance(tool, dict) and tool.get("type", "custom") == "custom" and isinstance(tool.get("name"), str):
                refs.append(ToolRef(i, tool["name"], str(tool.get("description") or "")))
            else:
                refs.append(ToolRef(i, "", "", rankable=False))
        return refs

    def tool_choice(self, body: dict[str, Any]) -> ToolChoice:
        choice = body.get("tool_choice")
        kind = choice.get("type") if isinstance(choice, dict) else None
        if choice is None or kind == "auto":
            return ToolChoice(ToolChoiceMode.AUTO)
        if kind == "none":
            return ToolChoice(ToolChoiceMode.NONE)
        if kind == "any":
            return ToolChoice(ToolChoiceMode.REQUIRED)
        if kind == "tool":
            return ToolChoice(ToolChoiceMode.FORCED, str(choice.get("name", "")))
        return ToolChoice(ToolChoiceMode.OTHER)

    def called_tools(self, body: dict[str, Any]) -> set[str]:
        names: set[str] = set()
        for turn in body.get("messages") or []:
            blocks = turn.get("content") if isinstance(turn, dict) and isinstance(turn.get("content"), list) else []
            names |= {b["name"] for b in blocks
                      if isinstance(b, dict) and b.get("type") == "tool_use" and isinstance(b.get("name"), str)}
        return names

    def tool_from_function(self, function: dict[str, Any]) -> dict[str, Any]:
        return {"name": function.get("name", ""), "description": function.get("description", ""),
                "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}

    # -- replies ----------------------------------------------------------------------------------
    def error_reply(self, error: RequestError, extra_headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        kind = ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
        payload = {"type": "error", "error": {"type": kind, "message": error.message}}
        return Reply(error.status, dumps(payload), JSON, (*error.headers, *extra_headers))

    def blocked_reply(self, model: str, message: str, stream: bool,
                      headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        """A 200 message with stop_reason refusal (Anthropic's counterpart of finish_reason content_filter)."""
        answer = {"id": message_id(), "type": "message", "role": "assistant", "model": model,
                  "content": [{"type": "text", "text": message}], "stop_reason": "refusal", "stop_sequence": None,
                  "usage": {"input_tokens": 0, "output_tokens": 0}}
        if not stream:
            return Reply(200, dumps(answer), JSON, headers)
        return Reply(200, message_to_events(answer), SSE, headers)

    def cached_reply(self, stored: bytes, stream: bool) -> Reply:
        message = self.from_completion(loads(stored))
        if not stream:
            return Reply(200, dumps(message))
        return Reply(200, message_to_events(message), SSE)

    # -- answers ----------------------------------------------------------------------------------
    def reassemble(self, raw: bytes) -> dict[str, Any] | None:
        """The message a stream carried: message_start's message, its blocks from their deltas, message_delta's
        stop_reason and usage; None without message_stop or after an error event."""
        events = typed_payloads(raw)
        if not events:
            return None
        message: dict[str, Any] | None = None
        blocks: dict[int, dict[str, Any]] = {}
        partial_json: dict[int, list[str]] = {}
        for event in events:
            kind = event["type"]
            if kind == "error":
                return None
            if kind == "message_start" and isinstance(event.get("message"), dict):
                message = copy.deepcopy(event["message"])
            elif kind == "content_block_start":
                blocks[int(event.get("index", 0))] = copy.deepcopy(event.get("content_block") or {})
            elif kind == "content_block_delta":
                index, delta = int(event.get("index", 0)), event.get("delta") or {}
                block = blocks.setdefault(index, {"type": "text", "text": ""})
                if delta.get("type") == "text_delta":
                    block["text"] = block.get("text", "") + delta.get("text", "")
                elif delta.get("type") == "thinking_delta":
                    block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
                elif delta.get("type") == "signature_delta":
                    block["signature"] = delta.get("signature", "")
                elif delta.get("type") == "input_json_delta":
                    partial_json.setdefault(index, []).append(delta.get("partial_json", ""))
            elif kind == "message_delta" and message is not None:
                message.update(event.get("delta") or {})
                message["usage"] = {**(message.get("usage") or {}), **(event.get("usage") or {})}
            elif kind == "message_stop" and message is not None:
                for index, parts in partial_json.items():
                    try:
                        blocks[index]["input"] = loads("".join(parts).encode() or b"{}")
                    except ValueError:
                        return None
                message["content"] = [blocks[i] for i in sorted(blocks)]
                return message
        return None

    def usage(self, answer: dict[str, Any]) -> dict[str, int] | None:
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return None
        prompt = sum(v for k, v in usage.items() if k in ("input_tokens", "cache_creation_input_tokens",
                                                          "cache_read_input_tokens") and isinstance(v, int))
        return {"prompt_tokens": prompt, "completion_tokens": usage.get("output_tokens")}

    def stream_usage(self, raw: bytes) -> dict[str, int] | None:
        """Input tokens from message_start, output tokens from the last message_delta (a cumulative count)."""
        usage: dict[str, Any] = {}
        for event in typed_payloads(raw) or []:
            if event["type"] == "message_start" and isinstance(event.get("message"), dict):
                usage.update(event["message"].get("usage") or {})
            elif event["type"] == "message_delta":
                usage.update(event.get("usage") or {})
        return self.usage({"usage": usage}) if usage else None

    def to_completion(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        blocks = answer.get("content")
        if answer.get("type") != "message" or answer.get("stop_reason") != "end_turn" or not isinstance(blocks, list) \
                or any(not isinstance(b, dict) or b.get("type") not in ("text", "thinking") for b in blocks):
            return None
        message: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(b.get("text", "") for b in blocks if b.get("type") == "text")}
        thinking = "".join(b.get("thinking", "") for b in blocks if b.get("type") == "thinking")
        if thinking:
            message["reasoning_content"] = thinking
        usage = self.usage(answer) or {}
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        return {"id": answer.get("id", ""), "object": "chat.completion", "created": 0, "model": answer.get("model", ""),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}}

    def from_completion(self, completion: dict[str, Any]) -> dict[str, Any]:
        message = ((completion.get("choices") or [{}])[0]).get("message") or {}
        usage = completion.get("usage") or {}
        # A stored thinking block has lost its signature: the text is replayed, the thinking is not.
        return {"id": message_id(), "type": "message", "role": "assistant", "model": completion.get("model", ""),
                "content": [{"type": "text", "text": message.get("content") or ""}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": usage.get("prompt_tokens", 0),
                                                 "output_tokens": usage.get("completion_tokens", 0)}}


def message_to_events(message: dict[str, Any]) -> bytes:
    """A finished message as Anthropic streams it: message_start, per block start/deltas/stop, message_delta
    (stop_reason, output usage), message_stop."""
    out = bytearray()
    usage = message.get("usage") or {}
    opening = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {**usage, "output_tokens": 0}}
    out += typed_event({"type": "message_start", "message": opening})
    for index, block in enumerate(message.get("content") or []):
        kind = block.get("type")
        if kind == "text":
            out += typed_event({"type": "content_block_start", "index": index,
                                "content_block": {"type": "text", "text": ""}})
            for piece in text_pieces(block.get("text", "")):
                out += typed_event({"type": "content_block_delta", "index": index,
                                    "delta": {"type": "text_delta", "text": piece}})
        elif kind == "thinking":
            out += typed_event({"type": "content_block_start", "index": index,
                                "content_block": {"type": "thinking", "thinking": ""}})
            out += typed_event({"type": "content_block_delta", "index": index,
                                "delta": {"type": "thinking_delta", "thinking": block.get("thinking", "")}})
            if block.get("signature"):
                out += typed_event({"type": "content_block_delta", "index": index,
                                    "delta": {"type": "signature_delta", "signature": block["signature"]}})
        else:
            out += typed_event({"type": "content_block_start", "index": index, "content_block": block})
        out += typed_event({"type": "content_block_stop", "index": index})
    out += typed_event({"type": "message_delta",
                        "delta": {"stop_reason": message.get("stop_reason"),
                                  "stop_sequence": message.get("stop_sequence")},
                        "usage": {"output_tokens": usage.get("output_tokens", 0)}})
    out += typed_event({"type": "message_stop"})
    return bytes(out)


ANTHROPIC = AnthropicApi()
