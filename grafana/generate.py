"""Writes grafana/dashboards/*.json from the panel lists below (run after editing; a test checks they match).

Dashboards are plain Grafana JSON (schemaVersion 39) so that file provisioning, the Helm chart's
ConfigMaps and a manual "Import" all take them as they are. Every query reads one Prometheus data
source chosen by the `datasource` variable; scrape jobs are named switchyard-{front,decision,guard,
cache} and triton (see grafana/prometheus.local.yml).

    .venv/bin/python grafana/generate.py
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
JOBS = 'job=~"switchyard-.*|triton"'
WIDTH = 24


@dataclass
class Panel:
    title: str
    description: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 8
    height: int = 8
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class Row:
    title: str
    panels: list[Panel]


def quantiles(metric: str, by: str = "", selector: str = "", qs: tuple[float, ...] = (0.5, 0.95, 0.99),
              legend_prefix: str = "") -> list[tuple[str, str]]:
    group = f"le, {by}" if by else "le"
    label = f"{{{{{by}}}}} " if by else legend_prefix
    return [(f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{selector}[{RATE}])))",
             f"{label}p{round(q * 100)}") for q in qs]


def rate(metric: str, by: str = "", selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{selector}[{RATE}]))" if by else f"sum(rate({metric}{selector}[{RATE}]))"


OVERVIEW = [
    Row("Traffic", [
        Panel("Requests by outcome", "Chat requests per second by what the router did: routed upstream, answered "
              "from the cache, blocked, error (a 4xx/5xx the router gave), degraded (routed while a service was "
              "down or late).", [(rate("switchyard_front_requests_total", "outcome"), "{{outcome}}")],
              unit="reqps", width=12, extra={"stack": True}),
        Panel("Request rate", "All chat requests per second through the front.",
              [(rate("switchyard_front_requests_total"), "requests/s")], kind="stat", unit="reqps", width=4),
        Panel("Model distribution", "Share of routed requests per selected model over the dashboard's time range.",
              [("sum by (model) (increase(llm_model_requests_total[$__range]))", "{{model}}")], kind="piechart",
              width=8),
        Panel("Routed requests by model", "Requests per second sent to each backend model.",
              [(rate("llm_model_requests_total", "model"), "{{model}}")], unit="reqps"),
        Panel("Categories", "Requests per second by the domain the classifier chose.",
              [(rate("llm_category_classifications_total", "category"), "{{category}}")], unit="reqps"),
        Panel("Reasoning on/off", "Routing decisions per second with reasoning enabled (true) or not (false).",
              [(rate("llm_reasoning_decisions_total", "enabled"), "reasoning={{enabled}}")], unit="reqps"),
    ]),
    Row("Latency", [
        Panel("Routing latency (front total)", "Time from the request body to the routing verdict in the front "
              "(fan-out to the three services plus the merge): p50, p95, p99.",
              quantiles("switchyard_front_routing_latency_seconds"), unit="s"),
        Panel("Service latency seen by the front (p99)", "p99 of each service call from the front, including "
              "network and queueing; the deadline cuts it off.",
              quantiles("switchyard_front_service_latency_seconds", "service", qs=(0.99,)), unit="s"),
        Panel("Classifier (Triton call) latency (p95)", "p95 time of each classifier per request: domain (decision), "
              "jailbreak, pii_tagger, pii_patterns (guard).",
              quantiles("llm_classifier_latency_seconds", "classifier", qs=(0.95,)), unit="s"),
        Panel("Cache lookup latency (p95)", "p95 of the cache lookup by stage: embed (a Triton call), search "
              "(vector store), total.", quantiles("switchyard_cache_lookup_seconds", "stage", qs=(0.95,)), unit="s"),
        Panel("Triton mean request time by model", "Server-side mean time per successful inference request "
              "(queue + compute), from Triton's own metrics.",
              [("sum by (model) (rate(nv_inference_request_duration_us[$__rate_interval])) / 1e6 / "
                "sum by (model) (rate(nv_inference_request_success[$__rate_interval]))", "{{model}}")], unit="s"),
    ]),
    Row("Cache", [
        Panel("Cache hit rate", "Lookups that found an answer / all lookups.",
              [(f"{rate('llm_cache_hits_total')} / ({rate('llm_cache_hits_total')} + "
                f"{rate('llm_cache_misses_total')})", "hit rate")], kind="stat", unit="percentunit", width=6),
        Panel("Cache entries", "Entries in the cache collection now.",
              [("sum(switchyard_cache_entries)", "entries")], kind="stat", width=6),
        Panel("Cache evictions and write drops", "Entries evicted to stay under max_entries, and answers not "
              "stored because a write queue was full (front: writes in flight; cache: its write worker).",
              [(rate("switchyard_cache_evictions_total"), "evictions"),
               (rate("switchyard_cache_write_drops_total"), "dropped (cache queue)"),
               (rate("switchyard_front_cache_write_drops_total"), "dropped (front in flight)")],
              unit="ops", width=12),
    ]),
    Row("Protection", [
        Panel("Blocked requests by reason", "Requests the router answered itself as blocked: jailbreak / prompt "
              "injection, or PII that no allowed model may see.",
              [(rate("switchyard_front_blocks_total", "reason"), "{{reason}}")], unit="reqps", width=6),
        Panel("Jailbreak detections (guard)", "Requests the guard marked as jailbreak / prompt injection.",
              [(rate("switchyard_guard_jailbreak_blocks_total"), "jailbreak")], unit="reqps", width=6),
        Panel("PII found by type", "Checked requests in which PII of each type was found (types, never values).",
              [(rate("llm_pii_violations_total", "pii_type"), "{{pii_type}}")], unit="reqps", width=6),
        Panel("PII actions", "What the router did with requests that carried PII: allow, mask (placeholders "
              "sent, answers unmasked), reroute (to a model whose policy allows it), block.",
              [(rate("switchyard_front_pii_actions_total", "action"), "{{action}}")], unit="reqps", width=6),
    ]),
    Row("Health", [
        Panel("Services up", "1 when Prometheus can scrape the process, 0 when it cannot.",
              [(f"up{{{JOBS}}}", "{{job}}")], kind="stat", width=8),
        Panel("Degraded requests by service", "Requests that went on without a service (fail-open) or were "
              "refused (fail-closed), by service and reason (timeout, unavailable, error).",
              [(rate("switchyard_front_degraded_total", "service, reason"), "{{service}} {{reason}}")],
              unit="reqps"),
        Panel("Errors by reason", "Requests the router answered with an error (invalid_json, missing_messages, "
              "request_too_large, internal, ...).",
              [(rate("switchyard_front_errors_total", "reason"), "{{reason}}")], unit="reqps"),
    ]),
    Row("Admission and guard coverage", [
        Panel("Refused at admission", "Requests refused before any work: router_overloaded (429 + Retry-After: "
              "the routing work in flight is at its bound) and prompt_too_long (400: the prompt alone cannot be "
              "checked within front.max_routing_ms).",
              [(rate("switchyard_front_admission_rejections_total", "reason"), "{{reason}}")], unit="reqps",
              width=6),
        Panel("Routing work in flight", "Routed requests in flight and their work in token-equivalents (what the "
              "deadlines and the admission bound are computed from).",
              [("sum(switchyard_front_inflight_requests)", "requests"),
               ("sum(switchyard_front_inflight_work_tokens)", "tokens of work")], width=6),
        Panel("Unverified requests (guard)", "Requests that reached a model without a guard verdict, by why "
              "(timeout, unavailable, circuit_open, disabled, no_opinion). Only possible with guard.on_failure: open "
              "or the guard disabled; 0 with the defaults.",
              [(rate("switchyard_front_unverified_total", "reason"), "{{reason}}")], unit="reqps", width=6),
        Panel("Circuit breakers", "Per service as the front sees it: 0 closed (calls go out), 1 half-open (one "
              "probe), 2 open (calls fail fast with the service's failure mode).",
              [("max by (service) (switchyard_front_circuit_state)", "{{service}}")], width=6),
    ]),
    Row("Tokens", [
        Panel("Tokens by model", "Prompt and completion tokens per second per model, from the backends' usage.",
              [(rate("llm_model_prompt_tokens_total", "model"), "{{model}} prompt"),
               (rate("llm_model_completion_tokens_total", "model"), "{{model}} completion")],
              unit="short", width=16),
        Panel("Tokens in range", "Prompt plus completion tokens over the dashboard's time range.",
              [("sum(increase(llm_model_tokens_total[$__range]))", "tokens")], kind="stat", width=8),
    ]),
]

SERVICE = 'job=~"$job"'
SERVICES = [
    Row("Process ($job)", [
        Panel("Up", "1 when Prometheus can scrape the selected processes.",
              [(f"up{{{SERVICE}}}", "{{job}} {{instance}}")], kind="stat", width=6),
        Panel("CPU", "CPU seconds per second per process.",
              [(f"rate(process_cpu_seconds_total{{{SERVICE}}}[{RATE}])", "{{job}} {{instance}}")],
              unit="percentunit", width=6),
        Panel("Resident memory", "Resident set size per process.",
              [(f"process_resident_memory_bytes{{{SERVICE}}}", "{{job}} {{instance}}")], unit="bytes", width=6),
        Panel("Open file descriptors", "Open fds per process (sockets included).",
              [(f"process_open_fds{{{SERVICE}}}", "{{job}} {{instance}}")], width=6),
    ]),
    Row("Front", [
        Panel("Service call latency", "Each service call as the front sees it: p50 and p99.",
              quantiles("switchyard_front_service_latency_seconds", "service", qs=(0.5, 0.99)), unit="s"),
        Panel("Routing latency", "Fan-out plus merge in the front: p50, p95, p99.",
              quantiles("switchyard_front_routing_latency_seconds"), unit="s"),
        Panel("Degraded by service", "Requests that went on without a service, by service and reason.",
              [(rate("switchyard_front_degraded_total", "service, reason"), "{{service}} {{reason}}")], unit="reqps"),
    ]),
    Row("Decision", [
        Panel("Decisions by source", "How decisions were made: classifier, rule, or a fallback reason.",
              [(rate("switchyard_decision_decisions_total", "source"), "{{source}}")], unit="reqps"),
        Panel("Classifier confidence", "Top category probability: p10, p50, p90 (low = uncertain routing).",
              quantiles("switchyard_decision_confidence", qs=(0.1, 0.5, 0.9)), unit="percentunit"),
        Panel("Domain classifier latency", "The Triton domain_classifier call: p50 and p99.",
              quantiles("llm_classifier_latency_seconds", selector='{classifier="domain"}', qs=(0.5, 0.99)),
              unit="s"),
        Panel("Decision errors", "Decide calls that failed, by reason (unknown_model, classifier_unavailable).",
              [(rate("switchyard_decision_errors_total", "reason"), "{{reason}}")], unit="reqps", width=12),
        Panel("Config reloads", "Hot reloads of the routing config by result (applied, rejected).",
              [("sum by (result) (increase(switchyard_config_reloads_total[$__range]))", "{{result}}")],
              kind="stat", width=12),
    ]),
    Row("Guard", [
        Panel("Checks by outcome", "Guard checks per second: clean, pii, pii_block, jailbreak, safety_block, error.",
              [(rate("switchyard_guard_checks_total", "outcome"), "{{outcome}}")], unit="reqps"),
        Panel("Check latency", "A whole guard check (classifiers run together): p50 and p99.",
              quantiles("switchyard_guard_check_latency_seconds", qs=(0.5, 0.99)), unit="s"),
        Panel("Guard classifier latency (p99)", "p99 per guard classifier: jailbreak, safety, pii_tagger (Triton), "
              "pii_patterns (local).", quantiles("llm_classifier_latency_seconds", "classifier",
                                                 selector='{classifier!="domain"}', qs=(0.99,)), unit="s"),
        Panel("Jailbreak windows per request", "Windows a long prompt is cut into for the jailbreak model (p95).",
              quantiles("switchyard_guard_jailbreak_windows", qs=(0.95,)), width=12),
        Panel("PII found by type", "Requests with PII of each type.",
              [(rate("llm_pii_violations_total", "pii_type"), "{{pii_type}}")], unit="reqps", width=12),
        Panel("Safety by category and action", "Checked requests the safety head put in a harm category, by the "
              "policy's action (block, route, allow); unverified: no safety_classifier in the repository.",
              [(rate("switchyard_guard_safety_total", "category, action", '{category!="none"}'),
                "{{category}} {{action}}")], unit="reqps", width=12),
    ]),
    Row("Cache", [
        Panel("Hits and misses", "Cache lookups per second that found / did not find an answer.",
              [(rate("llm_cache_hits_total"), "hits"), (rate("llm_cache_misses_total"), "misses")], unit="ops"),
        Panel("Lookup latency by stage", "p95 of embed (Triton), search (vector store) and total.",
              quantiles("switchyard_cache_lookup_seconds", "stage", qs=(0.95,)), unit="s"),
        Panel("Writes by result", "Entries the write worker stored or failed to store.",
              [(rate("switchyard_cache_writes_total", "result"), "{{result}}")], unit="ops"),
        Panel("Entries", "Entries in the collection.", [("sum(switchyard_cache_entries)", "entries")], width=6),
        Panel("Evictions and drops", "Evictions to stay under max_entries; store requests dropped (queue full).",
              [(rate("switchyard_cache_evictions_total"), "evictions"),
               (rate("switchyard_cache_write_drops_total"), "write drops")], unit="ops", width=6),
        Panel("Bypasses", "Lookups or stores skipped, by operation and reason (no-store, disabled, ...).",
              [(rate("switchyard_cache_bypasses_total", "operation, reason"), "{{operation}} {{reason}}")],
              unit="ops", width=6),
        Panel("Cache errors", "Lookups that failed, by reason.",
              [(rate("switchyard_cache_errors_total", "reason"), "{{reason}}")], unit="ops", width=6),
    ]),
    Row("Triton", [
        Panel("Inference requests by model", "Successful and failed inference requests per second per model.",
              [(rate("nv_inference_request_success", "model"), "{{model}} ok"),
               (rate("nv_inference_request_failure", "model"), "{{model}} failed")], unit="reqps"),
        Panel("Queue vs compute time by model", "Mean time per request waiting in Triton's queue and computing.",
              [("sum by (model) (rate(nv_inference_queue_duration_us[$__rate_interval])) / 1e6 / "
                "sum by (model) (rate(nv_inference_request_success[$__rate_interval]))", "{{model}} queue"),
               ("sum by (model) (rate(nv_inference_compute_infer_duration_us[$__rate_interval])) / 1e6 / "
                "sum by (model) (rate(nv_inference_request_success[$__rate_interval]))", "{{model}} compute")],
              unit="s"),
        Panel("Batching", "Inferences per model execution (dynamic batching at work when above 1).",
              [("sum by (model) (rate(nv_inference_count[$__rate_interval])) / "
                "sum by (model) (rate(nv_inference_exec_count[$__rate_interval]))", "{{model}}")]),
    ]),
]


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, object]:
    targets = [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i),
                "range": panel.kind == "timeseries", "instant": panel.kind != "timeseries"}
               for i, (expr, legend) in enumerate(panel.exprs)]
    custom: dict[str, object] = {}
    if panel.kind == "timeseries":
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                  "stacking": {"mode": "normal" if panel.extra.get("stack") else "none", "group": "A"}}
    options: dict[str, object] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                  "tooltip": {"mode": "multi", "sort": "desc"}}
    if panel.kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": "area", "textMode": "auto", "orientation": "auto"}
    elif panel.kind == "piechart":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "pieType": "donut", "legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                                                  "values": ["percent"]}}
    return {
        "id": panel_id, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": []},
        "options": options, "targets": targets,
    }


def layout(rows: list[Row]) -> list[dict[str, object]]:
    panels: list[dict[str, object]] = []
    panel_id, y = 1, 0
    for row in rows:
        panels.append({"id": panel_id, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}, "panels": []})
        panel_id, y, x, line_height = panel_id + 1, y + 1, 0, 0
        for panel in row.panels:
            if x + panel.width > WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append(panel_json(panel, panel_id, x, y))
            panel_id, x, line_height = panel_id + 1, x + panel.width, max(line_height, panel.height)
        y += line_height
    return panels


def datasource_variable() -> dict[str, object]:
    return {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "options": [], "regex": "", "includeAll": False, "multi": False}


def job_variable() -> dict[str, object]:
    return {"name": "job", "label": "Service", "type": "query", "datasource": DATASOURCE,
            "definition": 'label_values(up{job=~"switchyard-.*|triton"}, job)',
            "query": {"query": 'label_values(up{job=~"switchyard-.*|triton"}, job)', "refId": "job"},
            "current": {}, "hide": 0, "refresh": 2, "options": [], "regex": "", "sort": 1,
            "includeAll": True, "allValue": "switchyard-.*|triton", "multi": True}


def dashboard(uid: str, title: str, description: str, rows: list[Row],
              variables: list[dict[str, object]]) -> dict[str, object]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["switchyard"],
        "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "timezone": "",
        "timepicker": {}, "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [], "templating": {"list": variables}, "panels": layout(rows),
    }


def build() -> dict[str, dict[str, object]]:
    return {
        "switchyard-overview.json": dashboard(
            "switchyard-overview", "switchyard / Overview",
            "Traffic by outcome, model distribution, latency per stage, cache, blocks, degraded services, tokens.",
            OVERVIEW, [datasource_variable()]),
        "switchyard-services.json": dashboard(
            "switchyard-services", "switchyard / Services",
            "Per service: process health, then the front, decision, guard, cache and Triton in detail.",
            SERVICES, [datasource_variable(), job_variable()]),
    }


def render(board: dict[str, object]) -> str:
    return json.dumps(board, indent=2) + "\n"


def main() -> None:
    DASHBOARDS.mkdir(exist_ok=True)
    for name, board in build().items():
        (DASHBOARDS / name).write_text(render(board))
        print(f"wrote {DASHBOARDS / name}")


if __name__ == "__main__":
    main()
