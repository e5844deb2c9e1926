"""Hot reload: a valid file swaps the whole snapshot, a bad one is rejected and the old one stays."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from services.common.config import parse_config
from services.common.reload import ConfigReloader, LiveConfig, restart_needed
from tests.conftest import example_config_data


def test_reload_applies_good_configs_and_keeps_the_old_on_bad(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    data = example_config_data()
    path.write_text(yaml.safe_dump(data))
    live = LiveConfig(parse_config(data))
    first = live.current
    seen, results = [], []
    live.on_change(seen.append)
    reloader = ConfigReloader(path, live, results.append)
    assert reloader.check() is None  # unchanged
    data["routing"]["default_model"] = "deepseek-r1"
    path.write_text(yaml.safe_dump(data))
    assert reloader.check() is True
    assert live.current.routing.default_model == "deepseek-r1" and seen == [live.current]
    assert first.routing.default_model == "qwen3-8b"  # a snapshot taken before is never changed
    path.write_text("routing: [this is: not valid")
    assert reloader.check() is False
    assert live.current.routing.default_model == "deepseek-r1" and results == ["applied", "rejected"]


def test_a_reload_that_moves_a_port_says_it_needs_a_restart(caplog: pytest.LogCaptureFixture) -> None:
    data = example_config_data()
    old = parse_config(data)
    data["guard"]["port"] = 50099
    data["backends"][0]["port"] = 9999
    new = parse_config(data)
    assert restart_needed(old, new) == ["guard.port", "backends (Envoy's clusters)"]
    with caplog.at_level(logging.WARNING, "switchyard.config"):
        LiveConfig(old).swap(new)
    assert "guard.port changed; it takes effect only after a restart" in caplog.text
