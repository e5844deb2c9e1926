"""The OpenAI Responses API (/v1/responses) as the common request: `instructions` + `input` are the messages."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

from services.common.config import RoutingConfig
from services.common.sse import text_pieces, typed_event, typed_payloads
from services.front.apis.base import ApiTranslator, ToolChoice, ToolChoiceMode, ToolRef, require_object
from services.front.chat_request import ChatRequest, RequestError, dumps, loads, message_text
from services.front.merge import Route
from services.front.replies import JSON, SSE, Reply, error_reply
from switchyard.v1 import common_pb2, decision_pb2

# Body fields whose chat-completion names differ; the view (fingerprint, params) uses the chat names.
_CHAT_NAMES = {"max_output_tokens": "max_completion_tokens"}
# Input item roles as the services know them.
_ROLES = {"developer": "system"}
# Which terminal event a response of each status ends with.
_TERMINAL = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}


def response_id() -> str:
    return f"resp_{uuid.uuid4().hex[:24]}"


class ResponsesApi(ApiTranslator):
    name = "responses"

    # -- request ------------------------------------------------------------------------------
    def parse(self, raw: bytes) -> ChatRequest:
        body = require_object(raw, "Responses API")
        messages: list[common_pb2.ChatMessage] = []
        paths: list[tuple[Any, ...]] = []
        view_messages: list[dict[str, Any]] = []

        def add(role: str, content: Any, path: tuple[Any, ...], where: str) -> None:
            text, from_parts = message_text(content, where)
            messages.append(common_pb2.ChatMessage(role=role, text=text, from_parts=from_parts))
            paths.append(path)
            view_messages.append({"role": role, "content": content})

        for field in ("instructions", "input"):
            value = body.get(field)
            if value is None:
                continue
            if isinstance(value, str):
                add("system" if field == "instructions" else "user", value, (field,), field)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    self._add_item(add, item, (field, i), f"{field}[{i}]")
            else:
                raise RequestError(400, f"'{field}' must be a string or a list of input items, "
                                   f"got {type(value).__name__}", f"invalid_{field}", field)
        if not any(m.role == "user" for m in messages) and not body.get("previous_response_id"):
            raise RequestError(400, "'input' must hold a user message (a string, or items with role 'user')",
                               "missing_input", "input")
        if body.get("tools") is not None and not isinstance(body["tools"], list):
            raise RequestError(400, "'tools' must be a list of tool objects", "invalid_tools", "tools")
        if body.get("previous_response_id") is not None and not isinstance(body["previous_response_id"], str):
            raise RequestError(400, "'previous_response_id' must be a string", "invalid_previous_response_id",
                               "previous_response_id")
        view = {_CHAT_NAMES.get(k, k): v for k, v in body.items() if k not in ("input", "instructions")}
        view["messages"] = view_messages
        view["api"] = self.name
        return ChatRequest(body=body, model=body["model"], stream=body.get("stream", False), messages=messages,
                           api=self, view=view, content_paths=paths)

    def _add_item(self, add: Any, item: Any, path: tuple[Any, ...], where: str) -> None:
        if isinstance(item, str):
            add("user", item, path, where)
            return
        if not isinstance(item, dict):
            raise RequestError(400, f"{where} must be an input item object", "invalid_input", where)
        kind = item.get("type", "message")
        if kind == "message" and "role" in item:
            role = item["role"]
            if not isinstance(role, str) or not role:
                raise RequestError(400, f"{where}.role must be user, assistant, system or developer",
                                   "invalid_input", f"{where}.role")
            add(_ROLES.get(role, role), item.get("content"), (*path, "content"), where)
        elif kind == "function_call_output" and isinstance(item.get("output"), (str, list)):
            add("tool", item["output"], (*path, "output"), where)
        # function_call, reasoning and other items carry no text the services read.

    def rewrite(self, body: dict[str, Any], route: Route, routing: RoutingConfig, decided: bool) -> dict[str, Any]:
        out = copy.copy(body)
        out["model"] = route.model
        if not decided:
            return out
        model = routing.models.get(route.model)
        family = routing.reasoning_families.get(model.reasoning_family) if model and model.reasoning_family else None
        if family is not None and family.type == "reasoning_effort":
            effort = (route.reasoning_effort or "medium") if route.use_reasoning else "low"
            reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
            out["reasoning"] = {**reasoning, "effort": effort}
        elif family is not None:
            # vLLM reads the thinking switch of a chat template from chat_template_kwargs on this API too.
            kwargs = dict(body.get("chat_template_kwargs") or {})
            for other in routing.reasoning_families.values():
                if other.type == "chat_template_kwargs" and other.parameter != family.parameter:
                    kwargs.pop(other.parameter, None)
            kwargs[family.parameter] = route.use_reasoning
            out["chat_template_kwargs"] = kwargs
            out.pop("reasoning", None)
        if route.system_prompt:
            insert = route.system_prompt_mode == decision_pb2.SYSTEM_PROMPT_MODE_INSERT
            existing = body.get("instructions")
            if isinstance(existing, list):
                prompt_item = {"role": "system", "content": route.system_prompt}
                out["instructions"] = [prompt_item, *existing] if insert else [prompt_item]
            elif insert and isinstance(existing, str) and existing:
                out["instructions"] = f"{route.system_prompt}\n\n{existing}"
            else:
                out["instructions"] = route.system_prompt
        return out

    # -- tools ------------------------------------------------------------------------------------
    def tools(self, body: dict[str, Any]) -> list[ToolRef]:
        refs = []
        for i, tool in enumerate(body.get("tools") or []):
            if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str):
                refs.append(ToolRef(i, tool["name"], str(tool.get("description") or "")))
            else:  # web_search, file_search, mcp, ...: built in, kept
                refs.append(ToolRef(i, "", "", rankable=False))
        return refs

    def tool_choice(self, body: dict[str, Any]) -> ToolChoice:
        choice = body.get("tool_choice")
        if choice is None or choice == "auto":
            return ToolChoice(ToolChoiceMode.AUTO)
        if choice in ("none", "required"):
            return ToolChoice(ToolChoiceMode(choice))
        if isinstance(choice, dict) and choice.get("type") == "function":
            return ToolChoice(ToolChoiceMode.FORCED, str(choice.get("name", "")))
        return ToolChoice(ToolChoiceMode.OTHER)

    def called_tools(self, body: dict[str, Any]) -> set[str]:
        items = body.get("input") if isinstance(body.get("input"), list) else []
        return {item["name"] for item in items
                if isinstance(item, dict) and item.get("type") == "function_call" and isinstance(item.get("name"), str)}

    def tool_from_function(self, function: dict[str, Any]) -> dict[str, Any]:
        return {"type": "function", **function}

    # -- replies ----------------------------------------------------------------------------------
    def error_reply(self, error: RequestError, extra_headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        # The Responses API answers errors in the chat completions' shape.
        return error_reply(error, extra_headers)

    def blocked_reply(self, model: str, message: str, stream: bool,
                      headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        """An incomplete response (incomplete_details.reason content_filter), as finish_reason content_filter."""
        response = {
            "id": response_id(), "object": "response", "created_at": int(time.time()), "status": "incomplete",
            "incomplete_details": {"reason": "content_filter"}, "error": None, "model": model,
            "output": [_message_item(message)], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": _usage(0, 0),
        }
        if not stream:
            return Reply(200, dumps(response), JSON, headers)
        return Reply(200, response_to_events(response), SSE, headers)

    def cached_reply(self, stored: bytes, stream: bool) -> Reply:
        response = self.from_completion(loads(stored))
        if not stream:
            return Reply(200, dumps(response))
        return Reply(200, response_to_events(response), SSE)

    # -- answers ----------------------------------------------------------------------------------
    def reassemble(self, raw: bytes) -> dict[str, Any] | None:
        # The terminal event carries the whole response: nothing to rebuild.
        for event in typed_payloads(raw) or []:
            if event["type"] in _TERMINAL.values() and isinstance(event.get("response"), dict):
                return event["response"]
        return None

    def usage(self, answer: dict[str, Any]) -> dict[str, int] | None:
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return None
        return {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")}

    def to_completion(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        items = answer.get("output")
        if answer.get("object") != "response" or answer.get("status") != "completed" or not isinstance(items, list) \
                or any(not isinstance(i, dict) or i.get("type") not in ("message", "reasoning") for i in items):
            return None
        usage = self.usage(answer) or {}
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        return {"id": answer.get("id", ""), "object": "chat.completion", "created": answer.get("created_at", 0),
                "model": answer.get("model", ""),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": output_text(answer)},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}}

    def from_completion(self, completion: dict[str, Any]) -> dict[str, Any]:
        choice = (completion.get("choices") or [{}])[0]
        usage = completion.get("usage") or {}
        # The stored id is kept: the backend holds that response, so a follow-up may continue from it.
        return {"id": completion.get("id") or response_id(), "object": "response",
                "created_at": completion.get("created", 0), "status": "completed", "error": None,
                "incomplete_details": None, "model": completion.get("model", ""),
                "output": [_message_item((choice.get("message") or {}).get("content") or "")],
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                "usage": _usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))}

    def answer_id(self, answer: dict[str, Any]) -> str:
        return answer.get("id") if isinstance(answer.get("id"), str) else ""


def output_text(response: dict[str, Any]) -> str:
    """The text of a response's message items (what the SDK's `output_text` joins)."""
    texts = []
    for item in response.get("output") or []:
        if isinstance(item, dict) and item.get("type") == "message":
            texts += [p.get("text", "") for p in item.get("content") or []
                      if isinstance(p, dict) and p.get("type") == "output_text"]
    return "".join(texts)


def _message_item(text: str) -> dict[str, Any]:
    return {"type": "message", "id": f"msg_{uuid.uuid4().hex[:24]}", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


def response_to_events(response: dict[str, Any]) -> bytes:
    """A finished response as the event stream the API sends: created, in_progress, each message item
    (added, part added, text deltas, text done, part done, item done), then completed/incomplete."""
    sequence = 0
    out = bytearray()

    def emit(payload: dict[str, Any]) -> None:
        nonlocal sequence
        out.extend(typed_event({**payload, "sequence_number": sequence}))
        sequence += 1

    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    emit({"type": "response.created", "response": opening})
    emit({"type": "response.in_progress", "response": opening})
    for index, item in enumerate(response.get("output") or []):
        if not isinstance(item, dict):
            continue
        if item.get("type") != "message":
            emit({"type": "response.output_item.added", "output_index": index, "item": item})
            emit({"type": "response.output_item.done", "output_index": index, "item": item})
            continue
        emit({"type": "response.output_item.added", "output_index": index,
              "item": {**item, "status": "in_progress", "content": []}})
        for part_index, part in enumerate(item.get("content") or []):
            item_id = item.get("id", "")
            where = {"item_id": item_id, "output_index": index, "content_index": part_index}
            if part.get("type") != "output_text":
                emit({"type": "response.content_part.added", **where, "part": part})
                emit({"type": "response.content_part.done", **where, "part": part})
                continue
            emit({"type": "response.content_part.added", **where, "part": {**part, "text": ""}})
            for piece in text_pieces(part.get("text", "")):
                emit({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []})
            emit({"type": "response.output_text.done", **where, "text": part.get("text", ""), "logprobs": []})
            emit({"type": "response.content_part.done", **where, "part": part})
        emit({"type": "response.output_item.done", "output_index": index, "item": item})
    emit({"type": _TERMINAL.get(response.get("status", "completed"), "response.completed"), "response": response})
    return bytes(out)


RESPONSES = ResponsesApi()
