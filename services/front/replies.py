"""Bodies the router answers itself: OpenAI errors, blocked completions, the model list."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from services.front.chat_request import RequestError, dumps

JSON = "application/json"
SSE = "text/event-stream"


@dataclass(frozen=True)
class Reply:
    """An HTTP answer that Envoy sends instead of calling a backend."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def error_reply(error: RequestError, extra_headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    payload = {"error": {"message": error.message, "type": error.error_type, "code": error.code,
                         "param": error.param}}
    return Reply(error.status, dumps(payload), JSON, (*error.headers, *extra_headers))


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def blocked_reply(model: str, message: str, stream: bool,
                  headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """A 200 chat.completion with finish_reason content_filter, the way the upstream router answers."""
    created = int(time.time())
    ident = completion_id()
    if not stream:
        body = {
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": message},
                         "finish_reason": "content_filter"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
        return Reply(200, dumps(body), JSON, headers)
    chunk = {
        "id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": message},
                     "finish_reason": "content_filter"}],
    }
    body = b"data: " + dumps(chunk) + b"\n\ndata: [DONE]\n\n"
    return Reply(200, body, SSE, headers)


def model_reply(name: str) -> Reply:
    """GET /v1/models/{id}: one model object (what the OpenAI SDK's models.retrieve reads)."""
    return Reply(200, dumps({"id": name, "object": "model", "created": int(time.time()), "owned_by": "switchyard"}))


def models_reply(aliases: list[str], models: list[str]) -> Reply:
    created = int(time.time())
    data = [{"id": name, "object": "model", "created": created, "owned_by": "switchyard"}
            for name in [*aliases, *models]]
    return Reply(200, dumps({"object": "list", "data": data}))
