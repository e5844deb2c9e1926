"""What a client API must say for the Router to route it: parse, rewrite, tools, replies and answers.

Each API (chat completions, Responses, Anthropic Messages) is a translator between its own body and the
common request the Router handles (`ChatRequest`: the messages the services read, the requested model),
as the Envoy AI Gateway's translators are. The Router stays one pipeline; what differs per API lives here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from enum import Enum
from typing import Any

from services.common.config import RoutingConfig
from services.common.sse import cacheable
from services.front.chat_request import ChatRequest, RequestError, load_json_object
from services.front.masking import MaskMapping, mask_body
from services.front.merge import Route
from services.front.replies import Reply


class ToolChoiceMode(str, Enum):
    """What the client asked of the tools; only AUTO and FORCED requests have their tools selected."""

    AUTO = "auto"  # auto, or no tool_choice
    NONE = "none"
    REQUIRED = "required"  # some tool must be called (Anthropic's "any")
    FORCED = "forced"  # this one tool must be called
    OTHER = "other"  # a shape the selection does not know (allowed_tools, ...): left alone


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolChoiceMode
    name: str = ""  # with FORCED


@dataclass(frozen=True)
class ToolRef:
    """One entry of the request's `tools` list as the selection sees it; `rankable` False is always kept
    (a built-in tool such as web_search has no description to rank)."""

    index: int
    name: str
    description: str
    rankable: bool = True


class ApiTranslator:
    """The chat-completion-shaped parts every API shares; subclasses override what their body shapes differently."""

    # Names the API in logs, metrics and the cache fingerprint.
    name = "chat"

    # -- request ------------------------------------------------------------------------------
    def parse(self, raw: bytes) -> ChatRequest:
        raise NotImplementedError

    def mask(self, request: ChatRequest, body: dict[str, Any], entities: list[Any],
             mask_types: set[str]) -> tuple[dict[str, Any], MaskMapping]:
        """`body` with the entities replaced by placeholders; MaskingError when they do not fit."""
        # The contents as chat messages, in the order the guard's entity indexes refer to.
        view = {"messages": [{"role": m.role, "content": _at(body, path)}
                             for m, path in zip(request.messages, request.content_paths)]}
        masked, mapping = mask_body(view, entities, mask_types)
        out = copy.deepcopy(body)
        for path, message in zip(request.content_paths, masked["messages"]):
            _set(out, path, message["content"])
        return out, mapping

    def rewrite(self, body: dict[str, Any], route: Route, routing: RoutingConfig, decided: bool) -> dict[str, Any]:
        raise NotImplementedError

    # -- tools ------------------------------------------------------------------------------------
    def tools(self, body: dict[str, Any]) -> list[ToolRef]:
        raise NotImplementedError

    def tool_choice(self, body: dict[str, Any]) -> ToolChoice:
        raise NotImplementedError

    def called_tools(self, body: dict[str, Any]) -> set[str]:
        raise NotImplementedError

    def with_tools(self, body: dict[str, Any], keep: list[int], added: list[dict[str, Any]]) -> dict[str, Any]:
        """`body` with only the tools at `keep` (in their order), then `added` (OpenAI function objects)."""
        tools = body.get("tools") or []
        out = dict(body)
        out["tools"] = [tools[i] for i in keep] + [self.tool_from_function(f) for f in added]
        return out

    def tool_from_function(self, function: dict[str, Any]) -> dict[str, Any]:
        """A catalogue tool (an OpenAI `function` object: name, description, parameters) in this API's shape."""
        raise NotImplementedError

    # -- replies the router gives itself ----------------------------------------------------------
    def error_reply(self, error: RequestError, extra_headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        raise NotImplementedError

    def blocked_reply(self, model: str, message: str, stream: bool,
                      headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        raise NotImplementedError

    def cached_reply(self, stored: bytes, stream: bool) -> Reply:
        """A stored answer (this API's own JSON) as the backend would have sent it."""
        raise NotImplementedError

    # -- the backend's answer ---------------------------------------------------------------------
    def reassemble(self, raw: bytes) -> dict[str, Any] | None:
        """The finished answer a complete event stream carried; None for a cut-off or foreign stream."""
        raise NotImplementedError

    def usage(self, answer: dict[str, Any]) -> dict[str, int] | None:
        """prompt_tokens / completion_tokens of an answer, whatever the API calls them."""
        raise NotImplementedError

    def stream_usage(self, raw: bytes) -> dict[str, int] | None:
        """The usage of a stream that could not be reassembled (too long to keep, cut off)."""
        return None

    def to_completion(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        """The answer as a chat.completion (what the cache stores and checks), None when it has no such form
        (a tool call, an unfinished answer: never cached)."""
        raise NotImplementedError

    def from_completion(self, completion: dict[str, Any]) -> dict[str, Any]:
        """A stored chat.completion as this API's answer."""
        raise NotImplementedError

    def stored_answer(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        """The chat.completion to store for `answer`, or None when it must not be cached."""
        completion = self.to_completion(answer)
        return completion if completion is not None and cacheable(completion) else None

    def answer_id(self, answer: dict[str, Any]) -> str:
        """The id a later request may refer to (the Responses API's previous_response_id); "" if none."""
        return ""


def _at(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        body = body[key]
    return body


def _set(body: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        body = body[key]
    body[path[-1]] = value


def require_object(raw: bytes, what: str) -> dict[str, Any]:
    """The JSON object of a request body, checked as chat bodies are (depth, 64-bit integers, UTF-8)."""
    body = load_json_object(raw, what)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "'model' is required: name a model, or 'MoM' to let the router choose",
                           "missing_model", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, f"'stream' must be true or false, got {stream!r}", "invalid_stream", "stream")
    return body


def with_instructions(existing: Any, prompt: str, insert: bool) -> Any:
    """A system text (Responses `instructions`, Anthropic `system`) with the router's prompt set or put first."""
    if not insert or not existing:
        return prompt
    if isinstance(existing, str):
        return f"{prompt}\n\n{existing}"
    if isinstance(existing, list):
        return [{"type": "text", "text": prompt}, *existing]
    return prompt
