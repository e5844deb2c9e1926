"""Shared by the observability tests: the dashboards, their PromQL, and a structural check of Grafana's schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
DASHBOARDS = REPO / "grafana" / "dashboards"
RULES = REPO / "grafana" / "alerts" / "switchyard.rules.yaml"
RULE_TESTS = REPO / "grafana" / "alerts" / "switchyard.rules.test.yaml"

# Panel types Grafana 10/11 ships; a typo here would render as "Panel plugin not found".
PANEL_TYPES = frozenset({"row", "timeseries", "stat", "piechart", "gauge", "bargauge", "table", "heatmap",
                         "text", "barchart", "state-timeline", "histogram", "logs"})
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__range", "__range_s", "__range_ms",
                              "__interval_ms", "__dashboard", "__from", "__to"})
# What the builtins become when a test sends an expression to Prometheus itself.
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s", "$job": "switchyard-.*|triton"}
VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every target."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def for_prometheus(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return expr


def schema_problems(name: str, board: dict[str, Any]) -> list[str]:
    """What Grafana's dashboard schema (schemaVersion 39) requires and a provisioned file can get wrong.

    A structural check in Python, instead of @grafana/schema's TypeScript types, so that the suite
    needs no node toolchain; it covers the fields Grafana rejects or silently drops.
    """
    problems: list[str] = []

    def need(condition: bool, message: str) -> None:
        if not condition:
            problems.append(f"{name}: {message}")

    for key, kind in (("uid", str), ("title", str), ("schemaVersion", int), ("panels", list),
                      ("templating", dict), ("time", dict), ("tags", list), ("annotations", dict)):
        need(isinstance(board.get(key), kind), f"top-level {key!r} must be a {kind.__name__}")
    if problems:
        return problems
    need(0 < len(board["uid"]) <= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", board["uid"]) is not None,
         f"uid {board['uid']!r} must be 1-40 characters of [A-Za-z0-9_-]")
    need(board["schemaVersion"] >= 36, "schemaVersion must be >= 36 (data source references by uid)")
    need({"from", "to"} <= set(board["time"]), "time needs 'from' and 'to'")
    variables = {v.get("name") for v in board["templating"].get("list", [])}
    for variable in board["templating"].get("list", []):
        need(bool(variable.get("name")) and variable.get("type") in {"datasource", "query", "custom", "constant",
                                                                       "interval", "textbox", "adhoc"},
             f"variable {variable.get('name')!r} needs a name and a known type")
    ids: set[int] = set()
    for panel in panels(board):
        title = panel.get("title", "?")
        need(isinstance(panel.get("id"), int) and panel["id"] not in ids, f"panel {title!r}: id missing or repeated")
        ids.add(panel.get("id"))
        need(panel.get("type") in PANEL_TYPES, f"panel {title!r}: unknown type {panel.get('type')!r}")
        grid = panel.get("gridPos", {})
        need(all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")), f"panel {title!r}: gridPos h/w/x/y")
        need(0 < grid.get("w", 0) and grid.get("x", 0) + grid.get("w", 0) <= 24,
             f"panel {title!r}: gridPos must fit the 24-column grid")
        if panel.get("type") == "row":
            continue
        need(bool(panel.get("description")), f"panel {title!r}: description (shown as the panel's help) missing")
        need(panel.get("datasource", {}).get("type") == "prometheus", f"panel {title!r}: datasource type prometheus")
        targets = panel.get("targets", [])
        need(bool(targets), f"panel {title!r}: no targets")
        ref_ids = [t.get("refId") for t in targets]
        need(len(set(ref_ids)) == len(ref_ids) and all(ref_ids), f"panel {title!r}: refIds missing or repeated")
        for target in targets:
            need(bool(target.get("expr")), f"panel {title!r}: target {target.get('refId')} has no expr")
            used = set(VARIABLE.findall(json.dumps(target)))
            unknown = used - variables - GRAFANA_BUILTINS
            need(not unknown, f"panel {title!r}: undefined variables {sorted(unknown)}")
    return problems
