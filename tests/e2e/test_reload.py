"""Hot reload reaches every process: a model added to the config is listed, routed, and PII-checked.

The hole this closes: decision used to reload alone, so the front treated a model it did not know as
allowed to see any PII, did not list it, and Envoy had no route for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from services.common.config import TritonConfig
from tests.conftest import config_on_free_ports
from tests.mesh_runner import MeshRunner

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
MATH = "Solve 3x+5=20"
MATH_WITH_PII = "Solve 3x+5=20. I am John Smith, write to john.smith@example.com with the answer."


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, triton_server: TritonConfig) -> Iterator[MeshRunner]:
    runner = MeshRunner(config_on_free_ports(), tmp_path_factory.mktemp("reload"), triton=triton_server)
    runner.start()
    yield runner
    runner.stop()


def ask(client: httpx.Client, content: str) -> httpx.Response:
    return client.post(CHAT, json={"model": "MoM", "messages": [{"role": "user", "content": content}]})


def backend_model(mesh: MeshRunner) -> str:
    return httpx.get(f"{mesh.simulator_url}/sim/requests", trust_env=False).json()[-1]["body"]["model"]


def test_a_strict_model_added_by_reload_is_listed_routed_and_never_given_pii(mesh: MeshRunner) -> None:
    data = yaml.safe_load(mesh.config_path.read_text())
    data["routing"]["models"]["strict"] = {"backend": "simulator", "pii_policy": {"allow_by_default": False}}
    math = next(c for c in data["routing"]["categories"] if c["name"] == "math")
    math["model_scores"] = [{"model": "strict", "score": 0.99}, *math["model_scores"]]
    with httpx.Client(base_url=mesh.envoy_url, timeout=60, trust_env=False) as client:
        assert "strict" not in {m["id"] for m in client.get("/v1/models").json()["data"]}
        mesh.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        deadline = time.monotonic() + 15
        while "strict" not in {m["id"] for m in client.get("/v1/models").json()["data"]}:
            assert time.monotonic() < deadline, "the front did not list the model added by the reload"
            time.sleep(0.3)
        assert client.get("/v1/models/strict").json()["id"] == "strict"
        while ask(client, MATH).headers.get("x-vsr-selected-model") != "strict":
            assert time.monotonic() < deadline, "decision did not route to the model added by the reload"
            time.sleep(0.3)
        # Routed through Envoy to its backend, with the body rewritten for it.
        assert backend_model(mesh) == "strict"
        # The same question with a name and an e-mail address: strict may see no PII.
        response = ask(client, MATH_WITH_PII)
        assert response.status_code == 200
        assert response.headers["x-vsr-selected-model"] != "strict"
        assert backend_model(mesh) != "strict"
        # A broken file is rejected by every process; the reloaded config stays in force.
        mesh.config_path.write_text("routing: [broken")
        time.sleep(2.5)
        assert ask(client, MATH).headers["x-vsr-selected-model"] == "strict"
        assert "strict" in {m["id"] for m in client.get("/v1/models").json()["data"]}
        rejected = {name for name, line in mesh.logs if "config reload rejected" in line}
        assert {"front", "decision", "guard", "cache"} <= rejected, rejected
