"""Reads the vLLM Semantic Router's classic config.yaml into switchyard's config layout."""

from __future__ import annotations

from typing import Any

# Top-level keys of the classic format that switchyard reads; any of these marks a classic file.
CLASSIC_MARKERS = ("vllm_endpoints", "model_config", "categories", "default_model")
# Keys that configure the upstream router's own model files or features switchyard does not have;
# they are accepted and ignored (reported as notes), so that an upstream file loads unchanged.
IGNORED_KEYS = ("bert_model", "tools", "api", "observability", "router", "embedding_models", "keyword_rules",
                "vector_store", "decisions", "intelligent_routing", "response_api", "classifier_models")


def is_classic(data: dict[str, Any]) -> bool:
    return "routing" not in data and any(key in data for key in CLASSIC_MARKERS)


def convert_classic(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The same settings in switchyard's layout, plus notes on what was ignored."""
    notes: list[str] = []
    endpoints = data.get("vllm_endpoints") or []
    backends = [{"name": str(e.get("name")), "address": str(e.get("address", "127.0.0.1")),
                 "port": int(e.get("port", 8000))} for e in endpoints if isinstance(e, dict)]
    model_config: dict[str, Any] = data.get("model_config") or {}
    categories_in = data.get("categories") or []

    referenced = [str(data["default_model"])] if data.get("default_model") else []
    for category in categories_in:
        for score in (category.get("model_scores") or []) if isinstance(category, dict) else []:
            referenced.append(str(score.get("model")))
    models: dict[str, Any] = {}
    for name in [*model_config, *referenced]:
        if name in models:
            continue
        settings = model_config.get(name) or {}
        model: dict[str, Any] = {}
        preferred = settings.get("preferred_endpoints") or []
        if preferred:
            model["backend"] = str(preferred[0])
            if len(preferred) > 1:
                notes.append(f"model_config.{name}.preferred_endpoints: only the first ({preferred[0]}) is used")
        elif len(backends) > 1:
            model["backend"] = backends[0]["name"]
        if settings.get("reasoning_family"):
            model["reasoning_family"] = settings["reasoning_family"]
        if isinstance(settings.get("pii_policy"), dict):
            policy = settings["pii_policy"]
            model["pii_policy"] = {k: policy[k] for k in ("allow_by_default", "pii_types_allowed") if k in policy}
        models[name] = model

    categories = []
    for category in categories_in:
        if not isinstance(category, dict):
            categories.append(category)  # let validation name the problem
            continue
        out: dict[str, Any] = {"name": category.get("name"), "model_scores": []}
        if category.get("description"):
            out["description"] = category["description"]
        if category.get("system_prompt"):
            out["system_prompt"] = category["system_prompt"]
        for score in category.get("model_scores") or []:
            entry = {k: score[k] for k in ("model", "score", "use_reasoning", "reasoning_effort") if k in score}
            out["model_scores"].append(entry)
        categories.append(out)

    routing: dict[str, Any] = {"models": models, "categories": categories}
    for key in ("default_model", "reasoning_families", "default_reasoning_effort"):
        if key in data:
            routing[key] = data[key]
    category_model = ((data.get("classifier") or {}).get("category_model") or {})
    if "threshold" in category_model:
        routing["confidence_threshold"] = category_model["threshold"]

    converted: dict[str, Any] = {"routing": routing}
    if backends:
        converted["backends"] = backends
    converted.update(_guard(data))
    cache = _cache(data.get("semantic_cache"), notes)
    if cache:
        converted["cache"] = cache
    for key in data:
        if key in IGNORED_KEYS or key == "classifier":
            notes.append(f"{key}: not used by switchyard (its models are served by Triton), ignored")
        elif key not in (*CLASSIC_MARKERS, "reasoning_families", "default_reasoning_effort", "prompt_guard",
                         "semantic_cache"):
            # Unknown classic keys stay in, so that validation reports them like any unknown key.
            converted[key] = data[key]
    return converted, notes


def _guard(data: dict[str, Any]) -> dict[str, Any]:
    guard: dict[str, Any] = {}
    prompt_guard = data.get("prompt_guard") or {}
    if prompt_guard:
        jailbreak = {k: prompt_guard[k] for k in ("enabled", "threshold") if k in prompt_guard}
        if jailbreak:
            guard["jailbreak"] = jailbreak
    pii_model = ((data.get("classifier") or {}).get("pii_model") or {})
    if "threshold" in pii_model:
        guard["pii"] = {"threshold": pii_model["threshold"]}
    return {"guard": {"port": 50062, "metrics_port": 9192, **guard}} if guard else {}


def _cache(section: Any, notes: list[str]) -> dict[str, Any]:
    if not isinstance(section, dict):
        return {}
    cache: dict[str, Any] = {"port": 50063, "metrics_port": 9193}
    if "enabled" in section:
        cache["enabled"] = bool(section["enabled"])
    mapping = {"similarity_threshold": "similarity_threshold", "max_entries": "max_entries", "ttl_seconds": "ttl_s"}
    for classic, ours in mapping.items():
        if classic in section:
            cache[ours] = section[classic]
    policy = section.get("eviction_policy")
    if policy in ("lru", "fifo"):
        cache["eviction"] = policy
    elif policy is not None:
        notes.append(f"semantic_cache.eviction_policy: {policy!r} is not supported, using lru")
    if section.get("backend_type") not in (None, "memory", "qdrant", "milvus"):
        notes.append(f"semantic_cache.backend_type: {section['backend_type']!r} ignored; switchyard uses Qdrant")
    return cache
