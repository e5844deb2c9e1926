"""The outgoing body: model, reasoning fields for the model's family, and the system prompt."""

from __future__ import annotations

import copy
from typing import Any

from services.common.config import RoutingConfig
from services.front.merge import Route
from switchyard.v1 import decision_pb2

# Fields by which clients ask for reasoning; the one the target family needs is set, the rest removed.
_REASONING_FIELDS = ("reasoning_effort",)


def rewrite_body(body: dict[str, Any], route: Route, routing: RoutingConfig, decided: bool) -> dict[str, Any]:
    """A copy of `body` that the chosen backend should receive; fields the router does not own stay as they are."""
    out = copy.copy(body)
    out["model"] = route.model
    if not decided:
        return out
    _set_reasoning(out, route, routing)
    if route.system_prompt:
        out["messages"] = _with_system_prompt(out["messages"], route.system_prompt, route.system_prompt_mode)
    return out


def _set_reasoning(body: dict[str, Any], route: Route, routing: RoutingConfig) -> None:
    model = routing.models.get(route.model)
    family = routing.reasoning_families.get(model.reasoning_family) if model and model.reasoning_family else None
    if family is None:
        return
    if family.type == "chat_template_kwargs":
        kwargs = dict(body.get("chat_template_kwargs") or {})
        # Another family's switch would confuse this model's template.
        for other in routing.reasoning_families.values():
            if other.type == "chat_template_kwargs" and other.parameter != family.parameter:
                kwargs.pop(other.parameter, None)
        kwargs[family.parameter] = route.use_reasoning
        body["chat_template_kwargs"] = kwargs
        for name in _REASONING_FIELDS:
            body.pop(name, None)
    else:
        if isinstance(body.get("chat_template_kwargs"), dict):
            kwargs = {k: v for k, v in body["chat_template_kwargs"].items()
                      if k not in {f.parameter for f in routing.reasoning_families.values()}}
            if kwargs:
                body["chat_template_kwargs"] = kwargs
            else:
                body.pop("chat_template_kwargs")
        body[family.parameter] = (route.reasoning_effort or "medium") if route.use_reasoning else "low"


def _with_system_prompt(messages: list[Any], prompt: str, mode: int) -> list[Any]:
    messages = list(messages)
    first = messages[0] if messages else None
    has_system = isinstance(first, dict) and first.get("role") == "system"
    if not has_system:
        return [{"role": "system", "content": prompt}, *messages]
    if mode == decision_pb2.SYSTEM_PROMPT_MODE_INSERT:
        existing = first.get("content")
        if isinstance(existing, str) and existing:
            messages[0] = {**first, "content": f"{prompt}\n\n{existing}"}
        elif isinstance(existing, list):
            messages[0] = {**first, "content": [{"type": "text", "text": prompt}, *existing]}
        else:
            messages[0] = {**first, "content": prompt}
    else:
        messages[0] = {**first, "content": prompt}
    return messages
