"""Fixtures for the chart tests: the check tools from .venv-tools and rendered chart variants."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "switchyard"
EXAMPLES = CHART / "examples"
TOOLS_BIN = REPO / ".venv-tools" / "bin"
INSTALL_HINT = "run helm/tools/install-tools.sh (make tools)"
RELEASE = "sy"
NAMESPACE = "llm"
FULLNAME = "sy-switchyard"

# Chart variants the checks render: name -> extra `helm template` arguments.
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "production-stack": ["-f", str(EXAMPLES / "production-stack.yaml")],
    "ai-gateway": ["--set", "aiGateway.enabled=true"],
    "ai-gateway-extension-policy": ["--set", "aiGateway.enabled=true", "--set", "aiGateway.hook=extensionPolicy"],
    "plain-envoy": ["--set", "envoy.enabled=true", "--set", "metrics.serviceMonitor.enabled=true",
                    "--set", "metrics.dashboards.enabled=true"],
    "dev": ["-f", str(EXAMPLES / "dev.yaml")],
    "gpu-base": ["-f", str(EXAMPLES / "gpu-base.yaml")],
}


def tool(name: str) -> Path:
    """A tool from .venv-tools; missing fails under CI (CI=true) and skips on a developer machine."""
    path = TOOLS_BIN / name
    if not path.exists():
        or_skip(f"{path} is missing: {INSTALL_HINT}")
    return path


def or_skip(message: str) -> None:
    """Something the checks need is missing: a failure under CI (CI=true), a skip on a developer machine."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def chart_tool(name: str) -> ModuleType:
    """A module of helm/tools (scripts run by path, not a package), imported for in-process checks."""
    module_name = f"helm_tools_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / "helm" / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def helm_template(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("helm")), "template", RELEASE, str(chart), "--namespace", NAMESPACE, *args],
        capture_output=True, text=True, timeout=60,
    )


def render(*args: str, chart: Path = CHART) -> list[dict[str, Any]]:
    result = helm_template(*args, chart=chart)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(*args) for name, args in VARIANTS.items()}


@pytest.fixture(scope="session")
def rendered_files(rendered, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rendered")
    files = {}
    for name, docs in rendered.items():
        files[name] = folder / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return files


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def router_config_data(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(docs, "ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"])
