"""The chart's per-deployment model settings (configs/helm.pbtxt) load in a real Triton."""

from __future__ import annotations

import json
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from services.common.config import TritonConfig
from services.common.triton_server import launch_spec, wait_until_ready
from tests.conftest import free_ports
from tests.unit.helm.conftest import CHART, tool

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"


def rendered_fragment(*values: str) -> str:
    args = [str(tool("helm")), "template", "sy", str(CHART)]
    for value in values:
        args += ["--set", value]
    docs = yaml.safe_load_all(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
    config_map = next(d for d in docs if d and d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith(
        "triton-model-settings"))
    return config_map["data"]["model-settings.pbtxt"]


def test_gpu_and_tensorrt_values_render_into_the_fragment() -> None:
    fragment = rendered_fragment("triton.gpu.instancesPerGpu=2", "triton.tensorrt.enabled=true",
                                 "triton.tensorrt.precision=FP16")
    assert "kind: KIND_GPU count: 2" in fragment
    assert 'name : "tensorrt"' in fragment and 'value: "FP16"' in fragment
    assert "tensorrt" not in rendered_fragment()


def test_cpu_fragment_appended_like_the_init_container_loads_in_triton(tmp_path: Path) -> None:
    """Do what the chart's init container does, on the built repository, then start Triton with
    --model-config-name=helm and strict model configs: every model must load with the new settings."""
    fragment = rendered_fragment("triton.gpu.enabled=false", "triton.cpuInstances=3")
    repository = tmp_path / "repository"
    for config in REPOSITORY.glob("*/config.pbtxt"):
        model = repository / config.parent.name
        model.mkdir(parents=True)
        (model / "config.pbtxt").write_text(config.read_text())
        (model / "1").symlink_to(config.parent / "1")
        for extra in config.parent.iterdir():
            if extra.is_file() and extra.name != "config.pbtxt":
                (model / extra.name).symlink_to(extra)
        if 'backend: "onnxruntime"' in config.read_text():
            (model / "configs").mkdir()
            (model / "configs" / "helm.pbtxt").write_text(config.read_text() + fragment)
    http_port, grpc_port, metrics_port = free_ports(3)
    triton = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          model_repository=repository)
    spec = launch_spec(triton, backend_dir=REPOSITORY.parent / ".switchyard" / "triton-backends")
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    # The chart's settings file instead of the local one (configs/local.pbtxt).
    argv = [a for a in spec.argv if not a.startswith("--model-config-name=")]
    process = subprocess.Popen([*argv, "--model-config-name=helm"], env=spec.env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_ready(triton, timeout_s=180, is_alive=lambda: process.poll() is None)
        except Exception as exc:  # noqa: BLE001 - show Triton's own words
            log.seek(0)
            pytest.fail(f"Triton rejected the chart's model settings: {exc}\n{log.read()[-4000:]}", pytrace=False)
        url = f"http://127.0.0.1:{http_port}/v2/models/trunk/config"
        with urllib.request.urlopen(url, timeout=5) as response:
            loaded = json.load(response)
        assert loaded["instance_group"][0]["kind"] == "KIND_CPU"
        assert loaded["instance_group"][0]["count"] == 3  # from the fragment, not Triton's default
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
