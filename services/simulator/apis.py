"""The simulator's Responses API (/v1/responses) and Anthropic Messages (/v1/messages), streaming too."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, MutableSequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from services.common.config import SimulatorConfig
from services.common.sse import typed_event

# Responses the simulator keeps for previous_response_id (store: true, the API's default).
STORED_RESPONSES = 1000


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _last_user_text(items: list[Any]) -> str:
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "user":
            return _text(item.get("content"))
        if isinstance(item, str):
            return item
    return ""


def _answer(model: str, question: str, previous: str | None = None) -> str:
    follow_up = f" (following {previous})" if previous else ""
    return f"[simulated {model}] You asked{follow_up}: {question[:200]}"


def _bad_json(exc: ValueError) -> JSONResponse:
    return JSONResponse({"error": {"message": f"invalid JSON: {exc}", "type": "invalid_request_error",
                                   "code": "invalid_json"}}, status_code=400)


def register_apis(app: FastAPI, config: SimulatorConfig, recent: MutableSequence[dict[str, Any]]) -> None:
    """Add both APIs to the simulator app; every request they receive goes into `recent` (/sim/requests)."""
    stored: OrderedDict[str, dict[str, Any]] = OrderedDict()

    async def stream(events: list[dict[str, Any]]) -> AsyncIterator[bytes]:
        for event in events:
            if event.get("type") in ("response.output_text.delta", "content_block_delta"):
                await asyncio.sleep(config.chunk_interval_ms / 1000)
            yield typed_event(event)

    @app.post("/v1/responses")
    async def responses(request: Request) -> Any:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return _bad_json(exc)
        recent.append({"path": "/v1/responses", "headers": dict(request.headers), "body": body})
        model = str(body.get("model", ""))
        items = body.get("input") if isinstance(body.get("input"), list) else [body.get("input")]
        previous = body.get("previous_response_id")
        if previous is not None and previous not in stored:
            return JSONResponse({"error": {"message": f"Previous response with id '{previous}' not found.",
                                           "type": "invalid_request_error", "param": "previous_response_id",
                                           "code": "previous_response_not_found"}}, status_code=404)
        question = _last_user_text(items)
        answer = _answer(model, question, previous)
        prompt = " ".join([_text(body.get("instructions")), *(_text(i.get("content")) if isinstance(i, dict)
                                                               else str(i or "") for i in items)])
        usage = {"input_tokens": _words(prompt), "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": _words(answer), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": _words(prompt) + _words(answer)}
        ident, item_id = f"resp_sim{uuid.uuid4().hex[:20]}", f"msg_sim{uuid.uuid4().hex[:20]}"
        part = {"type": "output_text", "text": answer, "annotations": []}
        item = {"type": "message", "id": item_id, "status": "completed", "role": "assistant", "content": [part]}
        response = {"id": ident, "object": "response", "created_at": int(time.time()), "status": "completed",
                    "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
                    "model": model, "output": [item], "parallel_tool_calls": True,
                    "previous_response_id": previous, "tool_choice": body.get("tool_choice", "auto"),
                    "tools": body.get("tools") or [], "usage": usage}
        if body.get("store", True):
            stored[ident] = response
            while len(stored) > STORED_RESPONSES:
                stored.popitem(last=False)
        await asyncio.sleep(config.first_token_ms / 1000)
        if not body.get("stream"):
            return response
        opening = {**response, "status": "in_progress", "output": [], "usage": None}
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        events = [{"type": "response.created", "response": opening},
                  {"type": "response.in_progress", "response": opening},
                  {"type": "response.output_item.added", "output_index": 0,
                   "item": {**item, "status": "in_progress", "content": []}},
                  {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
                  *({"type": "response.output_text.delta", **where, "delta": word, "logprobs": []}
                    for word in _pieces(answer)),
                  {"type": "response.output_text.done", **where, "text": answer, "logprobs": []},
                  {"type": "response.content_part.done", **where, "part": part},
                  {"type": "response.output_item.done", "output_index": 0, "item": item},
                  {"type": "response.completed", "response": response}]
        events = [{**event, "sequence_number": n} for n, event in enumerate(events)]
        return StreamingResponse(stream(events), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    @app.get("/v1/responses/{response_id}")
    async def stored_response(response_id: str, request: Request) -> Any:
        recent.append({"path": f"/v1/responses/{response_id}", "headers": dict(request.headers), "body": None})
        if response_id not in stored:
            return JSONResponse({"error": {"message": f"No response found with id '{response_id}'.",
                                           "type": "invalid_request_error", "param": None, "code": None}},
                                status_code=404)
        return stored[response_id]

    @app.post("/v1/messages")
    async def messages(request: Request) -> Any:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return _bad_json(exc)
        recent.append({"path": "/v1/messages", "headers": dict(request.headers), "body": body})
        model = str(body.get("model", ""))
        turns = body.get("messages") if isinstance(body.get("messages"), list) else []
        answer = _answer(model, _last_user_text(turns))
        prompt = " ".join([_text(body.get("system")), *(_text(t.get("content")) for t in turns if isinstance(t, dict))])
        usage = {"input_tokens": _words(prompt), "output_tokens": _words(answer)}
        message = {"id": f"msg_sim{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant", "model": model,
                   "content": [{"type": "text", "text": answer}], "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": usage}
        await asyncio.sleep(config.first_token_ms / 1000)
        if not body.get("stream"):
            return message
        events = [{"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                                                         "usage": {**usage, "output_tokens": 1}}},
                  {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                  {"type": "ping"},
                  *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}
                    for word in _pieces(answer)),
                  {"type": "content_block_stop", "index": 0},
                  {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                   "usage": {"output_tokens": usage["output_tokens"]}},
                  {"type": "message_stop"}]
        return StreamingResponse(stream(events), media_type="text/event-stream", headers={"cache-control": "no-cache"})


def _pieces(text: str) -> list[str]:
    """Word by word, spaces kept, so that the pieces join back to `text`."""
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]
