"""Tool checks of the deployment files: helm lint, kubernetes-validate, checkov, hadolint, schema, skaffold."""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
import sys

import pytest
import yaml

from .conftest import CHART, EXAMPLES, REPO, TOOLS_BIN, VARIANTS, helm_template, tool

# checkov findings accepted on purpose; docs/kubernetes.md ("Checks") gives the same reasons.
CHECKOV_ACCEPTED = {
    # IfNotPresent + immutable, per-commit tags (skaffold, CI) is the safe default, and kind needs
    # it for side-loaded images; set image.pullPolicy=Always where tags are mutable.
    "CKV_K8S_15": "Image Pull Policy should be Always",
    # Digests are known only after the build: set <component>.image.tag to "TAG@sha256:..." (the
    # chart renders repository:tag verbatim) or let your CD tool pin them.
    "CKV_K8S_43": "Image should use digest",
}
# Kinds kubernetes-validate has no schema for (CRDs); test_custom_resources.py validates them against their CRDs.
EXPECTED_CUSTOM_KINDS = {"ServiceMonitor", "GatewayClass", "Gateway", "ClientTrafficPolicy", "EnvoyPatchPolicy",
                         "EnvoyExtensionPolicy", "Backend", "AIServiceBackend", "AIGatewayRoute",
                         "BackendTrafficPolicy"}
DOCKER_TARGETS = {"front", "decision", "guard", "cache", "simulator", "triton"}


def run(*argv, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("values", [None, "production-stack.yaml", "dev.yaml"])
def test_helm_lint(values):
    args = ["lint", CHART, "--strict"] + (["-f", EXAMPLES / values] if values else [])
    result = run(tool("helm"), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(tool("helm"), "lint", CHART, "--strict", "--set", "aiGateway.enabled=true")
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_every_variant(rendered_files):
    tool("kubernetes-validate")
    result = run(TOOLS_BIN / "python", REPO / "helm" / "tools" / "validate_manifests.py", *rendered_files.values())
    report = json.loads(result.stdout)
    assert result.returncode == 0 and not report["errors"], "\n".join(report["errors"])
    assert report["validated"] >= 100
    assert set(report["skipped"]) == EXPECTED_CUSTOM_KINDS


def test_checkov_finds_nothing_unexplained(rendered_files, tmp_path):
    checkov = tool("checkov")
    result = run(checkov, "--directory", rendered_files["plain-envoy"].parent, "--framework", "kubernetes",
                 "--skip-download", "--quiet", "--compact", "--output", "json",
                 "--skip-check", ",".join(CHECKOV_ACCEPTED), timeout=170)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [f"{f['check_id']} {f['check_name']}: {f['resource']}"
              for report in reports for f in report["results"]["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert sum(r["summary"]["passed"] for r in reports) > 0


def test_hadolint_dockerfile():
    result = run(tool("hadolint"), REPO / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_a_target_per_image():
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M | re.I))
    assert DOCKER_TARGETS <= stages


def test_values_schema_is_generated_from_the_config_model():
    result = run(sys.executable, REPO / "helm" / "tools" / "gen_values_schema.py", "--check")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("setting", "message"), [
    ("front.replica=3", "additional properties 'replica' not allowed"),
    ("routerConfig.decision.address=x:1", "additional properties 'address' not allowed"),
    ("routerConfig.guard.jailbreak.scope=everything", "value must be one of"),
    ("aiGateway.hook=wasm", "value must be one of"),
])
def test_a_typo_in_values_fails_at_install(setting, message):
    result = helm_template("--set", setting)
    assert result.returncode != 0
    assert message in result.stderr


def test_skaffold_references_only_what_exists():
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    assert config["apiVersion"].startswith("skaffold/v4")
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M | re.I))
    images = set()
    for artifact in config["build"]["artifacts"]:
        assert (REPO / artifact.get("context", ".") / artifact["docker"]["dockerfile"]).is_file()
        assert artifact["docker"]["target"] in stages
        images.add(artifact["image"])
    (release,) = config["manifests"]["helm"]["releases"]
    assert (REPO / release["chartPath"] / "Chart.yaml").is_file()
    values = yaml.safe_load((REPO / release["chartPath"] / "values.yaml").read_text())
    for key, template in release["setValueTemplates"].items():
        node = values
        for part in key.split("."):
            assert part in node, f"skaffold sets {key}, which values.yaml does not have"
            node = node[part]
        image = re.search(r"IMAGE_(?:REPO|TAG)_(\w+)", template).group(1)
        assert image in {i.replace("/", "_").replace("-", "_") for i in images}
    profiles = {p["name"]: p for p in config["profiles"]}
    assert {"dev", "kind"} <= set(profiles)
    for patch in profiles["dev"]["patches"]:
        for path in patch["value"] if patch["path"].endswith("valuesFiles") else []:
            assert (REPO / path).is_file()
    # The dev values must render: CPU Triton and one replica of everything.
    result = helm_template("-f", str(REPO / "helm/switchyard/examples/dev.yaml"))
    assert result.returncode == 0, result.stderr


def test_chart_dashboards_match_grafana_dashboards():
    source = REPO / "grafana" / "dashboards"
    copies = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    originals = sorted(p.name for p in source.glob("*.json")) if source.is_dir() else []
    hint = "run helm/tools/sync-dashboards.sh"
    assert copies == originals, hint
    for name in copies:
        assert filecmp.cmp(source / name, CHART / "dashboards" / name, shallow=False), f"{name} differs: {hint}"


def test_install_script_is_valid_bash():
    assert run("bash", "-n", REPO / "helm" / "tools" / "install-tools.sh").returncode == 0


def test_every_variant_is_checked():
    assert {"default", "production-stack", "ai-gateway"} <= set(VARIANTS)
