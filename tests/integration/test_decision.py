"""Decision through the real mesh and real Triton: obvious prompts route to their category's best model."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from services.common.config import TritonConfig
from tests.conftest import config_on_free_ports
from tests.mesh_runner import MeshRunner

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, triton_server: TritonConfig):
    # A routing budget large enough for the 100 KB prompt below (the default refuses it with 413: on
    # 2 CPU cores the guard cannot check ~20,000 tokens within 4 s).
    runner = MeshRunner(config_on_free_ports({"front": {"max_routing_ms": 50_000},
                                              "envoy": {"message_timeout_ms": 60_000},
                                              "triton": {"timeout_ms": 50_000}}),
                        tmp_path_factory.mktemp("decision"), triton=triton_server)
    runner.start()
    yield runner
    runner.stop()


def ask(mesh: MeshRunner, content, **extra) -> httpx.Response:
    with httpx.Client(base_url=mesh.envoy_url, timeout=60, trust_env=False) as http:
        return http.post(CHAT, json={"model": "MoM", "messages": [{"role": "user", "content": content}], **extra})


def backend_body(mesh: MeshRunner) -> dict:
    return httpx.get(f"{mesh.simulator_url}/sim/requests", trust_env=False).json()[-1]["body"]


def test_math_prompt_goes_to_the_math_model_with_thinking(mesh: MeshRunner) -> None:
    response = ask(mesh, "Solve 3x+5=20")
    assert response.status_code == 200, response.text
    assert response.headers["x-vsr-selected-category"] == "math"
    assert response.headers["x-vsr-selected-model"] == "deepseek-r1"
    assert response.headers["x-vsr-selected-reasoning"] == "on"
    assert response.headers["x-vsr-injected-system-prompt"] == "true"
    sent = backend_body(mesh)
    assert sent["model"] == "deepseek-r1"
    assert sent["chat_template_kwargs"] == {"thinking": True}
    assert sent["messages"][0]["role"] == "system" and "mathematician" in sent["messages"][0]["content"]


def test_law_prompt_goes_to_the_law_model(mesh: MeshRunner) -> None:
    response = ask(mesh, "What are the legal elements of a valid contract under common law?")
    assert response.headers["x-vsr-selected-category"] == "law"
    assert response.headers["x-vsr-selected-model"] == "llama-3.1-8b"
    assert response.headers["x-vsr-selected-reasoning"] == "off"


def test_content_parts_are_classified_by_their_text(mesh: MeshRunner) -> None:
    parts = [{"type": "text", "text": "Solve the equation 2x - 7 = 11 for x."},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    response = ask(mesh, parts)
    assert response.status_code == 200
    assert response.headers["x-vsr-selected-category"] == "math"
    assert backend_body(mesh)["messages"][-1]["content"] == parts  # the parts themselves travel untouched


def test_a_100kb_prompt_is_classified_from_its_truncated_text(mesh: MeshRunner) -> None:
    prompt = "Solve for x: 3x + 5 = 20. " + ("Show every algebra step carefully. " * 3000)
    assert len(prompt) > 100_000
    response = ask(mesh, prompt)
    assert response.status_code == 200
    assert response.headers["x-vsr-selected-model"] in mesh.config.routing.models


def test_unknown_concrete_model_is_a_400_naming_the_choices(mesh: MeshRunner) -> None:
    with httpx.Client(base_url=mesh.envoy_url, timeout=30, trust_env=False) as http:
        response = http.post(CHAT, json={"model": "gpt-99", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "gpt-99" in error["message"] and "MoM" in error["message"]


def test_policy_reloads_when_the_config_file_changes(mesh: MeshRunner) -> None:
    data = yaml.safe_load(mesh.config_path.read_text())
    math = next(c for c in data["routing"]["categories"] if c["name"] == "math")
    math["model_scores"] = [{"model": "qwen3-8b", "score": 0.99, "use_reasoning": False}]
    original = mesh.config_path.read_text()
    try:
        mesh.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if ask(mesh, "Solve 3x+5=20").headers["x-vsr-selected-model"] == "qwen3-8b":
                break
            time.sleep(0.5)
        else:
            pytest.fail("the decision service did not pick up the changed config")
        # A broken config is rejected and the last good policy stays in force.
        mesh.config_path.write_text("routing: [broken")
        time.sleep(2.5)
        assert ask(mesh, "Solve 3x+5=20").headers["x-vsr-selected-model"] == "qwen3-8b"
        assert any(name == "decision" and "config reload rejected" in line for name, line in mesh.logs)
    finally:
        mesh.config_path.write_text(original)
