"""Validates rendered manifests with kubernetes-validate (strict) and reports what it could not check.

Run with the tools venv: .venv-tools/bin/python helm/tools/validate_manifests.py RENDERED.yaml [...]
Prints one JSON object: {"kubernetes_version", "validated", "skipped": {kind: count}, "errors": [...]}
and exits 1 when any manifest fails or has a kind that is neither known nor listed below.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.35.0"

# Custom resources: kubernetes-validate ships schemas for built-in kinds only. These are validated
# against their upstream CRDs by helm/tools/validate_custom_resources.py instead.
CUSTOM_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1 (Prometheus Operator)",
    "GatewayClass": "gateway.networking.k8s.io/v1 (Gateway API)",
    "Gateway": "gateway.networking.k8s.io/v1 (Gateway API)",
    "ClientTrafficPolicy": "gateway.envoyproxy.io/v1alpha1 (Envoy Gateway)",
    "EnvoyPatchPolicy": "gateway.envoyproxy.io/v1alpha1 (Envoy Gateway)",
    "EnvoyExtensionPolicy": "gateway.envoyproxy.io/v1alpha1 (Envoy Gateway)",
    "BackendTrafficPolicy": "gateway.envoyproxy.io/v1alpha1 (Envoy Gateway)",
    "Backend": "gateway.envoyproxy.io/v1alpha1 (Envoy Gateway)",
    "AIServiceBackend": "aigateway.envoyproxy.io/v1beta1 (Envoy AI Gateway)",
    "AIGatewayRoute": "aigateway.envoyproxy.io/v1beta1 (Envoy AI Gateway)",
}


def validate(paths: list[Path], version: str) -> dict:
    validated = 0
    skipped: Counter[str] = Counter()
    errors: list[str] = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            kind = doc.get("kind", "?")
            where = f"{path.name}: {kind}/{doc.get('metadata', {}).get('name', '?')}"
            if kind in CUSTOM_KINDS:
                skipped[kind] += 1
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                validated += 1
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{where}: no schema for {doc.get('apiVersion')} {kind} and not in CUSTOM_KINDS")
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{where}: {'.'.join(str(p) for p in exc.path)}: {exc.message}")
    return {"kubernetes_version": version, "validated": validated, "skipped": dict(skipped), "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("-k", "--kubernetes-version", default=KUBERNETES_VERSION)
    args = parser.parse_args()
    report = validate(args.files, args.kubernetes_version)
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
