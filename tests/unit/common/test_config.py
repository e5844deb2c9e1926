"""Config validation: the example loads, and every kind of mistake gets a message naming path and value."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.config import ConfigError, FailureMode, load_config, parse_config
from tests.conftest import EXAMPLE_CONFIG, example_config_data


def test_example_config_loads_with_all_categories() -> None:
    config = load_config(EXAMPLE_CONFIG)
    assert config.routing.default_model == "qwen3-8b"
    assert len(config.routing.categories) == 14
    assert {c.name for c in config.routing.categories} >= {"math", "law", "computer science", "other"}
    assert config.decision.on_failure is FailureMode.OPEN
    # Relative model repository paths are resolved against the config file's folder.
    assert config.triton.model_repository == (EXAMPLE_CONFIG.parent.parent / "triton_models").resolve()
    assert config.simulator_wanted


def _error_for(data: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "cfg.yaml")
    return str(caught.value)


def test_score_out_of_range_names_path_and_value() -> None:
    data = example_config_data()
    data["routing"]["categories"][3]["model_scores"][0]["score"] = 1.7
    assert _error_for(data) == "cfg.yaml: routing.categories[3].model_scores[0].score: must be between 0 and 1, got 1.7"


def test_unknown_key_suggests_the_right_one() -> None:
    data = example_config_data()
    data["routing"]["defualt_model"] = "qwen3-8b"
    message = _error_for(data)
    assert "routing.defualt_model: unknown key (did you mean 'default_model'?)" in message


def test_unknown_model_in_model_scores() -> None:
    data = example_config_data()
    data["routing"]["categories"][0]["model_scores"][0]["model"] = "qwen3-8"
    message = _error_for(data)
    assert "routing.categories[0].model_scores[0].model: unknown name 'qwen3-8'" in message
    assert "did you mean 'qwen3-8b'?" in message


def test_unknown_default_model() -> None:
    data = example_config_data()
    data["routing"]["default_model"] = "gpt-9"
    assert _error_for(data).startswith("cfg.yaml: routing.default_model: unknown name 'gpt-9'; known: qwen3-8b")


def test_unknown_backend() -> None:
    data = example_config_data()
    data["routing"]["models"]["qwen3-8b"]["backend"] = "nowhere"
    assert "cfg.yaml: routing.models.qwen3-8b.backend: unknown name 'nowhere'" in _error_for(data)


def test_bad_enum_and_type() -> None:
    data = example_config_data()
    data["guard"]["on_failure"] = "sometimes"
    data["front"]["grpc_port"] = "eighty"
    message = _error_for(data)
    assert "guard.on_failure:" in message and "'sometimes'" in message
    assert "front.grpc_port:" in message and "'eighty'" in message


def test_missing_required_section() -> None:
    data = example_config_data()
    del data["routing"]
    assert _error_for(data) == "cfg.yaml: routing: required key is missing"


def test_top_level_must_be_a_mapping() -> None:
    assert "top level must be a mapping" in _error_for(["a", "b"])


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("routing:\n  default_model: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "line" in str(caught.value) and "not valid YAML" in str(caught.value)


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_several_backends_need_explicit_model_backend() -> None:
    data = copy.deepcopy(example_config_data())
    data["backends"].append({"name": "vllm-b", "address": "10.0.0.2", "port": 8000})
    del data["routing"]["models"]["qwen3-8b"]["backend"]
    message = _error_for(data)
    assert "routing.models.qwen3-8b.backend: required when there is more than one backend" in message


def test_cli_config_check_exit_codes(write_config) -> None:
    good = subprocess.run([sys.executable, "-m", "services.cli", "config", "check", str(EXAMPLE_CONFIG)],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout
    data = example_config_data()
    data["routing"]["categories"][3]["model_scores"][0]["score"] = 1.7
    bad = subprocess.run([sys.executable, "-m", "services.cli", "config", "check", str(write_config(data))],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "routing.categories[3].model_scores[0].score: must be between 0 and 1, got 1.7" in bad.stderr


def test_guard_fails_closed_unless_the_operator_says_open() -> None:
    data = example_config_data()
    del data["guard"]["on_failure"]
    config = parse_config(data)
    assert config.guard.on_failure is FailureMode.CLOSED
    assert config.decision.on_failure is FailureMode.OPEN and config.cache.on_failure is FailureMode.OPEN
    assert parse_config({"routing": data["routing"]}).guard.on_failure is FailureMode.CLOSED


def test_routing_cap_must_fit_envoys_message_timeout() -> None:
    data = example_config_data()
    data["front"]["max_routing_ms"] = 9000
    assert "front.max_routing_ms: must be below envoy.message_timeout_ms (8000)" in _error_for(data)


def test_triton_calls_may_last_as_long_as_the_routing_cap() -> None:
    data = example_config_data()
    data["front"]["max_routing_ms"] = 4500
    data["triton"]["timeout_ms"] = 2000
    assert "triton.timeout_ms: must be at least front.max_routing_ms (4500)" in _error_for(data)


def test_a_service_floor_must_fit_under_the_routing_cap() -> None:
    data = example_config_data()
    data["guard"]["deadline_ms"] = 20000
    assert "guard.deadline_ms: must be below front.max_routing_ms (6000), got 20000" in _error_for(data)
