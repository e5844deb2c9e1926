"""Prometheus metrics of the front (names follow the vLLM Semantic Router where they mean the same)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class FrontMetrics:
    """Every metric the front exports, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("switchyard_front_requests", "Chat requests by outcome.",
                                ["outcome"], registry=r)
        self.model_requests = Counter("llm_model_requests", "Requests routed to each model.",
                                      ["model"], registry=r)
        self.routing_modifications = Counter(
            "llm_model_routing_modifications", "Requests whose model the router changed.",
            ["source_model", "target_model"], registry=r)
        self.degraded = Counter("switchyard_front_degraded", "Requests that went on without a service.",
                                ["service", "reason"], registry=r)
        self.errors = Counter("switchyard_front_errors", "Requests answered with an error, by reason.",
                              ["reason"], registry=r)
        self.routing_latency = Histogram("switchyard_front_routing_latency_seconds",
                                         "Time from the request body to the routing verdict.",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.service_latency = Histogram("switchyard_front_service_latency_seconds",
                                         "Latency of each service call as seen by the front.",
                                         ["service"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("llm_model_prompt_tokens", "Prompt tokens by model (from usage).",
                                     ["model"], registry=r)
        self.cache_write_drops = Counter("switchyard_front_cache_write_drops",
                                         "Cache writes dropped because too many were in flight.", registry=r)
        self.completion_tokens = Counter("llm_model_completion_tokens",
                                         "Completion tokens by model (from usage).", ["model"], registry=r)
        # vLLM Semantic Router dashboards chart total tokens from this one.
        self.tokens = Counter("llm_model_tokens", "Prompt plus completion tokens by model (from usage).",
                              ["model"], registry=r)
        self.blocks = Counter("switchyard_front_blocks", "Requests the router answered itself as blocked, "
                              "by reason (jailbreak, safety, pii).", ["reason"], registry=r)
        self.safety_actions = Counter(
            "switchyard_front_safety_actions", "Routed requests the guard put in a safety category, by category and "
            "the policy's action (block, route, allow).", ["category", "action"], registry=r)
        self.pii_actions = Counter("switchyard_front_pii_actions", "Requests in which the guard found PII, by "
                                   "what the router did (allow, mask, reroute, block).", ["action"], registry=r)
        self.admission_rejections = Counter(
            "switchyard_front_admission_rejections", "Requests refused before any work: router_overloaded (429) "
            "or prompt_too_long (400).", ["reason"], registry=r)
        self.inflight_requests = Gauge("switchyard_front_inflight_requests", "Routed requests in flight.",
                                       registry=r)
        self.inflight_work = Gauge("switchyard_front_inflight_work_tokens",
                                   "Routing work in flight, in token-equivalents (admission control).", registry=r)
        self.unverified = Counter(
            "switchyard_front_unverified", "Requests that went on without a guard verdict (guard.on_failure: "
            "open or the guard disabled), by why: timeout, unavailable, error, circuit_open, disabled, no_opinion.",
            ["reason"], registry=r)
        self.fallbacks = Counter(
            "switchyard_front_fallbacks", "Backend attempts that went to the next candidate (routing.fallback), by "
            "the model that failed, the one tried next and why: timeout (per-try) or error (refused, reset, 5xx).",
            ["from_model", "to_model", "reason"], registry=r)
        self.backend_failures = Counter(
            "switchyard_front_backend_failures", "Backend attempts answered 502/503/504, by model and status.",
            ["model", "status"], registry=r)
        self.asyncio_tasks = Gauge("switchyard_front_asyncio_tasks",
                                   "asyncio tasks alive in the front (a leak shows as growth; see make soak).",
                                   registry=r)
        self.circuit_state = Gauge("switchyard_front_circuit_state",
                                   "Circuit breaker per service: 0 closed, 1 half-open, 2 open.", ["service"],
                                   registry=r)
