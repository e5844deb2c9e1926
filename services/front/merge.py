"""The verdict merge: guard, cache and decision answers become one routing outcome (DESIGN.md order)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from services.common.cache_fingerprint import route_fingerprint
from services.common.config import FailureMode, SwitchyardConfig
from services.front.chat_request import ChatRequest, RequestError
from services.front.mesh_clients import ServiceCall
from services.front.masking import masked_types, routing_types
from services.common.sse import completion_to_sse
from services.front.chat_request import loads
from services.front.replies import SSE, Reply, blocked_reply, error_reply
from switchyard.v1 import cache_pb2, decision_pb2, guard_pb2


@dataclass
class Route:
    """Where a request goes and what the body rewrite must set."""

    model: str
    category: str = ""
    confidence: float = 0.0
    use_reasoning: bool = False
    reasoning_effort: str = ""
    system_prompt: str = ""
    system_prompt_mode: int = decision_pb2.SYSTEM_PROMPT_MODE_REPLACE
    # Why the default model was taken, if it was.
    fallback_reason: str = ""


@dataclass
class OutcomeKind(str, Enum):
    """What the router did with a request (also the `outcome` label of switchyard_front_requests_total)."""

    UPSTREAM = "upstream"
    BLOCKED = "blocked"
    CACHE_HIT = "cache_hit"
    ERROR = "error"


@dataclass
class Outcome:
    """Either a route to a backend or a reply the router gives itself."""

    kind: OutcomeKind
    route: Route | None = None
    reply: Reply | None = None
    degraded: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    # Entities to replace by placeholders in the outgoing body (types in guard.pii.mask_types).
    mask_entities: list[guard_pb2.PiiEntity] = field(default_factory=list)
    # Why the guard did not verify this request ("" = it did): see guard_unverified_reason.
    unverified: str = ""
    # With kind BLOCKED: "jailbreak", "safety" or "pii".
    block_reason: str = ""
    # With kind UPSTREAM: the other candidates the PII policy allows, best first (fallback.py).
    fallbacks: list[Route] = field(default_factory=list)


# Response header on everything that went on without a guard verdict (guard.on_failure: open, or the
# guard disabled): the operator chose that, and the client is told.
GUARD_HEADER = "x-vsr-guard"
UNVERIFIED = "unverified"

BLOCK_MESSAGE_JAILBREAK = (
    "This request was blocked because it looks like an attempt to bypass the assistant's safety "
    "rules (jailbreak or prompt injection). Rephrase the request without those instructions."
)


BLOCK_MESSAGE_SAFETY = (
    "This request was blocked because it asks for content that this service does not provide "
    "({category}). If this is a misunderstanding, rephrase the request."
)
# Response headers of the safety verdict (README, "Safety routing").
SAFETY_CATEGORY_HEADER = "x-vsr-safety-category"
SAFETY_BLOCKED_HEADER = "x-vsr-safety-blocked"
SAFETY_ACTION_LABELS = {guard_pb2.SAFETY_ACTION_NONE: "none", guard_pb2.SAFETY_ACTION_ALLOW: "allow",
                        guard_pb2.SAFETY_ACTION_BLOCK: "block", guard_pb2.SAFETY_ACTION_ROUTE: "route"}
# On everything that went on without a safety verdict (no safety_classifier in the model repository).
SAFETY_HEADER = "x-vsr-safety"


def safety_headers(guard: guard_pb2.CheckResponse | None) -> list[tuple[str, str]]:
    """The safety category of a request the guard put in one (allow and route; block adds its own)."""
    if guard is None or not guard.has_opinion:
        return []
    if guard.safety.state in (guard_pb2.SAFETY_STATE_UNSPECIFIED, guard_pb2.SAFETY_STATE_UNAVAILABLE):
        return [(SAFETY_HEADER, UNVERIFIED)]
    return [(SAFETY_CATEGORY_HEADER, guard.safety.category)] if guard.safety.category else []


def safety_route(guard: guard_pb2.CheckResponse | None) -> str:
    """The model the guard's safety policy sends this request to ("" = none)."""
    if guard is None or not guard.has_opinion or guard.safety.action != guard_pb2.SAFETY_ACTION_ROUTE:
        return ""
    return guard.safety.route_model


def _pii_block_message(types: list[str]) -> str:
    return (f"This request was blocked because it contains personal data ({', '.join(types)}) that no "
            "model configured for it may receive. Remove that information and send it again.")


def merge(config: SwitchyardConfig, request: ChatRequest,
          decision: ServiceCall[decision_pb2.DecideResponse],
          guard: ServiceCall[guard_pb2.CheckResponse],
          cache: ServiceCall[cache_pb2.LookupResponse]) -> Outcome:
    degraded: list[str] = []
    for call in (guard, decision, cache):
        # "cancelled": the guard blocked first and the call was stopped; nothing was degraded.
        if call.failed and call.failure not in ("disabled", "cancelled"):
            section = getattr(config, call.service)
            if section.on_failure is FailureMode.CLOSED:
                retry_after = max(1, math.ceil(call.retry_after_s))
                error = RequestError(503, f"the {call.service} service is unavailable ({call.failure}); the router "
                                     f"does not route requests it has not checked ({call.service}.on_failure: closed)",
                                     f"{call.service}_unavailable", error_type="service_unavailable",
                                     headers=(("retry-after", str(retry_after)),))
                return Outcome(OutcomeKind.ERROR, reply=_error_reply(request, error), degraded=[call.service])
            degraded.append(call.service)
    # Whatever goes on without a guard verdict says so, to the client (header) and in the metrics.
    unverified = guard_unverified_reason(guard)
    marks = [(GUARD_HEADER, UNVERIFIED)] if unverified else []
    outcome = _merge_verdicts(config, request, decision, guard, cache, degraded)
    outcome.headers = [*outcome.headers, *marks]
    outcome.unverified = unverified
    return outcome


def guard_unverified_reason(guard: ServiceCall[guard_pb2.CheckResponse]) -> str:
    """Why the request has no guard verdict ("" when it has one): a failure, "disabled" or "no_opinion"."""
    if guard.failure == "cancelled":
        return ""
    if guard.failed:
        return guard.failure or "error"
    if guard.rejection is not None:
        return ""
    return "" if guard.result is not None and guard.result.has_opinion else "no_opinion"


def _merge_verdicts(config: SwitchyardConfig, request: ChatRequest,
                    decision: ServiceCall[decision_pb2.DecideResponse],
                    guard: ServiceCall[guard_pb2.CheckResponse],
                    cache: ServiceCall[cache_pb2.LookupResponse], degraded: list[str]) -> Outcome:
    if decision.rejection is not None:
        return Outcome(OutcomeKind.ERROR, reply=_error_reply(request, decision.rejection), degraded=degraded)

    # 1. guard block
    verdict = guard.result
    if verdict is not None and verdict.has_opinion:
        if verdict.jailbreak:
            headers = (("x-vsr-jailbreak-blocked", "true"),
                       ("x-vsr-jailbreak-type", verdict.jailbreak_type or "jailbreak"),
                       ("x-vsr-jailbreak-confidence", f"{verdict.jailbreak_score:.3f}"))
            return Outcome(OutcomeKind.BLOCKED, block_reason="jailbreak",
                           reply=_blocked(config, request, BLOCK_MESSAGE_JAILBREAK, headers),
                           degraded=degraded)
        # A blocking identifier first: found by validated patterns, and its answer says what to remove (the
        # safety head, a model's judgement, reads a message carrying one as privacy_surveillance at times).
        if verdict.blocking_pii_types:
            types = sorted(set(verdict.blocking_pii_types))
            return Outcome(OutcomeKind.BLOCKED, block_reason="pii", reply=pii_blocked_reply(config, request, types),
                           degraded=degraded)
        if verdict.safety.action == guard_pb2.SAFETY_ACTION_BLOCK:
            category = verdict.safety.category
            headers = ((SAFETY_CATEGORY_HEADER, category), (SAFETY_BLOCKED_HEADER, "true"))
            message = BLOCK_MESSAGE_SAFETY.format(category=category.replace("_", " "))
            return Outcome(OutcomeKind.BLOCKED, block_reason="safety",
                           reply=_blocked(config, request, message, headers), degraded=degraded)

    # 3. candidates, filtered by the PII each model may see; a safety route replaces decision's choice
    safe_model = safety_route(verdict)
    route_candidates = [Route(model=safe_model, fallback_reason="safety")] if safe_model else \
        _candidates(config, request, decision.result)
    marks = safety_headers(verdict)
    entities = list(verdict.pii) if verdict is not None else []
    mask_types = config.guard.pii.mask_types
    # Masked types never reach the model, so only the rest must be allowed by its pii_policy.
    found_types = routing_types(entities, mask_types)
    allowed = [c for c in route_candidates if _pii_allowed(config, c.model, found_types)]
    if not allowed:
        return Outcome(OutcomeKind.BLOCKED, block_reason="pii", reply=pii_blocked_reply(config, request, found_types),
                       degraded=degraded, headers=marks)
    route = allowed[0]
    masking = [e for e in entities if e.type in masked_types(entities, mask_types)]

    # 2. cache hit for the model the request goes to
    lookup = cache.result
    # Answers to masked requests carry placeholders of another request: never served from or to the cache.
    if lookup is not None and lookup.has_opinion and not masking:
        by_category = config.cache.scope_by == "category"
        for match in lookup.matches:
            # scope_by: category lets MoM traffic share answers across the category's models.
            same_target = (match.category == route.category and bool(route.category)) if by_category \
                else match.model == route.model
            # The stored answer was given under the same injected system prompt and reasoning mode.
            if same_target and match.route_fingerprint == route_key(route):
                return Outcome(OutcomeKind.CACHE_HIT, route=route, degraded=degraded,
                               headers=[("x-vsr-cache-hit", "true"),
                                        ("x-vsr-cache-similarity", f"{match.similarity:.4f}"),
                                        ("x-vsr-cache-check", match.check),
                                        ("x-vsr-selected-model", route.model), *marks],
                               reply=_cached_reply(request, match.body))
    headers = [("x-vsr-pii-masked-types", ",".join(masked_types(entities, mask_types)))] if masking else []
    headers += marks
    if decision.result is not None and decision.result.sticky and not safe_model:
        headers.append(("x-vsr-sticky", decision.result.sticky))
    return Outcome(OutcomeKind.UPSTREAM, route=route, degraded=degraded, mask_entities=masking, headers=headers,
                   fallbacks=allowed[1:])


def route_key(route: Route) -> str:
    """What the router changes in the body for `route`, as the cache stores it with each answer."""
    return route_fingerprint(route.system_prompt, route.system_prompt_mode, route.use_reasoning,
                             route.reasoning_effort)


def _error_reply(request: ChatRequest, error: RequestError,
                 headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    # Another client API (request.api, services/front/apis) answers in its own shape.
    return request.api.error_reply(error, headers) if request.api is not None else error_reply(error, headers)


def _cached_reply(request: ChatRequest, body: bytes) -> Reply:
    stream = request.stream
    if request.api is not None:
        return request.api.cached_reply(body, stream)
    if not stream:
        return Reply(200, body)
    # A streaming client gets the stored answer as the chunk stream a backend would have sent.
    return Reply(200, completion_to_sse(loads(body)), SSE)


def _blocked(config: SwitchyardConfig, request: ChatRequest, message: str,
             headers: tuple[tuple[str, str], ...]) -> Reply:
    if config.front.blocked_response.value == "error":
        error = RequestError(config.front.blocked_status, message, "content_filter",
                             error_type="content_filter")
        return _error_reply(request, error, headers)
    if request.api is not None:
        return request.api.blocked_reply(request.model, message, request.stream, headers)
    return blocked_reply(request.model, message, request.stream, headers)


def pii_blocked_reply(config: SwitchyardConfig, request: ChatRequest, types: list[str]) -> Reply:
    headers = (("x-vsr-pii-violation", "true"), ("x-vsr-pii-types", ",".join(types)))
    return _blocked(config, request, _pii_block_message(types), headers)


def _pii_allowed(config: SwitchyardConfig, model: str, types: list[str]) -> bool:
    if not types:
        return True
    settings = config.routing.models.get(model)
    if settings is None:
        # A model this config does not know (unknown_model: passthrough) has no policy: it gets no PII.
        return False
    policy = settings.pii_policy
    if policy.allow_by_default:
        return True
    return all(t in policy.pii_types_allowed for t in types)


def _candidates(config: SwitchyardConfig, request: ChatRequest,
                decision: decision_pb2.DecideResponse | None) -> list[Route]:
    if decision is not None and decision.has_opinion and decision.candidates:
        return [Route(model=c.model, category=decision.category, confidence=decision.confidence,
                      use_reasoning=c.use_reasoning, reasoning_effort=c.reasoning_effort,
                      system_prompt=decision.system_prompt,
                      system_prompt_mode=decision.system_prompt_mode or decision_pb2.SYSTEM_PROMPT_MODE_REPLACE,
                      fallback_reason=decision.fallback_reason)
                for c in decision.candidates]
    # No opinion (or no decision at all): a concrete model passes through, an alias gets the default.
    if request.model not in config.routing.aliases:
        return [Route(model=request.model, fallback_reason="requested")]
    return [Route(model=config.routing.default_model, fallback_reason="no_decision")]
