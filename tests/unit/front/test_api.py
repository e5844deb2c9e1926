"""The HTTP API in process (no network): verdicts come from the guard, the dry run from the Router."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.front.api import build_http_app
from services.front.mesh_clients import MeshClients, ServiceCall
from services.front.metrics import FrontMetrics
from services.front.processor import FrontContext
from switchyard.v1 import guard_pb2
from tests.unit.front.test_processor import CHAT, ScriptedClients, make_processor

TEXT = "Mail jane.doe@example.com about SSN 123-45-6789"
ENTITIES = [guard_pb2.PiiEntity(type="EMAIL_ADDRESS", start=5, end=25, confidence=0.99),
            guard_pb2.PiiEntity(type="US_SSN", start=36, end=47, confidence=0.99)]


class ApiClients(ScriptedClients):
    """Scripted answers plus what the API reads of the real clients (sections, circuit breakers)."""

    def __init__(self, config, **answers) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**answers)
        real = MeshClients(config)
        self.sections, self.breakers = real.sections, real.breakers


@pytest.fixture
def guard_verdict() -> ServiceCall:
    return ServiceCall("guard", result=guard_pb2.CheckResponse(has_opinion=True, pii=ENTITIES,
                                                               blocking_pii_types=["US_SSN"]))


async def client_for(**answers) -> tuple[httpx.AsyncClient, FrontContext]:  # type: ignore[no-untyped-def]
    config = make_processor().config
    context = FrontContext(config, ApiClients(config, **answers), FrontMetrics())
    transport = httpx.ASGITransport(app=build_http_app(context))
    return httpx.AsyncClient(transport=transport, base_url="http://api"), context


@pytest.fixture
async def api(guard_verdict: ServiceCall) -> AsyncIterator[httpx.AsyncClient]:
    client, _ = await client_for(guard=guard_verdict)
    async with client:
        yield client


async def test_pii_recommendation_is_the_guards_verdict_and_masking_merges_spans(api: httpx.AsyncClient) -> None:
    reply = (await api.post("/api/v1/classify/pii", json={"text": TEXT, "options": {"mask_entities": True}})).json()
    assert reply["security_recommendation"] == "block"  # the guard said US_SSN blocks
    assert reply["masked_text"] == "Mail [EMAIL_ADDRESS] about SSN [US_SSN]"


async def test_pii_not_blocked_when_the_guard_masks_it() -> None:
    verdict = ServiceCall("guard", result=guard_pb2.CheckResponse(has_opinion=True, pii=ENTITIES))
    client, _ = await client_for(guard=verdict)
    async with client:
        reply = (await client.post("/api/v1/classify/pii", json={"text": TEXT})).json()
    assert reply["security_recommendation"] == "allow"


async def test_route_dry_run_reports_an_unknown_model_as_a_verdict(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/route", json={**CHAT, "model": "gpt-unknown"})
    assert response.status_code == 200
    verdict = response.json()
    assert verdict["outcome"] == "error" and verdict["status"] == 400
    assert verdict["reply"]["error"]["code"] == "model_not_found"


async def test_route_dry_run_of_a_blocked_request(api: httpx.AsyncClient) -> None:
    verdict = (await api.post("/api/v1/route", json=CHAT)).json()
    assert verdict["outcome"] == "blocked" and verdict["guard"]["pii_types"] == ["EMAIL_ADDRESS", "US_SSN"]


async def test_ready_shows_an_open_circuit() -> None:
    client, context = await client_for()
    for _ in range(context.config.guard.circuit_breaker.failures):
        context.clients.breakers["guard"].record_failure()
    async with client:
        response = await client.get("/ready")
    assert response.status_code == 503 and response.json()["checks"]["guard"] == "circuit_open"
