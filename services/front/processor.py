"""One RequestProcessor per ext_proc stream (one HTTP request), with one method per processing phase."""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2 as core
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.type.v3 import http_status_pb2

from services.common.config import SwitchyardConfig
from services.common.pii_masking import MaskingError, MaskMapping, StreamUnmasker, mask_body, unmask_text
from services.common.sse import cacheable, reassemble_sse
from services.front.admission import Admission, Admitted, Overloaded
from services.front.body_rewrite import rewrite_body
from services.front.chat_request import ChatRequest, RequestError, dumps, loads, parse_chat_request
from services.front.merge import Outcome, merge, pii_blocked_reply, route_key
from services.front.mesh_clients import MeshClients, ServiceCall
from services.front.metrics import FrontMetrics
from services.front.replies import Reply, error_reply, models_reply
from services.front.requested_model import check_requested_model
from services.front.service_names import Service
from switchyard.v1 import cache_pb2, common_pb2

log = logging.getLogger("switchyard.front")

CHAT_PATHS = frozenset({"/v1/chat/completions"})
MODELS_PATH = "/v1/models"
# Routing header Envoy's route table matches on.
SELECTED_MODEL_HEADER = "x-selected-model"
SERVICES = ("guard", "decision", "cache")


@dataclass
class FrontContext:
    """What every processor shares: the config, the service clients and the metrics."""

    config: SwitchyardConfig
    clients: MeshClients
    metrics: FrontMetrics
    # Cache writes in flight; past `config.cache.write_queue_size` new ones are dropped (and counted).
    pending_writes: set[asyncio.Task[Any]] = field(default_factory=set)
    # Routing work in flight, shared by every stream of this process (None: made from the config).
    admission: Admission = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.admission is None:
            self.admission = Admission(self.config)


def header_option(key: str, value: str) -> core.HeaderValueOption:
    return core.HeaderValueOption(
        header=core.HeaderValue(key=key, raw_value=value.encode()),
        append_action=core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def immediate(reply: Reply, extra_headers: list[tuple[str, str]] = ()) -> ep.ProcessingResponse:  # type: ignore[assignment]
    headers = [("content-type", reply.content_type), *reply.headers, *extra_headers]
    return ep.ProcessingResponse(immediate_response=ep.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=reply.status),
        headers=ep.HeaderMutation(set_headers=[header_option(k, v) for k, v in headers]),
        body=reply.body,
    ))


@dataclass
class Routed:
    """The routing verdict for one request body, and the body that goes to the backend."""

    outcome: Outcome
    calls: dict[str, ServiceCall]
    body: bytes | None = None


class RequestProcessor:
    """Processes one HTTP request; state between phases lives on this object."""

    def __init__(self, context: FrontContext) -> None:
        self.context = context
        self.config = context.config
        self.metrics = context.metrics
        self.request_headers: dict[str, str] = {}
        self.request: ChatRequest | None = None
        self.outcome: Outcome | None = None
        self.streaming_response = False
        self.response_status = 0
        self.context_message: common_pb2.RequestContext | None = None
        self._response_chunks: list[bytes] = []
        self._response_bytes = 0
        # Placeholder -> JSON-escaped original value, when the outgoing body was masked.
        self._unmask: MaskMapping | None = None
        self._stream_unmasker: StreamUnmasker | None = None
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    # -- request headers -------------------------------------------------------------------
    async def process_request_headers(self, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
        self.request_headers = {h.key.lower(): (h.raw_value or h.value.encode()).decode("utf-8", "replace")
                                for h in headers.headers.headers}
        method = self.request_headers.get(":method", "")
        path = self.request_headers.get(":path", "").split("?", 1)[0]
        if method == "GET" and path == MODELS_PATH:
            routing = self.config.routing
            return immediate(models_reply(routing.aliases, list(routing.models)))
        if method == "POST" and path in CHAT_PATHS:
            if headers.end_of_stream:
                return self._error(RequestError(400, "the request body is empty; send a JSON chat completion "
                                                "request", "empty_body"))
            return ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=ep.CommonResponse()))
        return self._pass_through()

    def _pass_through(self) -> ep.ProcessingResponse:
        # Not ours: let it go to the default route untouched, and skip every later phase. A client-sent
        # routing header is dropped so that it cannot pick a backend cluster by itself.
        common = ep.CommonResponse(clear_route_cache=True,
                                   header_mutation=ep.HeaderMutation(remove_headers=[SELECTED_MODEL_HEADER]))
        return ep.ProcessingResponse(
            request_headers=ep.HeadersResponse(response=common),
            mode_override=pm.ProcessingMode(
                request_body_mode=pm.ProcessingMode.NONE,
                response_header_mode=pm.ProcessingMode.SKIP,
                response_body_mode=pm.ProcessingMode.NONE,
            ),
        )

    # -- request body ----------------------------------------------------------------------
    async def process_request_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        try:
            routed = await self.route(body.body)
        except RequestError as exc:
            return self._error(exc)
        outcome = routed.outcome
        degraded_headers = [("x-vsr-degraded", ",".join(outcome.degraded))] if outcome.degraded else []
        if outcome.reply is not None:
            return immediate(outcome.reply, [*outcome.headers, *degraded_headers])
        assert outcome.route is not None and routed.body is not None
        mutation = ep.HeaderMutation(set_headers=[
            header_option(SELECTED_MODEL_HEADER, outcome.route.model),
            header_option("content-length", str(len(routed.body))),
        ])
        return ep.ProcessingResponse(request_body=ep.BodyResponse(response=ep.CommonResponse(
            header_mutation=mutation,
            body_mutation=ep.BodyMutation(body=routed.body),
            clear_route_cache=True,
        )))

    async def route(self, raw: bytes, dry_run: bool = False) -> Routed:
        """Parse, ask the services, merge, and build the outgoing body; RequestError for bad input.

        Shared by the ext_proc path and the HTTP API's dry run (`dry_run` leaves the traffic metrics alone).
        """
        started = time.perf_counter()
        if len(raw) > self.config.front.max_body_bytes:
            raise RequestError(413, f"the request body is {len(raw)} bytes; the limit is "
                               f"{self.config.front.max_body_bytes} (front.max_body_bytes)", "request_too_large")
        self.request = parse_chat_request(raw)
        try:
            # Before any service is asked: what is accepted must not depend on a service being up.
            check_requested_model(self.config, self.request.model)
        except RequestError as exc:
            # A routing verdict (like decision's rejections used to be), so the dry run reports it too.
            if not dry_run:
                self.metrics.errors.labels(exc.code).inc()
            self.outcome = Outcome("error", reply=error_reply(exc))
            return Routed(self.outcome, {s.value: ServiceCall(s.value, failure="not_called") for s in Service})
        context = self.context_message = self.request.to_context(
            request_id=self.request_headers.get("x-request-id", ""),
            tenant=self.request_headers.get(self.config.front.tenant_header.lower(), ""),
            cache_directives=self._cache_directives(),
            traceparent=self.request_headers.get("traceparent", ""),
        )
        admission = self.context.admission
        admitted = admission.admit(admission.work_of(m.text for m in self.request.messages))
        self._observe_admission()
        try:
            calls = await self._fan_out(context, admitted)
        finally:
            admission.release(admitted)
            self._observe_admission()
        self.outcome = outcome = merge(self.config, self.request, calls["decision"], calls["guard"], calls["cache"])
        if not dry_run:
            self.metrics.routing_latency.observe(time.perf_counter() - started)
            self._count(outcome, calls)
        if outcome.reply is not None or outcome.route is None:
            return Routed(outcome, calls)
        outgoing = self.request.body
        if outcome.mask_entities:
            # Before the rewrite: entity offsets refer to the messages as the client sent them.
            try:
                outgoing, mapping = mask_body(outgoing, outcome.mask_entities, set(self.config.guard.pii.mask_types))
            except MaskingError:
                # Spans that do not fit the body: never send the text unmasked.
                log.warning("masking failed; the request is blocked instead")
                types = sorted({e.type for e in outcome.mask_entities})
                self.outcome = outcome = Outcome("blocked", reply=pii_blocked_reply(self.config, self.request, types),
                                                 degraded=outcome.degraded)
                return Routed(outcome, calls)
            self._unmask = _json_escaped(mapping)
        new_body = dumps(rewrite_body(outgoing, outcome.route, self.config.routing, self._decided(calls)))
        return Routed(outcome, calls, new_body)

    @staticmethod
    def _decided(calls: dict[str, ServiceCall]) -> bool:
        decision = calls["decision"].result
        return bool(decision is not None and decision.has_opinion and decision.candidates)

    def _cache_directives(self) -> list[str]:
        directives: list[str] = []
        for name in ("cache-control", "x-vsr-cache-control"):
            value = self.request_headers.get(name, "")
            directives += [d.strip().lower() for d in value.split(",") if d.strip()]
        return directives

    def _observe_admission(self) -> None:
        admission = self.context.admission
        self.metrics.inflight_requests.set(admission.inflight_requests)
        self.metrics.inflight_work.set(admission.inflight_work)

    async def _fan_out(self, context: Any, admitted: Admitted) -> dict[str, ServiceCall]:
        """Ask the three services at once, each under its deadline; a guard block cancels the calls still out."""
        clients = self.context.clients
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
                if guard is not None and guard.result is not None and (
                        guard.result.jailbreak or guard.result.blocking_pii_types):
                    for task in pending:
                        task.cancel()
                        calls[tasks[task]] = ServiceCall(tasks[task], failure="cancelled")
                    pending = set()
        finally:
            for task in pending:
                task.cancel()
        return calls

    def _count(self, outcome: Outcome, calls: dict[str, ServiceCall]) -> None:
        self.metrics.requests.labels(outcome.kind if not outcome.degraded or outcome.kind != "upstream"
                                     else "degraded").inc()
        for call in calls.values():
            if call.failed and call.failure not in ("disabled", "cancelled"):
                self.metrics.degraded.labels(call.service, call.failure).inc()
        if outcome.unverified and outcome.kind != "error":
            self.metrics.unverified.labels(outcome.unverified).inc()
        if outcome.route is not None and outcome.kind == "upstream":
            self.metrics.model_requests.labels(self._model_label(outcome.route.model)).inc()
            if self.request is not None and outcome.route.model != self.request.model:
                self.metrics.routing_modifications.labels(self._model_label(self.request.model),
                                                          self._model_label(outcome.route.model)).inc()
        self._count_protection(outcome, calls)

    def _model_label(self, model: str) -> str:
        # Client-sent names (unknown_model: passthrough) must not become label values: "other".
        routing = self.config.routing
        return model if model in routing.models or model in routing.aliases else "other"

    def _count_protection(self, outcome: Outcome, calls: dict[str, ServiceCall]) -> None:
        block_reason = block_reason_of(outcome)
        if outcome.kind == "blocked" and block_reason:
            self.metrics.blocks.labels(block_reason).inc()
        guard = calls["guard"].result
        if guard is None or not guard.has_opinion or not guard.pii or block_reason == "jailbreak":
            return
        decision = calls["decision"].result
        first = decision.candidates[0].model if self._decided(calls) and decision is not None else None
        if block_reason == "pii":
            action = "block"
        elif outcome.mask_entities:
            action = "mask"
        elif outcome.route is not None and first is not None and outcome.route.model != first:
            action = "reroute"
        else:
            action = "allow"
        self.metrics.pii_actions.labels(action).inc()

    def set_request_headers(self, headers: dict[str, str]) -> None:
        """For callers other than Envoy (the HTTP API): the request headers, lower-cased."""
        self.request_headers = {k.lower(): v for k, v in headers.items()}

    def _error(self, error: RequestError) -> ep.ProcessingResponse:
        self.metrics.errors.labels(error.code).inc()
        if isinstance(error, Overloaded) or error.code == "prompt_too_long":
            self.metrics.admission_rejections.labels(error.code).inc()
        return immediate(error_reply(error))

    # -- response headers --------------------------------------------------------------------
    async def process_response_headers(self, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
        values = {h.key.lower(): (h.raw_value or h.value.encode()).decode("utf-8", "replace")
                  for h in headers.headers.headers}
        try:
            self.response_status = int(values.get(":status", "0"))
        except ValueError:
            self.response_status = 0
        self.streaming_response = values.get("content-type", "").startswith("text/event-stream")
        set_headers = [header_option(k, v) for k, v in self._response_headers()]
        response = ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=ep.CommonResponse(
            header_mutation=ep.HeaderMutation(set_headers=set_headers))))
        if self.streaming_response:
            # Stream SSE chunks through as they come instead of buffering the whole answer.
            response.mode_override.CopyFrom(pm.ProcessingMode(response_body_mode=pm.ProcessingMode.STREAMED))
        return response

    def _response_headers(self) -> list[tuple[str, str]]:
        outcome = self.outcome
        if outcome is None:
            return []
        headers: list[tuple[str, str]] = []
        if outcome.degraded:
            headers.append(("x-vsr-degraded", ",".join(outcome.degraded)))
        headers += outcome.headers
        route = outcome.route
        if route is not None and 200 <= self.response_status < 300:
            headers.append(("x-vsr-selected-model", route.model))
            if route.category:
                headers.append(("x-vsr-selected-category", route.category))
                headers.append(("x-vsr-selected-reasoning", "on" if route.use_reasoning else "off"))
            headers.append(("x-vsr-injected-system-prompt", "true" if route.system_prompt else "false"))
        return headers

    # -- response body -------------------------------------------------------------------
    async def process_response_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        if self._unmask is not None:
            return self._unmasked_response_body(body)
        if self.streaming_response:
            # Chunks pass through as they are; a copy is kept (up to the body limit) to account and cache.
            self._response_bytes += len(body.body)
            if self._response_bytes <= self.config.front.max_body_bytes:
                self._response_chunks.append(body.body)
            if body.end_of_stream:
                whole = b"".join(self._response_chunks) if self._response_bytes <= self.config.front.max_body_bytes \
                    else b""
                completion = reassemble_sse(whole) if whole else None
                self._account(completion.get("usage") if completion else _usage_from_sse(whole))
                self._write_cache(completion)
        else:
            self._account(_usage_from_json(body.body))
            try:
                completion = loads(body.body)
            except (ValueError, UnicodeDecodeError):
                completion = None
            self._write_cache(completion if isinstance(completion, dict) else None)
        return ep.ProcessingResponse(response_body=ep.BodyResponse(response=ep.CommonResponse()))

    def _unmasked_response_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        """Put the client's own values back where the backend's answer repeats a placeholder."""
        assert self._unmask is not None
        if self.streaming_response:
            if self._stream_unmasker is None:
                self._stream_unmasker = StreamUnmasker(self._unmask)
            text = self._stream_unmasker.feed(self._utf8.decode(body.body, final=body.end_of_stream))
            if body.end_of_stream:
                text += self._stream_unmasker.flush()
            return ep.ProcessingResponse(response_body=ep.BodyResponse(response=ep.CommonResponse(
                body_mutation=ep.BodyMutation(body=text.encode()))))
        self._account(_usage_from_json(body.body))
        restored = unmask_text(body.body.decode("utf-8", "replace"), self._unmask).encode()
        return ep.ProcessingResponse(response_body=ep.BodyResponse(response=ep.CommonResponse(
            header_mutation=ep.HeaderMutation(set_headers=[header_option("content-length", str(len(restored)))]),
            body_mutation=ep.BodyMutation(body=restored))))

    def _write_cache(self, completion: dict[str, Any] | None) -> None:
        """Send a finished answer to the cache without making the client wait for it."""
        outcome, context = self.outcome, self.context_message
        if (completion is None or outcome is None or outcome.kind != "upstream" or outcome.route is None
                or context is None or self.response_status != 200 or not self.config.cache.enabled
                or "no-store" in context.cache_directives or not cacheable(completion)):
            return
        pending = self.context.pending_writes
        if len(pending) >= self.config.cache.write_queue_size:
            self.metrics.cache_write_drops.inc()
            return
        request = cache_pb2.StoreRequest(request=context, model=outcome.route.model,
                                         category=outcome.route.category, body=dumps(completion),
                                         route_fingerprint=route_key(outcome.route))
        task = asyncio.create_task(self.context.clients.store(request))
        pending.add(task)
        task.add_done_callback(pending.discard)

    def _account(self, usage: dict[str, Any] | None) -> None:
        if not usage or self.outcome is None or self.outcome.route is None:
            return
        model = self._model_label(self.outcome.route.model)
        for key, counter in (("prompt_tokens", self.metrics.prompt_tokens),
                             ("completion_tokens", self.metrics.completion_tokens)):
            value = usage.get(key)
            if isinstance(value, int) and value >= 0:
                counter.labels(model).inc(value)
                self.metrics.tokens.labels(model).inc(value)

    async def process_request_trailers(self, trailers: ep.HttpTrailers) -> ep.ProcessingResponse:
        return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())

    async def process_response_trailers(self, trailers: ep.HttpTrailers) -> ep.ProcessingResponse:
        return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())

    def failure_response(self, phase: str) -> ep.ProcessingResponse:
        """The answer when a phase raised: an error before the backend is called, pass-through after."""
        if phase in ("request_headers", "request_body"):
            self.metrics.errors.labels("internal").inc()
            return immediate(error_reply(RequestError(
                500, "the router failed to process this request; see the front's log", "router_error",
                error_type="server_error")))
        if phase == "response_headers":
            return ep.ProcessingResponse(response_headers=ep.HeadersResponse())
        if phase == "response_body":
            return ep.ProcessingResponse(response_body=ep.BodyResponse())
        if phase == "request_trailers":
            return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
        return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())


def _json_escaped(mapping: MaskMapping) -> MaskMapping:
    # Placeholders sit inside JSON strings of the answer, so the values must go back JSON-escaped.
    return MaskMapping({p: json.dumps(mapping.original(p), ensure_ascii=False)[1:-1] for p in mapping.placeholders})


def block_reason_of(outcome: Outcome) -> str | None:
    """"jailbreak" or "pii" for a blocked request (read from the x-vsr-* headers its reply carries)."""
    if outcome.kind != "blocked":
        return None
    names = {name for name, _ in outcome.headers}
    if outcome.reply is not None:
        names |= {name for name, _ in outcome.reply.headers}
    if "x-vsr-jailbreak-blocked" in names:
        return "jailbreak"
    return "pii" if "x-vsr-pii-violation" in names else None


def _usage_from_json(raw: bytes) -> dict[str, Any] | None:
    try:
        value = loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    usage = value.get("usage") if isinstance(value, dict) else None
    return usage if isinstance(usage, dict) else None


def _usage_from_sse(raw: bytes) -> dict[str, Any] | None:
    usage = None
    for line in raw.split(b"\n"):
        if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
            found = _usage_from_json(line[5:].strip())
            usage = found or usage
    return usage
