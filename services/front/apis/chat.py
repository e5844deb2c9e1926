"""Chat completions (/v1/chat/completions): the common request itself; the other APIs translate to it."""

from __future__ import annotations

from typing import Any

from services.common.config import RoutingConfig
from services.common.sse import completion_to_sse, reassemble_sse
from services.front.apis.base import ApiTranslator, ToolChoice, ToolChoiceMode, ToolRef
from services.front.body_rewrite import rewrite_body
from services.front.chat_request import ChatRequest, RequestError, loads, parse_chat_request
from services.front.masking import MaskMapping, mask_body
from services.front.merge import Route
from services.front.replies import SSE, Reply, blocked_reply, error_reply


class ChatApi(ApiTranslator):
    name = "chat"

    def parse(self, raw: bytes) -> ChatRequest:
        request = parse_chat_request(raw)
        request.api = self
        return request

    def mask(self, request: ChatRequest, body: dict[str, Any], entities: list[Any],
             mask_types: set[str]) -> tuple[dict[str, Any], MaskMapping]:
        return mask_body(body, entities, mask_types)

    def rewrite(self, body: dict[str, Any], route: Route, routing: RoutingConfig, decided: bool) -> dict[str, Any]:
        return rewrite_body(body, route, routing, decided)

    def tools(self, body: dict[str, Any]) -> list[ToolRef]:
        refs = []
        for i, tool in enumerate(body.get("tools") or []):
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(tool, dict) and tool.get("type", "function") == "function" and isinstance(function, dict) \
                    and isinstance(function.get("name"), str):
                refs.append(ToolRef(i, function["name"], str(function.get("description") or "")))
            else:
                refs.append(ToolRef(i, "", "", rankable=False))
        return refs

    def tool_choice(self, body: dict[str, Any]) -> ToolChoice:
        choice = body.get("tool_choice")
        if choice is None or choice == "auto":
            return ToolChoice(ToolChoiceMode.AUTO)
        if choice in ("none", "required"):
            return ToolChoice(ToolChoiceMode(choice))
        if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
            return ToolChoice(ToolChoiceMode.FORCED, str(choice["function"].get("name", "")))
        return ToolChoice(ToolChoiceMode.OTHER)

    def called_tools(self, body: dict[str, Any]) -> set[str]:
        names: set[str] = set()
        for message in body.get("messages") or []:
            if not isinstance(message, dict):
                continue
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("name"), str):
                    names.add(function["name"])
            if message.get("role") == "tool" and isinstance(message.get("name"), str):
                names.add(message["name"])
        return names

    def tool_from_function(self, function: dict[str, Any]) -> dict[str, Any]:
        return {"type": "function", "function": function}

    def error_reply(self, error: RequestError, extra_headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return error_reply(error, extra_headers)

    def blocked_reply(self, model: str, message: str, stream: bool,
                      headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return blocked_reply(model, message, stream, headers)

    def cached_reply(self, stored: bytes, stream: bool) -> Reply:
        if not stream:
            return Reply(200, stored)
        # A streaming client gets the stored answer as the chunk stream a backend would have sent.
        return Reply(200, completion_to_sse(loads(stored)), SSE)

    def reassemble(self, raw: bytes) -> dict[str, Any] | None:
        return reassemble_sse(raw)

    def usage(self, answer: dict[str, Any]) -> dict[str, int] | None:
        usage = answer.get("usage")
        return usage if isinstance(usage, dict) else None

    def to_completion(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        return answer

    def from_completion(self, completion: dict[str, Any]) -> dict[str, Any]:
        return completion


CHAT = ChatApi()
