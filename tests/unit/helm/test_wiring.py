"""The rendered chart wires the mesh right: config addresses, Services, ext_proc, routes, HPAs."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

from services.common.config import parse_config
from services.mesh.envoy_config import build_envoy_config, ext_proc_filter, validate_envoy_message
from tests.conftest import example_config_data

from .conftest import CHART, FULLNAME, NAMESPACE, VARIANTS, find, one, render, router_config_data

MESH = ("front", "decision", "guard", "cache")


def service_port(docs, name: str, port_name: str) -> int:
    service = one(docs, "Service", name)
    return next(p["port"] for p in service["spec"]["ports"] if p["name"] == port_name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_router_config_is_accepted_by_the_app(rendered, variant):
    config = parse_config(router_config_data(rendered[variant]), f"{variant} ConfigMap")
    assert config.triton.managed is False
    assert config.envoy.managed is False
    assert config.cache.store == "server"
    assert config.front.host == "0.0.0.0"
    for name in ("decision", "guard", "cache"):
        assert getattr(config, name).host == "0.0.0.0"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_service_address_is_a_kubernetes_service(rendered, variant):
    docs = rendered[variant]
    config = parse_config(router_config_data(docs))
    for name in ("decision", "guard", "cache"):
        section = getattr(config, name)
        host, port = section.dial_address.rsplit(":", 1)
        assert host == f"{FULLNAME}-{name}"
        assert int(port) == section.port == service_port(docs, host, "grpc")
        assert section.metrics_port == service_port(docs, host, "metrics")
    assert config.triton.host == f"{FULLNAME}-triton"
    assert config.triton.grpc_port == service_port(docs, config.triton.host, "grpc")
    assert config.cache.url == f"http://{FULLNAME}-qdrant:{service_port(docs, f'{FULLNAME}-qdrant', 'http')}"
    assert config.front.grpc_port == service_port(docs, f"{FULLNAME}-front", "grpc")
    assert config.front.http_port == service_port(docs, f"{FULLNAME}-front", "http")


def test_default_routing_is_the_example_configs(rendered):
    """values.yaml carries config/config.yaml's routing; only the backend binding is the cluster's."""
    expected = copy.deepcopy(example_config_data()["routing"])
    for model in expected["models"].values():
        model.pop("backend", None)
    assert router_config_data(rendered["default"])["routing"] == expected


def test_production_stack_points_every_model_at_the_stack(rendered):
    docs = rendered["production-stack"]
    config = parse_config(router_config_data(docs))
    assert list(config.routing.models) == ["Qwen/Qwen3-8B"]
    for model in config.routing.models:
        backend = config.backend_for(model)
        assert (backend.address, backend.port) == ("vllm-router-service", 80)
    assert {s.model for c in config.routing.categories for s in c.model_scores} == {"Qwen/Qwen3-8B"}
    assert config.front.tenant_header == "x-user-id"  # the stack's sessionKey


@pytest.mark.parametrize("variant", ["ai-gateway", "production-stack", "ai-gateway-extension-policy"])
def test_ai_gateway_routes_every_model_to_its_backend(rendered, variant):
    docs = rendered[variant]
    config = parse_config(router_config_data(docs))
    route = one(docs, "AIGatewayRoute", FULLNAME)
    gateway = one(docs, "Gateway", FULLNAME)
    assert route["spec"]["parentRefs"][0]["name"] == gateway["metadata"]["name"]
    by_model = {}
    # The rules that match one header; those with x-vsr-fallback-next too are the fallback pairs (below).
    for rule in [r for r in route["spec"]["rules"] if len(r["matches"][0]["headers"]) == 1]:
        (header,) = rule["matches"][0]["headers"]
        assert header["name"] == "x-ai-eg-model" and header["type"] == "Exact"
        by_model[header["value"]] = rule["backendRefs"][0]["name"]
    assert set(by_model) == set(config.routing.models)
    for model, ref in by_model.items():
        backend = config.backend_for(model)
        ai_backend = one(docs, "AIServiceBackend", ref)
        assert ai_backend["spec"]["schema"]["name"] == "OpenAI"
        eg_backend = one(docs, "Backend", ai_backend["spec"]["backendRef"]["name"])
        (endpoint,) = eg_backend["spec"]["endpoints"]
        assert endpoint["fqdn"] == {"hostname": f"{backend.address}.{NAMESPACE}.svc.cluster.local",
                                    "port": backend.port}
    policy = one(docs, "ClientTrafficPolicy", f"{FULLNAME}-buffer")
    assert policy["spec"]["targetRefs"][0]["name"] == gateway["metadata"]["name"]


def test_patch_policy_inserts_the_same_ext_proc_filter_first(rendered):
    docs = rendered["ai-gateway"]
    config = parse_config(router_config_data(docs))
    policy = one(docs, "EnvoyPatchPolicy", f"{FULLNAME}-extproc")
    listener_patch, cluster_patch = policy["spec"]["jsonPatches"]
    gateway = one(docs, "Gateway", FULLNAME)
    assert listener_patch["name"] == f"{NAMESPACE}/{FULLNAME}/{gateway['spec']['listeners'][0]['name']}"
    assert listener_patch["operation"]["path"].endswith("/http_filters/0")
    typed = listener_patch["operation"]["value"]["typed_config"]
    expected = ext_proc_filter(config)["typed_config"]
    expected["grpc_service"]["envoy_grpc"]["cluster_name"] = cluster_patch["name"]
    assert typed == expected
    address = cluster_patch["operation"]["value"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
        "endpoint"]["address"]["socket_address"]
    assert address == {"address": f"{FULLNAME}-front.{NAMESPACE}.svc.cluster.local",
                       "port_value": service_port(docs, f"{FULLNAME}-front", "grpc")}
    assert "http2_protocol_options" in str(cluster_patch["operation"]["value"])


@pytest.mark.parametrize("variant", ["ai-gateway", "production-stack"])
def test_patch_policy_values_are_typed_envoy_messages(rendered, variant):
    """The JSON patches' values are opaque to the CRD; Envoy's typed API checks them instead."""
    policy = one(rendered[variant], "EnvoyPatchPolicy", f"{FULLNAME}-extproc")
    listener_patch, cluster_patch = policy["spec"]["jsonPatches"]
    assert listener_patch["type"] == "type.googleapis.com/envoy.config.listener.v3.Listener"
    validate_envoy_message(listener_patch["operation"]["value"], http_connection_manager_pb2.HttpFilter)
    assert cluster_patch["type"] == f"type.googleapis.com/{cluster_pb2.Cluster.DESCRIPTOR.full_name}"
    validate_envoy_message(cluster_patch["operation"]["value"], cluster_pb2.Cluster)


@pytest.mark.parametrize("variant", ["plain-envoy", "dev"])
def test_plain_envoy_config_is_a_typed_bootstrap(rendered, variant):
    envoy = yaml.safe_load(one(rendered[variant], "ConfigMap", f"{FULLNAME}-envoy")["data"]["envoy.yaml"])
    validate_envoy_message(envoy)


def test_extension_policy_calls_the_front_service(rendered):
    docs = rendered["ai-gateway-extension-policy"]
    policy = one(docs, "EnvoyExtensionPolicy", f"{FULLNAME}-extproc")
    (ext_proc,) = policy["spec"]["extProc"]
    (ref,) = ext_proc["backendRefs"]
    assert ref["port"] == service_port(docs, ref["name"], "grpc")
    assert ref["name"] == f"{FULLNAME}-front"
    assert ext_proc["processingMode"] == {"allowModeOverride": True, "request": {"body": "Buffered"},
                                          "response": {"body": "Buffered"}}


@pytest.mark.parametrize("variant", ["plain-envoy", "dev"])
def test_plain_envoy_config_equals_the_local_generator(rendered, variant):
    """The chart's envoy.yaml is build_envoy_config() with Service names for the front and the backends."""
    docs = rendered[variant]
    data = router_config_data(docs)
    data["front"]["host"] = f"{FULLNAME}-front"
    expected = build_envoy_config(parse_config(data))
    expected["admin"]["address"]["socket_address"]["address"] = "127.0.0.1"  # admin stays off the pod network
    envoy = yaml.safe_load(one(docs, "ConfigMap", f"{FULLNAME}-envoy")["data"]["envoy.yaml"])
    routes = lambda c: c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]["routes"]
    # Helm iterates models in key order; only the catch-all route's position matters.
    assert routes(envoy)[-1] == routes(expected)[-1]
    canonical = lambda routes_: sorted(json.dumps(r, sort_keys=True) for r in routes_)
    assert canonical(routes(envoy)) == canonical(routes(expected))
    routes(envoy).clear(), routes(expected).clear()
    assert envoy == expected
    front_cluster = envoy["static_resources"]["clusters"][0]
    socket = front_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"]
    assert socket["port_value"] == service_port(docs, socket["address"], "grpc")
    deployment = one(docs, "Deployment", f"{FULLNAME}-envoy")
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert port == envoy["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]


def test_dev_backends_are_the_simulator(rendered):
    docs = rendered["dev"]
    config = parse_config(router_config_data(docs))
    assert {b.address for b in config.backends} == {f"{FULLNAME}-simulator"}
    assert config.backends[0].port == service_port(docs, f"{FULLNAME}-simulator", "http")


@pytest.mark.parametrize("variant", VARIANTS)
def test_hpas_and_pdbs_target_existing_workloads(rendered, variant):
    docs = rendered[variant]
    workloads = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in workloads, f"HPA {hpa['metadata']['name']} targets nothing"
        assert "replicas" not in workloads[(ref["kind"], ref["name"])]["spec"], "HPA and replicas would fight"
    for pdb in find(docs, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
                   for w in workloads.values()), f"PDB {pdb['metadata']['name']} selects no pods"
    for service in find(docs, "Service"):
        selector = service["spec"]["selector"]
        assert any(selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
                   for w in workloads.values()), f"Service {service['metadata']['name']} selects no pods"


def test_default_has_hpa_and_pdb_for_every_service_and_triton(rendered):
    docs = rendered["default"]
    for name in (*MESH, "triton"):
        one(docs, "HorizontalPodAutoscaler", f"{FULLNAME}-{name}")
        one(docs, "PodDisruptionBudget", f"{FULLNAME}-{name}")
        one(docs, "Deployment", f"{FULLNAME}-{name}")
        one(docs, "Service", f"{FULLNAME}-{name}")
    one(docs, "StatefulSet", f"{FULLNAME}-qdrant")


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_are_locked_down(rendered, variant):
    for workload in (d for d in rendered[variant] if d["kind"] in ("Deployment", "StatefulSet")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert container["resources"]["requests"] and container["resources"]["limits"], where
            assert "readinessProbe" in container and "livenessProbe" in container, where


def test_mesh_pods_mount_the_router_config_and_roll_on_change(rendered):
    before = {d["metadata"]["name"]: d for d in find(rendered["default"], "Deployment")}
    after = {d["metadata"]["name"]: d for d in find(render("--set", "routerConfig.guard.deadline_ms=999"),
                                                      "Deployment")}
    for name in MESH:
        deployment = before[f"{FULLNAME}-{name}"]
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert {"name": "config", "configMap": {"name": f"{FULLNAME}-config"}} in volumes
        checksum = lambda d: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        assert checksum(deployment) != checksum(after[f"{FULLNAME}-{name}"])


def test_triton_gpu_by_values(rendered):
    limits = lambda docs: one(docs, "Deployment", f"{FULLNAME}-triton")["spec"]["template"]["spec"][
        "containers"][0]["resources"]["limits"]
    assert limits(rendered["default"])["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in limits(rendered["dev"])
    docs = render("--set", "triton.nodeSelector.gpu=yes", "--set", "triton.tolerations[0].key=nvidia.com/gpu",
                  "--set", "triton.tolerations[0].operator=Exists")
    pod = one(docs, "Deployment", f"{FULLNAME}-triton")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "yes"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]


def test_existing_qdrant_instead_of_the_statefulset():
    docs = render("--set", "qdrant.enabled=false", "--set", "qdrant.externalUrl=http://qdrant.db:6333")
    assert not find(docs, "StatefulSet")
    assert router_config_data(docs)["cache"]["url"] == "http://qdrant.db:6333"


def test_dashboards_render_one_configmap_per_file(tmp_path):
    chart = tmp_path / "switchyard"
    shutil.copytree(CHART, chart)
    for old in (chart / "dashboards").glob("*.json"):
        old.unlink()
    enabled = ("--set", "metrics.dashboards.enabled=true")
    assert not [d for d in render(*enabled, chart=chart) if "-dashboard-" in d["metadata"]["name"]]
    (chart / "dashboards" / "Switchyard_Overview.json").write_text('{"title": "switchyard"}')
    (chart / "dashboards" / "triton.json").write_text('{"title": "triton"}')
    maps = [d for d in render(*enabled, chart=chart) if "-dashboard-" in d["metadata"]["name"]]
    assert sorted(m["metadata"]["name"] for m in maps) == [f"{FULLNAME}-dashboard-switchyard-overview",
                                                          f"{FULLNAME}-dashboard-triton"]
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)
    assert maps[0]["data"]["Switchyard_Overview.json"] == '{"title": "switchyard"}'


@pytest.mark.parametrize("variant", ["ai-gateway", "ai-gateway-extension-policy"])
def test_ai_gateway_falls_back_to_the_next_candidate_at_priority_one(rendered, variant):
    """The front names the next allowed candidate (x-vsr-fallback-next); a rule per pair puts it at priority 1
    under its own name, and one retry of the BackendTrafficPolicy goes there (routing.fallback)."""
    docs = rendered[variant]
    config = parse_config(router_config_data(docs))
    route = one(docs, "AIGatewayRoute", FULLNAME)
    pairs = {}
    for rule in [r for r in route["spec"]["rules"] if len(r["matches"][0]["headers"]) == 2]:
        model, following = (h["value"] for h in rule["matches"][0]["headers"])
        assert [h["name"] for h in rule["matches"][0]["headers"]] == ["x-ai-eg-model", "x-vsr-fallback-next"]
        first, second = rule["backendRefs"]
        assert first["name"] == f"{FULLNAME}-{config.backend_for(model).name}" and "priority" not in first
        assert second == {"name": f"{FULLNAME}-{config.backend_for(following).name}", "priority": 1,
                          "modelNameOverride": following}
        assert rule["streamIdleTimeout"] == f"{config.routing.fallback.per_try_timeout_ms:.0f}ms"
        pairs[(model, following)] = rule
    models = list(config.routing.models)
    assert set(pairs) == {(a, b) for a in models for b in models if a != b}
    policy = one(docs, "BackendTrafficPolicy", f"{FULLNAME}-fallback")
    assert policy["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                             "name": route["metadata"]["name"]}]
    retry = policy["spec"]["retry"]
    assert retry["numRetries"] == 1 and retry["numAttemptsPerPriority"] == 1
    assert retry["retryOn"] == {"triggers": ["connect-failure", "reset", "retriable-status-codes"],
                                "httpStatusCodes": [502, 503, 504]}
