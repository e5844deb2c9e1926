"""The router's HTTP API (health, readiness, classification), served by the front on front.http_port."""

from __future__ import annotations

from fastapi import FastAPI

from services.front.processor import FrontContext


def build_http_app(context: FrontContext) -> FastAPI:
    app = FastAPI(title="switchyard router API", version="0.1.0")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
