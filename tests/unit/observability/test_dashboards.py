"""The Grafana dashboards: generated from grafana/generate.py, structurally valid, readable PromQL."""

from __future__ import annotations

import importlib.util
import sys

from tests.unit.observability.dashboards import DASHBOARDS, load_dashboards, panels, queries, schema_problems


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("grafana_generate", DASHBOARDS.parent / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_dashboard_files_match_the_generator() -> None:
    generator = _generator()
    built = generator.build()
    assert sorted(built) == sorted(p.name for p in DASHBOARDS.glob("*.json"))
    for name, board in built.items():
        assert (DASHBOARDS / name).read_text() == generator.render(board), (
            f"grafana/dashboards/{name} is stale: run `.venv/bin/python grafana/generate.py`")


def test_dashboards_follow_grafanas_schema() -> None:
    boards = load_dashboards()
    assert {"switchyard-overview.json", "switchyard-services.json"} <= set(boards)
    problems = [p for name, board in boards.items() for p in schema_problems(name, board)]
    assert not problems, "\n".join(problems)


def test_uids_and_titles_are_unique() -> None:
    boards = list(load_dashboards().values())
    assert len({b["uid"] for b in boards}) == len(boards)
    for board in boards:
        titles = [p["title"] for p in panels(board) if p["type"] != "row"]
        assert len(titles) == len(set(titles)), f"{board['uid']}: repeated panel titles"


def test_schema_check_catches_mistakes() -> None:
    board = load_dashboards()["switchyard-overview.json"]
    broken = {**board, "panels": [dict(p) for p in board["panels"]]}
    broken["panels"][1]["type"] = "timeseries-typo"
    broken["panels"][2]["id"] = broken["panels"][1]["id"]
    broken["panels"][3] = {**broken["panels"][3], "targets": [{"refId": "A", "expr": "rate(x[$nope])"}]}
    problems = "\n".join(schema_problems("broken", broken))
    assert "unknown type" in problems and "id missing or repeated" in problems and "$nope" not in problems
    assert "undefined variables ['nope']" in problems


def test_the_overview_covers_the_issue() -> None:
    exprs = "\n".join(expr for _, expr in queries(load_dashboards()["switchyard-overview.json"]))
    for metric in ("switchyard_front_requests_total", "llm_model_requests_total", "llm_classifier_latency_seconds",
                   "switchyard_front_routing_latency_seconds", "switchyard_front_service_latency_seconds",
                   "llm_cache_hits_total", "switchyard_front_blocks_total", "switchyard_front_degraded_total",
                   "llm_model_prompt_tokens_total", "llm_model_completion_tokens_total", "up{"):
        assert metric in exprs, f"the overview has no panel on {metric}"
