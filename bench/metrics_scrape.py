"""Prometheus scrapes of front/decision/guard/cache/Triton before and after a run, and the per-stage deltas."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)

# (stage label, service, histogram name, label filter) in the order the report lists them.
HISTOGRAM_STAGES: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("front: routing verdict (parse + fan-out + merge)", "front", "switchyard_front_routing_latency_seconds", {}),
    ("front → decision call", "front", "switchyard_front_service_latency_seconds", {"service": "decision"}),
    ("front → guard call", "front", "switchyard_front_service_latency_seconds", {"service": "guard"}),
    ("front → cache call", "front", "switchyard_front_service_latency_seconds", {"service": "cache"}),
    ("decision: domain classifier (Triton)", "decision", "llm_classifier_latency_seconds", {"classifier": "domain"}),
    ("guard: whole check", "guard", "switchyard_guard_check_latency_seconds", {}),
    ("guard: jailbreak classifier (Triton)", "guard", "llm_classifier_latency_seconds", {"classifier": "jailbreak"}),
    ("guard: PII tagger (Triton)", "guard", "llm_classifier_latency_seconds", {"classifier": "pii_tagger"}),
    ("guard: PII patterns (regex)", "guard", "llm_classifier_latency_seconds", {"classifier": "pii_patterns"}),
    ("cache: embed (Triton)", "cache", "switchyard_cache_lookup_seconds", {"stage": "embed"}),
    ("cache: vector search", "cache", "switchyard_cache_lookup_seconds", {"stage": "search"}),
    ("cache: whole lookup", "cache", "switchyard_cache_lookup_seconds", {"stage": "total"}),
)
# Triton's per-model cumulative counters (microseconds); divided by successful requests they give means.
TRITON_DURATIONS = ("nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                    "nv_inference_compute_output_duration_us")


def scrape(urls: dict[str, str]) -> dict[str, dict[Key, float]]:
    """Every sample of every endpoint; an endpoint that does not answer gives an empty dict."""
    out: dict[str, dict[Key, float]] = {}
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        for name, url in urls.items():
            samples: dict[Key, float] = {}
            try:
                text = client.get(url).text
            except httpx.HTTPError:
                out[name] = samples
                continue
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
            out[name] = samples
    return out


def _delta(before: dict[Key, float], after: dict[Key, float]) -> dict[Key, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _histogram(delta: dict[Key, float], name: str, labels: dict[str, str]) -> dict[str, Any] | None:
    def match(key: Key, suffix: str) -> bool:
        return key[0] == name + suffix and all(dict(key[1]).get(k) == v for k, v in labels.items())

    count = sum(v for k, v in delta.items() if match(k, "_count"))
    if count <= 0:
        return None
    total = sum(v for k, v in delta.items() if match(k, "_sum"))
    buckets: dict[float, float] = {}
    for key, value in delta.items():
        if match(key, "_bucket"):
            le = float(dict(key[1])["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    bounds = sorted(buckets)
    result: dict[str, Any] = {"count": int(count), "mean_ms": round(total / count * 1000, 3)}
    for q in (50, 95, 99):
        result[f"p{q}_ms"] = _quantile(bounds, [buckets[b] for b in bounds], count, q / 100)
    return result


def _quantile(bounds: list[float], cumulative: list[float], count: float, q: float) -> float | None:
    """Linear interpolation inside the bucket that holds the quantile (what histogram_quantile does)."""
    rank = q * count
    lower, below = 0.0, 0.0
    for bound, seen in zip(bounds, cumulative):
        if seen >= rank:
            if bound == float("inf"):
                return round(lower * 1000, 3)  # beyond the last finite bucket: its bound is all we know
            fraction = (rank - below) / (seen - below) if seen > below else 1.0
            return round((lower + (bound - lower) * fraction) * 1000, 3)
        lower, below = bound, seen
    return None


def breakdown(before: dict[str, dict[Key, float]], after: dict[str, dict[Key, float]]) -> dict[str, Any]:
    """Per-stage mean and percentiles from histogram deltas, and Triton's per-model means."""
    deltas = {name: _delta(before.get(name, {}), after.get(name, {})) for name in after}
    stages = []
    for label, service, metric, labels in HISTOGRAM_STAGES:
        found = _histogram(deltas.get(service, {}), metric, labels)
        if found is not None:
            stages.append({"stage": label, **found})
    triton: dict[str, dict[str, float]] = {}
    tdelta = deltas.get("triton", {})
    for (name, labels), value in tdelta.items():
        model = dict(labels).get("model")
        if model is None:
            continue
        row = triton.setdefault(model, {})
        if name == "nv_inference_request_success":
            row["requests"] = row.get("requests", 0) + value
        elif name == "nv_inference_count":
            row["inferences"] = row.get("inferences", 0) + value
        elif name == "nv_inference_exec_count":
            row["executions"] = row.get("executions", 0) + value
        elif name in TRITON_DURATIONS:
            row[name] = row.get(name, 0) + value
    models = {}
    for model, row in sorted(triton.items()):
        requests = row.get("requests", 0)
        if requests <= 0:
            continue
        models[model] = {
            "requests": int(requests),
            "mean_batch": round(row.get("inferences", 0) / max(row.get("executions", 1), 1), 2),
            **{f"{n.removeprefix('nv_inference_').removesuffix('_duration_us')}_mean_ms":
               round(row.get(n, 0) / requests / 1000, 3) for n in TRITON_DURATIONS},
        }
    degraded = {dict(k[1]).get("service", "?") + "/" + dict(k[1]).get("reason", "?"): int(v)
                for k, v in deltas.get("front", {}).items() if k[0] == "switchyard_front_degraded_total" and v > 0}
    return {"stages": stages, "triton_models": models, "front_degraded": degraded}


def degraded_total(sample: dict[str, dict[Key, float]]) -> float:
    """How many requests the front has let through without a service so far (fail-open / fail-closed)."""
    return sum(v for k, v in sample.get("front", {}).items() if k[0] == "switchyard_front_degraded_total")
