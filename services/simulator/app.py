"""An OpenAI-compatible LLM backend simulator: the one simulated part of a local switchyard."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
import uuid
from collections import deque
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from services.common.config import SimulatorConfig
from services.simulator.apis import register_apis

# How many received requests /sim/requests remembers (tests read it to see what the backend got).
RECENT_REQUESTS = 200
# How many prompt texts /sim/search looks through (load tests ask whether any attack got through).
SEARCHABLE_PROMPTS = 50_000


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _prompt_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict)]
    return " ".join(parts)


def _answer(model: str, body: dict[str, Any]) -> str:
    last_user = next((m for m in reversed(body.get("messages") or [])
                      if isinstance(m, dict) and m.get("role") == "user"), {})
    content = last_user.get("content")
    question = content if isinstance(content, str) else _prompt_text({"messages": [last_user]})
    return f"[simulated {model}] You asked: {question[:200]}"


# Faults for tests and demos: `x-sim-fail-model: <model>[,<model>...]` fails every request for those models,
# `x-sim-fail-mode` says how: 503 (the default), 502, 504, reset (the connection is reset before any byte)
# or timeout (no byte until the client gives up).
FAIL_MODEL_HEADER = "x-sim-fail-model"
FAIL_MODE_HEADER = "x-sim-fail-mode"
HANG_LIMIT_S = 300.0


async def _injected_failure(request: Request, model: str) -> Any:
    """The failure the request's headers ask for when `model` is one they name; None to answer normally."""
    names = {n.strip() for n in request.headers.get(FAIL_MODEL_HEADER, "").split(",") if n.strip()}
    if model not in names:
        return None
    mode = request.headers.get(FAIL_MODE_HEADER, "503").strip().lower()
    if mode == "reset":
        _reset_connection()
        return JSONResponse({}, status_code=500)  # never sent: the connection is gone
    if mode == "timeout":
        deadline = time.monotonic() + HANG_LIMIT_S
        while time.monotonic() < deadline and not await request.is_disconnected():
            await asyncio.sleep(0.05)
        return JSONResponse({}, status_code=504)
    status = int(mode) if mode in ("502", "503", "504") else 503
    return JSONResponse({"error": {"message": f"simulated failure of model {model!r} ({FAIL_MODEL_HEADER})",
                                   "type": "server_error", "code": "backend_unavailable", "param": None}},
                        status_code=status)


def _reset_connection() -> None:
    """Abort the request's TCP connection with a RST. uvicorn runs each request in a task whose coroutine
    is its RequestResponseCycle.run_asgi; the cycle holds the transport (ASGI has no way to say "reset")."""
    task = asyncio.current_task()
    frame = task.get_coro().cr_frame if task is not None else None  # type: ignore[union-attr]
    transport = getattr(frame.f_locals.get("self") if frame is not None else None, "transport", None)
    if transport is None:
        raise RuntimeError("x-sim-fail-mode: reset needs uvicorn's h11 or httptools server")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def build_app(config: SimulatorConfig) -> FastAPI:
    app = FastAPI(title="switchyard backend simulator")
    recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REQUESTS)
    prompts: deque[str] = deque(maxlen=SEARCHABLE_PROMPTS)
    received_total = 0
    register_apis(app, config, recent)  # /v1/responses and /v1/messages (apis.py)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "simulator", "object": "model", "owned_by": "switchyard"}]}

    @app.get("/sim/requests")
    async def received() -> list[dict[str, Any]]:
        return list(recent)

    @app.get("/sim/search")
    async def search(contains: str) -> dict[str, int]:
        """How many received chat requests had `contains` in their prompt text (of the last 50,000)."""
        return {"count": sum(1 for p in prompts if contains in p), "received": received_total}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return JSONResponse({"error": {"message": f"invalid JSON: {exc}", "type": "invalid_request_error",
                                           "code": "invalid_json"}}, status_code=400)
        nonlocal received_total
        recent.append({"path": "/v1/chat/completions", "headers": dict(request.headers), "body": body})
        prompts.append(_prompt_text(body) if isinstance(body, dict) else "")
        received_total += 1
        model = str(body.get("model", ""))
        failure = await _injected_failure(request, model)
        if failure is not None:
            return failure
        answer = _answer(model, body)
        prompt_tokens = _words(_prompt_text(body))
        completion_tokens = _words(answer)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        ident = f"chatcmpl-sim-{uuid.uuid4().hex[:16]}"
        created = int(time.time())
        await asyncio.sleep(config.first_token_ms / 1000)
        if not body.get("stream"):
            return {"id": ident, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                 "finish_reason": "stop"}],
                    "usage": usage}
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():  # type: ignore[no-untyped-def]
            def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
                payload = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                return f"data: {json.dumps(payload)}\n\n".encode()

            yield chunk({"role": "assistant", "content": ""}, None)
            for word in answer.split(" "):
                await asyncio.sleep(config.chunk_interval_ms / 1000)
                yield chunk({"content": word + " "}, None)
            yield chunk({}, "stop")
            if include_usage:
                tail = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": usage}
                yield f"data: {json.dumps(tail)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = json.loads(await request.body() or b"{}")
        recent.append({"path": "/v1/completions", "headers": dict(request.headers), "body": body})
        model = str(body.get("model", ""))
        return {"id": f"cmpl-sim-{uuid.uuid4().hex[:16]}", "object": "text_completion", "model": model,
                "choices": [{"index": 0, "text": f"[simulated {model}] completion", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        body = json.loads(await request.body() or b"{}")
        recent.append({"path": "/v1/embeddings", "headers": dict(request.headers), "body": body})
        return {"object": "list", "model": body.get("model", ""),
                "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 1.0]}],
                "usage": {"prompt_tokens": 1, "total_tokens": 1}}

    return app


async def serve(config: SimulatorConfig) -> None:
    server = uvicorn.Server(uvicorn.Config(build_app(config), host=config.host, port=config.port,
                                           log_level="warning"))
    await server.serve()
