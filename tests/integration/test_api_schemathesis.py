"""Property-based run of schemathesis against the router API's own OpenAPI document, on a real mesh."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from services.common.config import TritonConfig
from tests.conftest import config_on_free_ports
from tests.mesh_runner import MeshRunner

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory, triton_server: TritonConfig):
    runner = MeshRunner(config_on_free_ports(), tmp_path_factory.mktemp("schemathesis"), triton=triton_server)
    runner.start()
    try:
        yield schemathesis.openapi.from_url(f"http://127.0.0.1:{runner.config.front.http_port}/openapi.json")
    finally:
        runner.stop()


def test_api_matches_its_openapi_document(api_schema) -> None:
    """Every operation, with generated inputs: no 5xx, documented status codes, content types and
    response schemas (schemathesis' default checks). Driven by hand because schemathesis' pytest
    plugin does not load under this pytest version."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/v1/classify/intent", "/api/v1/classify/pii",
                                              "/api/v1/classify/security", "/api/v1/classify/batch",
                                              "/api/v1/route", "/health", "/ready"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def exercise(case) -> None:
            case.call_and_validate()

        exercise()
