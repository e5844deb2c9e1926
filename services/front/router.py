"""The routing pipeline, apart from the ext_proc protocol: parse → admit → fan out → merge → rewrite, each once.

`Router.route` is what the ext_proc processor calls for a chat body (or, through its translator in
services/front/apis, a Responses or Anthropic body) and what the HTTP API's dry run calls; both get a
`Routed`: the typed outcome, what each service answered, and the body to send on. Tool auto-selection
(tool_selection.py) runs alongside the fan-out and trims the outgoing body's tools.
Where to change things: the merge order is `merge.py`, the body rewrite `body_rewrite.py`, deadlines
and admission `admission.py`, the service calls `mesh_clients.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import SAFETY_HARM_CATEGORIES, FailureMode, SwitchyardConfig
from services.front.admission import Admission, Admitted
from services.front.apis import CHAT, RESPONSES, ApiTranslator
from services.front.chat_request import ChatRequest, RequestError, dumps
from services.front.conversations import ConversationPins
from services.front.masking import MaskingError, MaskMapping
from services.front.merge import SAFETY_ACTION_LABELS, Outcome, OutcomeKind, merge, pii_blocked_reply, safety_route
from services.front.mesh_clients import MeshClients, ServiceCall
from services.front.metrics import FrontMetrics
from services.front.requested_model import check_requested_model
from services.front.service_names import Service
from services.front.tool_selection import ToolSelection, ToolSelector
from switchyard.v1 import common_pb2, guard_pb2

log = logging.getLogger("switchyard.front")


@dataclass
class Routed:
    """The routing verdict for one request body, and what the backend gets if it goes upstream."""

    outcome: Outcome
    calls: dict[str, ServiceCall]
    request: ChatRequest | None = None
    context: common_pb2.RequestContext | None = None
    # The rewritten body (upstream only) and the backend that serves the chosen model.
    body: bytes | None = None
    backend: str = ""
    # Placeholder -> JSON-escaped original value, when the outgoing body was masked.
    unmask: MaskMapping | None = None


def model_label(config: SwitchyardConfig, model: str) -> str:
    """A model name fit for a metric label: configured names and aliases as they are, anything else "other"
    (a client-sent name must never become a label value)."""
    routing = config.routing
    return model if model in routing.models or model in routing.aliases else "other"


def cache_directives(headers: Mapping[str, str]) -> list[str]:
    directives: list[str] = []
    for name in ("cache-control", "x-vsr-cache-control"):
        value = headers.get(name, "")
        directives += [d.strip().lower() for d in value.split(",") if d.strip()]
    return directives


class Router:
    """One per front process: the service clients, the metrics and the admission control it shares."""

    def __init__(self, clients: MeshClients, metrics: FrontMetrics, admission: Admission) -> None:
        self.clients = clients
        self.metrics = metrics
        self.admission = admission
        self.tools = ToolSelector(metrics.registry)
        # Responses API conversations: the model that answered each response id (previous_response_id).
        self.conversations = ConversationPins()

    async def route(self, config: SwitchyardConfig, raw: bytes, headers: Mapping[str, str],
                    dry_run: bool = False, api: ApiTranslator = CHAT) -> Routed:
        """Route one body of `api` (chat completions by default) under one config snapshot; RequestError for
        input the router refuses.

        `headers` are the request's, lower-cased. `dry_run` (the HTTP API) leaves the traffic metrics alone.
        """
        started = time.perf_counter()
        if len(raw) > config.front.max_body_bytes:
            raise RequestError(413, f"the request body is {len(raw)} bytes; the limit is "
                               f"{config.front.max_body_bytes} (front.max_body_bytes)", "request_too_large")
        request = api.parse(raw)
        self._pin_conversation(config, request)
        try:
            # Before any service is asked: what is accepted must not depend on a service being up.
            check_requested_model(config, request.model)
        except RequestError as exc:
            # A routing verdict (as a service's rejection would be), so the dry run reports it too.
            if not dry_run:
                self.metrics.errors.labels(exc.code).inc()
            outcome = Outcome(OutcomeKind.ERROR, reply=api.error_reply(exc))
            return Routed(outcome, {s.value: ServiceCall(s.value, failure="not_called") for s in Service}, request)
        context = request.to_context(
            request_id=headers.get("x-request-id", ""),
            tenant=headers.get(config.front.tenant_header.lower(), ""),
            cache_directives=cache_directives(headers),
            traceparent=headers.get("traceparent", ""),
        )
        admitted = self.admission.admit(self.admission.work_of(m.text for m in request.messages))
        self._observe_admission()
        # Alongside the three services: which of the request's tools go on (tool_selection.py).
        selecting = asyncio.create_task(self.tools.select(config, request))
        try:
            calls = await self._fan_out(context, admitted,
                                        stop_without_guard=config.guard.on_failure is FailureMode.CLOSED)
        finally:
            self.admission.release(admitted)
            self._observe_admission()
        outcome = merge(config, request, calls["decision"], calls["guard"], calls["cache"])
        selection = await self._selection(selecting, outcome)
        if not dry_run:
            self.metrics.routing_latency.observe(time.perf_counter() - started)
        routed = self._rewrite(config, request, outcome, calls, selection)
        routed.context = context
        if not dry_run:
            self._count(config, request, routed.outcome, calls)
            if selection is not None and routed.outcome.kind is OutcomeKind.UPSTREAM:
                self.tools.record(selection)
        return routed

    def _pin_conversation(self, config: SwitchyardConfig, request: ChatRequest) -> None:
        """A Responses API follow-up (previous_response_id) for an alias goes to the model that answered the
        response it continues: the backend holds that conversation, and its answer must not change voice."""
        previous = request.body.get("previous_response_id") if request.api is RESPONSES else None
        if not previous or request.model not in config.routing.aliases:
            return
        model = self.conversations.model_for(previous)
        if model is not None and model in config.routing.models:
            # From here on it is a request for that model: decision passes it through, policy still applies.
            request.model = model

    @staticmethod
    async def _selection(selecting: asyncio.Task[ToolSelection | None], outcome: Outcome) -> ToolSelection | None:
        if outcome.kind is not OutcomeKind.UPSTREAM:
            selecting.cancel()
            return None
        try:
            return await selecting
        except Exception:  # noqa: BLE001 - a selection that fails keeps every tool
            log.exception("tool selection raised; every tool is kept")
            return None

    def _rewrite(self, config: SwitchyardConfig, request: ChatRequest, outcome: Outcome,
                 calls: dict[str, ServiceCall], selection: ToolSelection | None = None) -> Routed:
        if outcome.reply is not None or outcome.route is None:
            return Routed(outcome, calls, request)
        outgoing = request.body
        unmask: MaskMapping | None = None
        if outcome.mask_entities:
            # Before the rewrite: entity offsets refer to the messages as the client sent them.
            try:
                outgoing, mapping = api_of(request).mask(request, outgoing, outcome.mask_entities,
                                                         set(config.guard.pii.mask_types))
            except MaskingError:
                # Spans that do not fit the body: never send the text unmasked.
                log.warning("masking failed; the request is blocked instead")
                types = sorted({e.type for e in outcome.mask_entities})
                blocked = Outcome(OutcomeKind.BLOCKED, reply=pii_blocked_reply(config, request, types),
                                  degraded=outcome.degraded, block_reason="pii", unverified=outcome.unverified)
                return Routed(blocked, calls, request)
            unmask = _json_escaped(mapping)
        api = api_of(request)
        if selection is not None:
            outgoing = selection.apply(api, outgoing)
            outcome.headers = [*outcome.headers, selection.header]
        # A safety route sets the model only: decision's system prompt and reasoning were for its own choice.
        body = dumps(api.rewrite(outgoing, outcome.route, config.routing,
                                 decided(calls) and not safety_route(calls["guard"].result)))
        return Routed(outcome, calls, request, body=body, backend=config.backend_for(outcome.route.model).name,
                      unmask=unmask)

    def _observe_admission(self) -> None:
        self.metrics.inflight_requests.set(self.admission.inflight_requests)
        self.metrics.inflight_work.set(self.admission.inflight_work)

    async def _fan_out(self, context: common_pb2.RequestContext, admitted: Admitted,
                       stop_without_guard: bool = True) -> dict[str, ServiceCall]:
        """Ask the three services at once, each under its deadline. A guard block cancels the calls still
        out, and so does a guard failure when the request will be refused for it (`stop_without_guard`):
        no Triton work is spent on an answer nobody will get — which also lets a Triton that stalled
        catch up, instead of fail-open services piling work on it."""
        clients = self.clients
        deadlines = admitted.deadlines_s
        started = time.perf_counter()
        tasks = {
            asyncio.create_task(clients.check(context, deadlines[Service.GUARD])): "guard",
            asyncio.create_task(clients.decide(context, deadlines[Service.DECISION])): "decision",
            asyncio.create_task(clients.lookup(context, deadlines[Service.CACHE])): "cache",
        }
        calls: dict[str, ServiceCall] = {}
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    call = task.result()
                    calls[tasks[task]] = call
                    self.metrics.service_latency.labels(tasks[task]).observe(time.perf_counter() - started)
                guard = calls.get("guard")
                blocked = guard is not None and guard.result is not None and (
                    guard.result.jailbreak or guard.result.blocking_pii_types
                    or guard.result.safety.action == guard_pb2.SAFETY_ACTION_BLOCK)
                refused = guard is not None and stop_without_guard and guard.failed and guard.failure != "disabled"
                if blocked or refused:
                    for task in pending:
                        task.cancel()
                        calls[tasks[task]] = ServiceCall(tasks[task], failure="cancelled")
                    pending = set()
        finally:
            for task in pending:
                task.cancel()
        return calls

    def _count(self, config: SwitchyardConfig, request: ChatRequest, outcome: Outcome,
               calls: dict[str, ServiceCall]) -> None:
        metrics = self.metrics
        metrics.requests.labels("degraded" if outcome.degraded and outcome.kind is OutcomeKind.UPSTREAM
                                else outcome.kind.value).inc()
        for call in calls.values():
            if call.failed and call.failure not in ("disabled", "cancelled"):
                metrics.degraded.labels(call.service, call.failure).inc()
        if outcome.unverified and outcome.kind is not OutcomeKind.ERROR:
            metrics.unverified.labels(outcome.unverified).inc()
        if outcome.route is not None and outcome.kind is OutcomeKind.UPSTREAM:
            metrics.model_requests.labels(model_label(config, outcome.route.model)).inc()
            if outcome.route.model != request.model:
                metrics.routing_modifications.labels(model_label(config, request.model),
                                                     model_label(config, outcome.route.model)).inc()
        if outcome.kind is OutcomeKind.BLOCKED and outcome.block_reason:
            metrics.blocks.labels(outcome.block_reason).inc()
        action = pii_action(outcome, calls)
        if action:
            metrics.pii_actions.labels(action).inc()
        guard = calls["guard"].result
        if guard is not None and guard.has_opinion and guard.safety.category in SAFETY_HARM_CATEGORIES:
            metrics.safety_actions.labels(guard.safety.category, SAFETY_ACTION_LABELS[guard.safety.action]).inc()


def api_of(request: ChatRequest) -> ApiTranslator:
    return request.api if request.api is not None else CHAT


def decided(calls: dict[str, ServiceCall]) -> bool:
    """Did decision give an opinion with candidates (else the default model or the requested one)?"""
    decision = calls["decision"].result
    return bool(decision is not None and decision.has_opinion and decision.candidates)


def pii_action(outcome: Outcome, calls: dict[str, ServiceCall]) -> str:
    """What the router did with a request in which the guard found PII: allow, mask, reroute, block ("" = none)."""
    guard = calls["guard"].result
    if guard is None or not guard.has_opinion or not guard.pii or outcome.block_reason in ("jailbreak", "safety"):
        return ""
    if outcome.block_reason == "pii":
        return "block"
    if outcome.mask_entities:
        return "mask"
    decision = calls["decision"].result
    first = safety_route(guard) or (decision.candidates[0].model if decided(calls) and decision is not None else None)
    if outcome.route is not None and first is not None and outcome.route.model != first:
        return "reroute"
    return "allow"


def _json_escaped(mapping: MaskMapping) -> MaskMapping:
    # Placeholders sit inside JSON strings of the answer, so the values must go back JSON-escaped.
    return MaskMapping({p: json.dumps(mapping.original(p), ensure_ascii=False)[1:-1] for p in mapping.placeholders})


