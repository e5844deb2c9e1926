"""Writes helm/switchyard/values.schema.json: the chart's values, with routerConfig taken from the app's own config model.

Run with the project venv (it imports services.common.config):
    .venv/bin/python helm/tools/gen_values_schema.py          # rewrite the file
    .venv/bin/python helm/tools/gen_values_schema.py --check  # exit 1 when the file is stale
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.common.config import SwitchyardConfig  # noqa: E402

SCHEMA_FILE = ROOT / "helm" / "switchyard" / "values.schema.json"

# Keys of the router config that the chart writes itself (the in-cluster wiring): refused in
# routerConfig so that a value there cannot silently disagree with the Services.
WIRED = {
    "FrontConfig": ["host", "grpc_port", "http_port", "metrics_port"],
    "ServiceConfig": ["enabled", "host", "port", "metrics_port", "address"],
    "GuardConfig": ["enabled", "host", "port", "metrics_port", "address"],
    "CacheConfig": ["enabled", "host", "port", "metrics_port", "address", "store", "path", "url"],
    "TritonConfig": ["managed", "host", "http_port", "grpc_port", "metrics_port", "model_repository"],
    "EnvoyConfig": ["managed", "host", "listener_port", "admin_port", "binary"],
}
WIRED_SECTIONS = ["simulator"]  # set from the chart's own simulator block


def router_config_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    schema = SwitchyardConfig.model_json_schema()
    defs = schema.pop("$defs")
    for name, keys in WIRED.items():
        definition = defs[name]
        for key in keys:
            definition["properties"].pop(key, None)
        definition["required"] = [r for r in definition.get("required", []) if r not in keys]
        if not definition["required"]:
            del definition["required"]
        definition["description"] = (definition.get("description", "") +
                                     f" Set by the chart, not here: {', '.join(keys)}.").strip()
    # Empty routing = the chart's files/default-routing.yaml.
    schema["properties"]["routing"] = {"anyOf": [{"$ref": "#/$defs/RoutingConfig"},
                                                 {"type": "object", "maxProperties": 0}]}
    schema.pop("required", None)
    for section in WIRED_SECTIONS:
        schema["properties"].pop(section)
    defs.pop("SimulatorConfig", None)
    # Defaults in the app model are the app's; the chart's values.yaml carries its own.
    for prop in schema["properties"].values():
        prop.pop("default", None)
    schema["description"] = ("switchyard router config (services/common/config.py), less the keys the chart "
                             "wires itself; see README 'Configuration'.")
    schema.pop("title", None)
    return schema, defs


def obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        out["required"] = required
    out.update(extra)
    return out


STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT = {"type": "integer", "minimum": 0}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
ANY_OBJ = {"type": "object"}
LIST = {"type": "array"}
QUANTITY = {"type": ["string", "integer"]}
RESOURCES = obj({"requests": ANY_OBJ, "limits": ANY_OBJ, "claims": LIST})
IMAGE = obj({"repository": STR, "tag": STR}, ["repository"])
EXTERNAL_IMAGE = obj({"repository": STR, "tag": STR,
                      "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}, ["repository", "tag"])
SERVICE = obj({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "annotations": ANY_OBJ})
AUTOSCALING = obj({"enabled": BOOL, "minReplicas": {"type": "integer", "minimum": 1},
                   "maxReplicas": {"type": "integer", "minimum": 1},
                   "targetCPUUtilizationPercentage": {"type": "integer", "minimum": 1, "maximum": 100}})
PDB = obj({"enabled": BOOL, "minAvailable": QUANTITY, "maxUnavailable": QUANTITY})
SCHEDULING = {"nodeSelector": ANY_OBJ, "tolerations": LIST, "affinity": ANY_OBJ, "topologySpreadConstraints": LIST}
POD_SECURITY = {"type": "object"}


def mesh_service(ports: dict[str, Any], can_disable: bool = True) -> dict[str, Any]:
    props: dict[str, Any] = {
        "image": IMAGE, "replicas": {"type": "integer", "minimum": 0},
        "ports": obj(ports, list(ports)), "service": SERVICE, "resources": RESOURCES,
        "autoscaling": AUTOSCALING, "podDisruptionBudget": PDB, **SCHEDULING, "extraEnv": LIST,
    }
    if can_disable:
        props["enabled"] = BOOL
    return obj(props)


def values_schema() -> dict[str, Any]:
    router, defs = router_config_schema()
    grpc_metrics = {"grpc": PORT, "metrics": PORT}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "switchyard chart values",
        "description": "Generated by helm/tools/gen_values_schema.py; do not edit by hand.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "global": ANY_OBJ,  # set by parent charts
            "nameOverride": STR,
            "fullnameOverride": STR,
            "imagePullSecrets": LIST,
            "commonLabels": {"type": "object", "additionalProperties": STR},
            "image": obj({"registry": STR, "tag": STR,
                          "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}),
            "serviceAccount": obj({"create": BOOL, "name": STR, "annotations": ANY_OBJ}),
            "podSecurityContext": POD_SECURITY,
            "containerSecurityContext": POD_SECURITY,
            "podAnnotations": ANY_OBJ,
            "routerConfig": router,
            "front": mesh_service({"grpc": PORT, "http": PORT, "metrics": PORT}, can_disable=False),
            "decision": mesh_service(grpc_metrics),
            "guard": mesh_service(grpc_metrics),
            "cache": mesh_service(grpc_metrics),
            "triton": obj({
                "image": IMAGE, "replicas": {"type": "integer", "minimum": 0},
                "ports": obj({"http": PORT, "grpc": PORT, "metrics": PORT}, ["http", "grpc", "metrics"]),
                "service": SERVICE,
                "gpu": obj({"enabled": BOOL, "count": {"type": "integer", "minimum": 1}, "resourceName": STR,
                            "instancesPerGpu": {"type": "integer", "minimum": 1}}),
                "cpuInstances": {"type": "integer", "minimum": 1},
                "trunkPrecision": {"enum": ["auto", "int8", "fp32"]},
                "trunk": {"enum": ["small", "base"]},
                "tensorrt": obj({"enabled": BOOL, "precision": {"enum": ["FP32", "FP16", "INT8"]},
                                 "workspaceBytes": {"type": "integer", "minimum": 1}}),
                "resources": RESOURCES, "autoscaling": AUTOSCALING, "podDisruptionBudget": PDB,
                **SCHEDULING, "shmSize": QUANTITY, "extraArgs": {"type": "array", "items": STR},
                "podSecurityContext": POD_SECURITY,
            }),
            "qdrant": obj({
                "enabled": BOOL,
                "externalUrl": {"type": "string", "pattern": "^(https?://.+)?$"},
                "image": EXTERNAL_IMAGE,
                "ports": obj({"http": PORT, "grpc": PORT}, ["http", "grpc"]),
                "persistence": obj({"enabled": BOOL, "size": QUANTITY, "storageClass": STR}),
                "resources": RESOURCES, **SCHEDULING, "podSecurityContext": POD_SECURITY,
            }),
            "simulator": obj({
                "enabled": BOOL, "image": IMAGE, "port": PORT,
                "firstTokenMs": {"type": "number", "minimum": 0},
                "chunkIntervalMs": {"type": "number", "minimum": 0},
                "resources": RESOURCES,
            }),
            "envoy": obj({
                "enabled": BOOL, "image": EXTERNAL_IMAGE, "replicas": {"type": "integer", "minimum": 0},
                "ports": obj({"listener": PORT, "admin": PORT}, ["listener", "admin"]),
                "service": obj({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "port": PORT,
                                "annotations": ANY_OBJ}),
                "resources": RESOURCES, "autoscaling": AUTOSCALING, "podDisruptionBudget": PDB,
                **SCHEDULING,
            }),
            "aiGateway": obj({
                "enabled": BOOL,
                "gatewayClass": obj({"create": BOOL, "name": STR, "controllerName": STR}),
                "gateway": obj({"create": BOOL, "name": STR, "listenerName": STR, "port": PORT}),
                "hook": {"enum": ["patchPolicy", "extensionPolicy"],
                         "description": "EnvoyPatchPolicy (filter first, as upstream) or EnvoyExtensionPolicy"},
                "bufferLimit": QUANTITY,
            }),
            "networkPolicy": obj({"enabled": BOOL, "extraFrom": LIST}),
            "metrics": obj({
                "serviceMonitor": obj({"enabled": BOOL, "interval": STR, "labels": ANY_OBJ}),
                "dashboards": obj({"enabled": BOOL, "labels": ANY_OBJ, "annotations": ANY_OBJ}),
            }),
        },
        "$defs": defs,
    }


def render() -> str:
    # pydantic's "$ref": "#/$defs/X" resolve because its $defs are moved to the document root.
    return json.dumps(values_schema(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if SCHEMA_FILE.read_text() != text:
            print(f"{SCHEMA_FILE} is stale: run .venv/bin/python helm/tools/gen_values_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA_FILE.write_text(text)
    print(f"wrote {SCHEMA_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
