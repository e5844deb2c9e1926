"""The generated Envoy configuration is checked against Envoy's typed v3 API (xds-protos) as it is built."""

from __future__ import annotations

import json
import copy
from typing import Any

import pytest
import yaml

from services.common.config import parse_config
from services.mesh import envoy_config
from services.mesh.envoy_config import EnvoyConfigError, build_envoy_config, validate_envoy_message
from tests.conftest import example_config_data


@pytest.fixture
def config():
    return parse_config(example_config_data())


def hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    return bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def type_urls(node: Any) -> set[str]:
    if isinstance(node, dict):
        return ({node["@type"]} if "@type" in node else set()) | {u for v in node.values() for u in type_urls(v)}
    if isinstance(node, list):
        return {u for v in node for u in type_urls(v)}
    return set()


def test_the_generated_config_is_a_valid_bootstrap(config):
    bootstrap = build_envoy_config(config)
    message = validate_envoy_message(bootstrap)
    assert [c.name for c in message.static_resources.clusters] == [c["name"] for c in
                                                                   bootstrap["static_resources"]["clusters"]]
    # Every typed_config resolved to its message, none left opaque.
    known = {f"type.googleapis.com/{m.DESCRIPTOR.full_name}" for m in envoy_config.TYPED_CONFIG_MESSAGES}
    assert type_urls(bootstrap) == known


def test_the_output_is_written_as_built(config):
    """Validation only reads: the dict (key order, "5.000s" durations) is what envoy.yaml gets."""
    bootstrap = build_envoy_config(config)
    ext_proc = hcm(bootstrap)["http_filters"][0]["typed_config"]
    assert list(ext_proc)[0] == "@type"
    assert ext_proc["message_timeout"] == f"{config.envoy.message_timeout_ms / 1000:.3f}s"
    assert yaml.safe_dump(bootstrap, sort_keys=False) == yaml.safe_dump(build_envoy_config(config), sort_keys=False)


def test_a_misspelled_field_fails_at_generation_time(config, monkeypatch):
    cluster = envoy_config._cluster

    def misspelled(*args, **kwargs):
        built = cluster(*args, **kwargs)
        built["conect_timeout"] = built.pop("connect_timeout")
        return built

    monkeypatch.setattr(envoy_config, "_cluster", misspelled)
    with pytest.raises(EnvoyConfigError, match=r'"envoy.config.cluster.v3.Cluster" has no field named '
                                               r'"conect_timeout" at "Bootstrap.static_resources.clusters\[0\]"'):
        build_envoy_config(config)


def test_a_wrong_enum_value_inside_a_typed_config_fails(config, monkeypatch):
    ext_proc_filter = envoy_config.ext_proc_filter

    def wrong_mode(cfg):
        built = ext_proc_filter(cfg)
        built["typed_config"]["processing_mode"]["request_body_mode"] = "BUFFER"
        return built

    monkeypatch.setattr(envoy_config, "ext_proc_filter", wrong_mode)
    with pytest.raises(EnvoyConfigError, match=r"Invalid enum value BUFFER .* at Bootstrap\.static_resources\."
                                               r"listeners\[0\].*http_filters\[0\]\.typed_config\.processing_mode"):
        build_envoy_config(config)


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: hcm(b)["http_filters"][1]["typed_config"].update(
        {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Routr"}),
     "Can not find message descriptor by type_url: type.googleapis.com/envoy.extensions.filters.http.router.v3.Routr"),
    (lambda b: b["static_resources"]["clusters"][0].update(connect_timeout=1),
     "clusters[0].connect_timeout"),
    (lambda b: b["static_resources"]["clusters"][0].update(http2_protocol_options={}),
     "deprecated fields of envoy.config.bootstrap.v3.Bootstrap: Bootstrap.static_resources.clusters[0]."
     "http2_protocol_options"),
    (lambda b: hcm(b).update(stat_prefix=["switchyard"]), "stat_prefix"),
])
def test_what_envoy_would_reject_is_named(config, change, message):
    bootstrap = copy.deepcopy(build_envoy_config(config))
    change(bootstrap)
    with pytest.raises(EnvoyConfigError) as caught:
        validate_envoy_message(bootstrap)
    assert message in str(caught.value)


def test_fallback_is_router_retries_with_the_front_as_upstream_filter(config):
    hcm_config = hcm(build_envoy_config(config))
    virtual_host = hcm_config["route_config"]["virtual_hosts"][0]
    assert virtual_host["include_request_attempt_count"] and virtual_host["include_is_timeout_retry_header"]
    *backend_routes, catch_all = virtual_host["routes"]
    policy = backend_routes[0]["route"]["retry_policy"]
    assert policy["retry_on"] == "connect-failure,reset,retriable-status-codes"
    assert policy["retriable_status_codes"] == [502, 503, 504]
    assert policy["num_retries"] == config.routing.fallback.attempts - 1
    assert policy["per_try_idle_timeout"] == f"{config.routing.fallback.per_try_timeout_ms / 1000:.3f}s"
    assert "retry_policy" not in catch_all["route"]  # pass-through paths are not routed, so not retried
    upstream = hcm_config["http_filters"][-1]["typed_config"]["upstream_http_filters"]
    assert [f["name"] for f in upstream] == ["envoy.filters.http.match_delegate", "envoy.filters.http.upstream_codec"]
    # Only requests that carry a chain pay for the upstream pass (pass-through paths skip it).
    delegated = upstream[0]["typed_config"]
    (matcher,) = delegated["xds_matcher"]["matcher_list"]["matchers"]
    assert matcher["predicate"]["not_matcher"]["single_predicate"]["input"]["typed_config"]["header_name"] == \
        "x-switchyard-fallback-chain"
    assert matcher["on_match"]["action"]["name"] == "skip"
    assert delegated["extension_config"]["name"] == "envoy.filters.http.ext_proc"
    mode = delegated["extension_config"]["typed_config"]["processing_mode"]
    assert mode["request_body_mode"] == "BUFFERED" and mode["response_body_mode"] == "NONE"
    # A client-sent chain never reaches the front; the front may lower the retries of a request.
    (strip,) = hcm_config["early_header_mutation_extensions"]
    assert strip["typed_config"]["mutations"] == [{"remove": "x-switchyard-fallback-chain"}]
    assert hcm_config["http_filters"][0]["typed_config"]["mutation_rules"] == {"allow_envoy": True}


def test_fallback_off_means_no_retries(config):
    data = example_config_data()
    data["routing"]["fallback"] = {"enabled": False}
    hcm_config = hcm(build_envoy_config(parse_config(data)))
    virtual_host = hcm_config["route_config"]["virtual_hosts"][0]
    assert all("retry_policy" not in r.get("route", {}) for r in virtual_host["routes"])
    assert "include_request_attempt_count" not in virtual_host
    assert "upstream_http_filters" not in hcm_config["http_filters"][-1]["typed_config"]


def test_only_the_failures_named_are_retried(config):
    data = example_config_data()
    data["routing"]["fallback"] = {"retry_on": ["connect_failure", "503"]}
    policy = hcm(build_envoy_config(parse_config(data)))["route_config"]["virtual_hosts"][0]["routes"][0][
        "route"]["retry_policy"]
    assert policy["retry_on"] == "connect-failure,retriable-status-codes"
    assert policy["retriable_status_codes"] == [503] and "per_try_idle_timeout" not in policy


def test_envoys_own_upstream_failures_are_openai_errors(config):
    mappers = hcm(build_envoy_config(config))["local_reply_config"]["mappers"]
    (upstream,) = [m for m in mappers if "response_flag_filter" in m["filter"]]
    assert "URX" in upstream["filter"]["response_flag_filter"]["flags"]
    assert upstream["body_format_override"]["json_format"]["error"]["code"] == "backend_unavailable"


def test_a_routed_api_without_a_chosen_backend_is_refused_not_forwarded(config):
    """Defence in depth: if the front's stream ends before it answered, Envoy must not send the request on."""
    routes = hcm(build_envoy_config(config))["route_config"]["virtual_hosts"][0]["routes"]
    refusals = [r for r in routes if "direct_response" in r]
    assert {r["match"]["path"] for r in refusals} == {"/v1/chat/completions", "/v1/responses", "/v1/messages"}
    first_default = next(i for i, r in enumerate(routes) if r["match"] == {"prefix": "/"})
    assert all(routes.index(r) < first_default for r in refusals)
    assert all(r["direct_response"]["status"] == 503 for r in refusals)
    assert json.loads(refusals[0]["direct_response"]["body"]["inline_string"])["error"]["code"] == "router_unavailable"
