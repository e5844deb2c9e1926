"""guard.safety and guard.jailbreak config: actions, cross-section model checks, removed window keys."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError, SafetyActionKind, parse_config
from tests.conftest import example_config_data


def with_guard(**sections) -> dict:
    data = example_config_data()
    data["guard"].update(sections)
    return data


def error_for(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "cfg.yaml")
    return str(caught.value)


def test_safety_routes_to_configured_models() -> None:
    config = parse_config(with_guard(safety={"safety_model": "llama-3.1-8b", "threshold": 0.7,
                                             "policies": {"drugs": {"route": "deepseek-r1"}, "sexual": "allow"}}))
    safety = config.guard.safety
    assert safety.threshold == 0.7
    assert safety.action_for("drugs").model == "deepseek-r1"
    assert safety.action_for("self_harm").model == "llama-3.1-8b"
    assert safety.action_for("sexual").kind is SafetyActionKind.ALLOW


def test_an_unknown_safety_model_says_where_to_add_it() -> None:
    message = error_for(with_guard(safety={"safety_model": "qwen3-8"}))
    assert message == ("cfg.yaml: guard.safety.safety_model: unknown name 'qwen3-8' (did you mean 'qwen3-8b'?); "
                       "known: qwen3-8b, llama-3.1-8b, deepseek-r1 (safety routes go to a routing.models entry: "
                       "add the model there)")
    routed = error_for(with_guard(safety={"policies": {"drugs": {"route": "nope"}}}))
    assert "guard.safety.policies.drugs: unknown name 'nope'" in routed and "routing.models" in routed


def test_an_unknown_category_suggests_the_right_one() -> None:
    message = error_for(with_guard(safety={"policies": {"sexaul": "allow"}}))
    assert message.startswith("cfg.yaml: guard.safety.policies.sexaul: unknown name 'sexaul' (did you mean 'sexual'?)")


def test_a_bad_action_lists_the_valid_ones() -> None:
    assert error_for(with_guard(safety={"policies": {"drugs": "reroute"}})) == (
        "cfg.yaml: guard.safety.policies.drugs: must be block, allow, route (to guard.safety.safety_model) or "
        "{route: <model>}, got 'reroute'")


def test_route_without_a_safety_model_says_how_to_fix() -> None:
    message = error_for(with_guard(safety={"default_action": "route"}))
    assert message == ("cfg.yaml: guard.safety.default_action: `route` sends to guard.safety.safety_model, which is "
                       "not set; set safety_model to a routing.models entry or write {route: <model>}")


def test_old_window_keys_get_a_clear_error() -> None:
    message = error_for(with_guard(jailbreak={"threshold": 0.5, "chunk_tokens": 256, "chunk_overlap_tokens": 64}))
    lines = message.splitlines()
    assert len(lines) == 2 and lines[0].startswith("cfg.yaml: guard.jailbreak.chunk_tokens: no longer configurable")
    assert "PII tagger's windows" in lines[0] and lines[1].startswith("cfg.yaml: guard.jailbreak.chunk_overlap_tokens")


def test_scope_defaults_and_values() -> None:
    guard = parse_config(example_config_data()).guard
    assert guard.jailbreak.scope == "user_and_tool" and guard.pii.scope == "all_user"
    assert parse_config(with_guard(pii={"scope": "user_and_tool"})).guard.pii.scope == "user_and_tool"
    assert "guard.jailbreak.scope" in error_for(with_guard(jailbreak={"scope": "tools"}))


def test_a_dumped_safety_policy_loads_again() -> None:
    config = parse_config(with_guard(safety={"safety_model": "qwen3-8b", "default_action": "allow",
                                             "policies": {"drugs": {"route": "deepseek-r1"}, "sexual": "route"}}))
    dumped = config.guard.safety.model_dump()
    assert dumped["policies"] == {"drugs": "route: deepseek-r1", "sexual": "route"}
    assert parse_config(with_guard(safety=dumped)).guard.safety == config.guard.safety
