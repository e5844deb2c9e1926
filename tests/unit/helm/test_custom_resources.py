"""Every custom resource the chart renders is valid against its upstream CRD (strict, offline)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from .conftest import REPO, VARIANTS, chart_tool, one, or_skip
from .test_checks import EXPECTED_CUSTOM_KINDS

crds = chart_tool("validate_custom_resources")
CRDS_HINT = (f"the upstream CRDs live outside the repository, in ../shared/k8s-crds beside it; "
             f"point ${crds.CRDS_ENV} at a copy of that folder")


def load_catalog():
    """The CRD catalog; a missing folder fails under CI (CI=true) and skips on a developer machine."""
    try:
        return crds.CrdCatalog.load(crds.crds_dir())
    except crds.CrdCatalogError as exc:
        or_skip(f"{exc} ({CRDS_HINT})")


@pytest.fixture(scope="session")
def catalog():
    return load_catalog()


def custom_resources(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if not crds.is_builtin(d)]


def rejection(catalog, doc: dict[str, Any]) -> str:
    with pytest.raises(crds.ResourceRejected) as caught:
        catalog.validate(doc)
    return str(caught.value)


# ---- the chart's resources -------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_every_custom_resource_matches_its_crd(catalog, rendered, variant):
    errors = []
    for doc in custom_resources(rendered[variant]):
        try:
            catalog.validate(doc)
        except crds.ResourceRejected as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)


def test_the_variants_render_every_custom_kind(rendered):
    """Each kind that kubernetes-validate skips is validated here in at least one variant."""
    kinds = Counter(d["kind"] for docs in rendered.values() for d in custom_resources(docs))
    assert set(kinds) == EXPECTED_CUSTOM_KINDS
    for variant in ("production-stack", "ai-gateway", "ai-gateway-extension-policy"):
        assert len(custom_resources(rendered[variant])) == 8, variant
    assert [d["kind"] for d in custom_resources(rendered["plain-envoy"])] == ["ServiceMonitor"]


def test_ai_gateway_resources_use_the_storage_version(rendered):
    for doc in custom_resources(rendered["ai-gateway"]):
        if doc["apiVersion"].startswith("aigateway.envoyproxy.io/"):
            assert doc["apiVersion"] == "aigateway.envoyproxy.io/v1beta1", doc["kind"]


def test_the_command_line_reports_per_kind(rendered_files):
    result = subprocess.run(
        [sys.executable, REPO / "helm" / "tools" / "validate_custom_resources.py", *rendered_files.values()],
        capture_output=True, text=True, timeout=60)
    if result.returncode == 2:
        or_skip(f"{result.stderr.strip()} ({CRDS_HINT})")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and not report["errors"], "\n".join(report["errors"])
    assert report["validated"]["AIGatewayRoute aigateway.envoyproxy.io/v1beta1"] == 3
    assert report["validated"]["BackendTrafficPolicy gateway.envoyproxy.io/v1alpha1"] == 3
    assert sum(report["validated"].values()) == 25
    assert report["skipped_builtin"] > 100


# ---- what a typo looks like, per CRD family --------------------------------------------------------

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parent(doc: dict[str, Any], path: str) -> tuple[Any, str | int]:
    steps = [name or int(index) for name, index in _STEP.findall(path)]
    node = doc
    for step in steps[:-1]:
        node = node[step]
    return node, steps[-1]


def setting(path: str, value: Any):
    def change(doc: dict[str, Any]) -> None:
        node, last = _parent(doc, path)
        node[last] = value
    return change


def renaming(path: str, new_name: str):
    def change(doc: dict[str, Any]) -> None:
        node, last = _parent(doc, path)
        node[new_name] = node.pop(last)
    return change


# (variant, kind, change, the error it must produce). One wrong enum, one misspelled field and one
# wrong type per family: Gateway API, Envoy Gateway, Envoy AI Gateway, Prometheus Operator.
TYPOS = [
    ("ai-gateway", "Gateway", setting("spec.listeners[0].allowedRoutes", {"namespaces": {"from": "Any"}}),
     "spec.listeners[0].allowedRoutes.namespaces.from: 'Any' is not one of ['All', 'Selector', 'Same'"),
    ("ai-gateway", "Gateway", renaming("spec.gatewayClassName", "gatewayClass"),
     "spec.gatewayClass: unknown field"),
    ("ai-gateway", "Gateway", setting("spec.listeners[0].port", "80"),
     "spec.listeners[0].port: '80' is not of type 'integer'"),
    ("ai-gateway", "GatewayClass", renaming("spec.controllerName", "controller"),
     "spec.controller: unknown field"),
    ("ai-gateway", "EnvoyPatchPolicy", setting("spec.type", "JSONPatches"),
     "spec.type: 'JSONPatches' is not one of ['JSONPatch']"),
    ("ai-gateway", "EnvoyPatchPolicy", renaming("spec.jsonPatches[0].operation", "operations"),
     "spec.jsonPatches[0].operations: unknown field"),
    ("ai-gateway", "EnvoyPatchPolicy", setting("spec.targetRef", [{"kind": "Gateway"}]),
     "spec.targetRef: [{'kind': 'Gateway'}] is not of type 'object'"),
    ("ai-gateway-extension-policy", "EnvoyExtensionPolicy",
     setting("spec.extProc[0].processingMode.request.body", "Buffer"),
     "spec.extProc[0].processingMode.request.body: 'Buffer' is not one of ['Streamed', 'Buffered'"),
    ("ai-gateway-extension-policy", "EnvoyExtensionPolicy", renaming("spec.extProc[0].failOpen", "failopen"),
     "spec.extProc[0].failopen: unknown field"),
    ("ai-gateway-extension-policy", "EnvoyExtensionPolicy", setting("spec.extProc[0].failOpen", "no"),
     "spec.extProc[0].failOpen: 'no' is not of type 'boolean'"),
    ("ai-gateway", "ClientTrafficPolicy", renaming("spec.connection.bufferLimit", "bufferLimits"),
     "spec.connection.bufferLimits: unknown field"),
    ("ai-gateway", "ClientTrafficPolicy", setting("spec.connection.bufferLimit", True),
     "spec.connection.bufferLimit: True is not of type 'integer', 'string'"),
    ("ai-gateway", "Backend", setting("spec.endpoints[0].fqdn.port", "80"),
     "spec.endpoints[0].fqdn.port: '80' is not of type 'integer'"),
    ("ai-gateway", "AIGatewayRoute", setting("spec.rules[0].matches[0].headers[0].type", "Exactly"),
     "spec.rules[0].matches[0].headers[0].type: 'Exactly' is not one of ['Exact', 'RegularExpression']"),
    ("ai-gateway", "AIGatewayRoute", renaming("spec.rules[0].backendRefs", "backendRef"),
     "spec.rules[0].backendRef: unknown field"),
    ("ai-gateway", "AIGatewayRoute", setting("spec.rules[0].timeouts.request", 300),
     "spec.rules[0].timeouts.request: 300 is not of type 'string'"),
    ("ai-gateway", "AIServiceBackend", setting("spec.schema.name", "OpenAl"),
     "spec.schema.name: 'OpenAl' is not one of ['OpenAI'"),
    ("ai-gateway", "AIServiceBackend", renaming("spec.backendRef", "backend"),
     "spec.backend: unknown field"),
    ("plain-envoy", "ServiceMonitor", setting("spec.endpoints[0].scheme", "HTTP/2"),
     "spec.endpoints[0].scheme: 'HTTP/2' is not one of"),
    ("plain-envoy", "ServiceMonitor", renaming("spec.endpoints[0].relabelings", "relabelling"),
     "spec.endpoints[0].relabelling: unknown field"),
    ("plain-envoy", "ServiceMonitor", setting("spec.endpoints[0].interval", 30),
     "spec.endpoints[0].interval: 30 is not of type 'string'"),
    ("ai-gateway", "GatewayClass", renaming("metadata.labels", "label"), "metadata.label: unknown field"),
]


@pytest.mark.parametrize(("variant", "kind", "change", "expected"), TYPOS,
                         ids=[f"{kind}-{expected.split(':')[0]}" for _, kind, _, expected in TYPOS])
def test_a_typo_names_its_path(catalog, rendered, variant, kind, change, expected):
    (doc,) = (d for d in rendered[variant] if d["kind"] == kind)
    broken = copy.deepcopy(doc)
    change(broken)
    assert expected in rejection(catalog, broken)


@pytest.mark.parametrize(("api_version", "kind", "expected"), [
    ("aigateway.envoyproxy.io/v1alpha1", "AIGatewayRoute",
     "apiVersion: deprecated: aigateway.envoyproxy.io/v1alpha1 is deprecated; use aigateway.envoyproxy.io/v1beta1"),
    ("aigateway.envoyproxy.io/v1alpha1", "AIServiceBackend", "apiVersion: deprecated"),
    ("gateway.networking.k8s.io/v2", "Gateway", "apiVersion: unknown version 'v2' of Gateway; served: v1, v1beta1"),
    ("gateway.networking.k8s.io/v1", "Gateways", "kind: unknown kind 'Gateways' (CRDs of gateway.networking.k8s.io:"),
    ("example.com/v1", "Widget", "kind: unknown kind 'Widget' (no CRD of group 'example.com')"),
])
def test_unknown_or_deprecated_versions_are_errors(catalog, rendered, api_version, kind, expected):
    found = [d for d in rendered["ai-gateway"] if d["kind"] == kind]
    doc = copy.deepcopy(found[0]) if found else {"metadata": {"name": "x"}, "spec": {}}
    doc.update(apiVersion=api_version, kind=kind)
    assert expected in rejection(catalog, doc)


def test_an_unserved_version_is_an_error(catalog):
    doc = {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute", "metadata": {"name": "x"},
           "spec": {"rules": [{"backendRefs": [{"name": "x", "port": 1}]}]}}
    assert "apiVersion: not served version 'v1alpha2' of TCPRoute; served: v1" in rejection(catalog, doc)


# (variant, kind, change, the CRD's CEL rule message it must produce), per family.
RULE_BREAKS = [
    ("ai-gateway", "Gateway", setting("spec.listeners[0].tls", {"mode": "Terminate"}),
     "spec.listeners: tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']"),
    ("ai-gateway", "ClientTrafficPolicy", setting("spec.targetRefs[0].kind", "HTTPRoute"),
     "spec: this policy can only have a targetRefs[*].kind of Gateway or ListenerSet"),
    ("ai-gateway", "Backend", setting("spec.endpoints[0].ip", {"address": "10.0.0.1", "port": 80}),
     "spec.endpoints[0]: only one of fqdn, ip or unix can be specified"),
    ("ai-gateway-extension-policy", "EnvoyExtensionPolicy", setting("spec.extProc[0].backendRefs[0].kind", "Pod"),
     "spec.extProc[0]: BackendRefs only supports Service, ServiceImport, and Backend kind."),
    ("ai-gateway", "AIGatewayRoute", setting("spec.rules[0].timeouts.backendRequest", "999s"),
     "spec.rules[0].timeouts: backendRequest timeout cannot be longer than request timeout"),
    ("ai-gateway", "AIGatewayRoute", setting("spec.parentRefs[0].kind", "HTTPRoute"),
     "spec.parentRefs: only Gateway is supported"),
    ("ai-gateway", "AIServiceBackend", setting("spec.backendRef.kind", "Service"),
     "spec.backendRef: BackendRef must be a Backend resource of Envoy Gateway"),
]


@pytest.mark.parametrize(("variant", "kind", "change", "expected"), RULE_BREAKS,
                         ids=[expected.split(":")[1][:40].strip() for *_, expected in RULE_BREAKS])
def test_a_broken_cel_rule_is_an_error(catalog, rendered, variant, kind, change, expected):
    (doc,) = (d for d in rendered[variant] if d["kind"] == kind)
    broken = copy.deepcopy(doc)
    change(broken)
    assert expected in rejection(catalog, broken)


def test_rules_see_the_schema_defaults(catalog, rendered):
    """The extension policy's backendRef names no kind: the CRD's default (Service) satisfies its rule."""
    policy = copy.deepcopy(one(rendered["ai-gateway-extension-policy"], "EnvoyExtensionPolicy",
                               "sy-switchyard-extproc"))
    (ref,) = policy["spec"]["extProc"][0]["backendRefs"]
    assert "kind" not in ref
    catalog.validate(policy)
    crds.apply_defaults(catalog.crd_version(policy["apiVersion"], policy["kind"]).schema, policy)
    assert policy["spec"]["extProc"][0]["backendRefs"][0]["kind"] == "Service"


def test_transition_rules_are_left_to_updates(catalog, rendered):
    """GatewayClass's controllerName is immutable (`self == oldSelf`): nothing to compare on create."""
    catalog.validate(one(rendered["ai-gateway"], "GatewayClass", "switchyard"))


def test_a_duplicate_list_map_key_is_an_error(catalog, rendered):
    gateway = copy.deepcopy(one(rendered["ai-gateway"], "Gateway", "sy-switchyard"))
    gateway["spec"]["listeners"].append(dict(gateway["spec"]["listeners"][0], port=81))
    assert "spec.listeners: duplicate key {'name': 'http'}" in rejection(catalog, gateway)


def test_the_gateway_api_standard_channel_is_used(catalog):
    """HTTPRoute's experimental-only fields (e.g. a rule's `name` is standard, `retry` is not) are rejected."""
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
             "spec": {"rules": [{"retry": {"attempts": 2}}]}}
    assert "spec.rules[0].retry: unknown field" in rejection(catalog, route)


# ---- the CRD dialect ---------------------------------------------------------------------------------

def draft4_errors(schema: dict[str, Any], instance: Any) -> list[str]:
    validator = crds.CrdValidator(crds.structural_to_draft4(schema))
    return [e.message for e in validator.iter_errors(instance)]


def test_nullable_allows_null_and_int_or_string_both():
    assert not draft4_errors({"type": "string", "nullable": True, "enum": ["a"]}, None)
    assert draft4_errors({"type": "string", "enum": ["a"]}, None)
    int_or_string = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert not draft4_errors(int_or_string, 80) and not draft4_errors(int_or_string, "80%")
    assert draft4_errors(int_or_string, 1.5)


def test_preserve_unknown_fields_and_embedded_resources_allow_what_they_say():
    closed = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert draft4_errors(closed, {"b": 1})
    assert not draft4_errors(dict(closed, **{"x-kubernetes-preserve-unknown-fields": True}), {"b": 1})
    embedded = dict(closed, **{"x-kubernetes-embedded-resource": True})
    assert not draft4_errors(embedded, {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "a": "x"})


def test_value_rules_inside_one_of_do_not_close_the_object():
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
              "oneOf": [{"properties": {"a": {"minLength": 1}}, "required": ["a"]}, {"required": ["b"]}]}
    assert not draft4_errors(schema, {"a": "x"})
    assert draft4_errors(schema, {"a": "x", "b": "y"})  # both branches match: oneOf fails
    assert draft4_errors(schema, {"c": "z"})


def test_a_missing_crd_folder_says_where_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv(crds.CRDS_ENV, str(tmp_path / "absent"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as caught:
        load_catalog()
    assert str(tmp_path / "absent") in str(caught.value) and "../shared/k8s-crds" in str(caught.value)
