"""The ext_proc protocol: one processor per stream (one HTTP request), one method per processing phase.

The processor for a request is picked by its path at the request-headers phase, as the Envoy AI
Gateway does: `ChatProcessor` (POST /v1/chat/completions, routed by the `Router`), `ResponsesProcessor` and
`AnthropicProcessor` (POST /v1/responses, /v1/messages: the same `Router` through the API's translator in
services/front/apis), `ModelsProcessor` (GET /v1/models and /v1/models/{id}, answered by the router) and
`PassThroughProcessor` (everything else, and the base case: untouched, later phases skipped). The pipeline
itself lives in router.py.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2 as core
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.type.v3 import http_status_pb2

from services.common.config import SwitchyardConfig
from services.common.reload import LiveConfig
from services.common.sse import cacheable, reassemble_sse
from services.front import fallback
from services.front.admission import Admission, Overloaded
from services.front.apis import ANTHROPIC, CHAT, RESPONSES, ApiTranslator
from services.front.chat_request import RequestError, dumps, loads
from services.front.masking import MaskMapping, StreamUnmasker, unmask_text
from services.front.merge import Outcome, OutcomeKind, route_key
from services.front.mesh_clients import MeshClients
from services.front.metrics import FrontMetrics
from services.front.replies import Reply, error_reply, model_reply, models_reply
from services.front.router import Routed, Router, model_label
from switchyard.v1 import cache_pb2, common_pb2

log = logging.getLogger("switchyard.front")

CHAT_PATHS = frozenset({"/v1/chat/completions"})
MODELS_PATH = "/v1/models"
# Routing headers: Envoy's route table matches the backend; the model is for the upstream router's users.
SELECTED_MODEL_HEADER = "x-selected-model"
SELECTED_BACKEND_HEADER = "x-selected-backend"
# Request headers a client must not send on to a backend: the routing headers (they would pick a
# cluster by themselves) and the router's own x-vsr-* headers (a backend or a log must not take a
# client's "x-vsr-cache-hit: true" for the router's word).
ROUTER_HEADER_PREFIX = "x-vsr-"
ROUTING_HEADERS = (SELECTED_MODEL_HEADER, SELECTED_BACKEND_HEADER)


@dataclass
class FrontContext:
    """What every processor of the process shares: the live config, the service clients, the metrics."""

    config: SwitchyardConfig
    clients: MeshClients
    metrics: FrontMetrics
    # Cache writes in flight; past `cache.write_queue_size` new ones are dropped (and counted).
    pending_writes: set[asyncio.Task[Any]] = field(default_factory=set)
    live: LiveConfig = None  # type: ignore[assignment]  # made from `config` when not given
    admission: Admission = None  # type: ignore[assignment]
    router: Router = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.live is None:
            self.live = LiveConfig(self.config)
        if self.admission is None:
            self.admission = Admission(self.config)
        if self.router is None:
            self.router = Router(self.clients, self.metrics, self.admission)
        self.live.on_change(self.admission.reconfigure)


def decode_headers(headers: ep.HttpHeaders) -> dict[str, str]:
    """Envoy's header map as a dict with lower-case names (values arrive in raw_value)."""
    return {h.key.lower(): (h.raw_value or h.value.encode()).decode("utf-8", "replace")
            for h in headers.headers.headers}


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


def unmasked_body(raw: bytes, mapping: MaskMapping) -> ep.ProcessingResponse:
    """A buffered answer with the client's own values back in place of the placeholders."""
    restored = unmask_text(raw.decode("utf-8", "replace"), mapping).encode()
    return ep.ProcessingResponse(response_body=ep.BodyResponse(response=ep.CommonResponse(
        header_mutation=ep.HeaderMutation(set_headers=[header_option("content-length", str(len(restored)))]),
        body_mutation=ep.BodyMutation(body=restored))))


def client_headers_to_remove(headers: Mapping[str, str]) -> list[str]:
    """Removed before the request goes on: the routing headers (always) and the x-vsr-* the client sent."""
    return [*ROUTING_HEADERS, *(name for name in headers if name.startswith(ROUTER_HEADER_PREFIX))]


class PassThroughProcessor:
    """The base case: the request goes to the default route untouched, every later phase skipped."""

    def __init__(self, context: FrontContext, config: SwitchyardConfig, request_headers: dict[str, str]) -> None:
        self.context = context
        # One config snapshot for the whole stream: a reload in between never mixes two configs.
        self.config = config
        self.metrics = context.metrics
        self.request_headers = request_headers
        self.outcome: Outcome | None = None
        self.response_status = 0

    async def process_request_headers(self, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
        common = ep.CommonResponse(clear_route_cache=True, header_mutation=ep.HeaderMutation(
            remove_headers=client_headers_to_remove(self.request_headers)))
        return ep.ProcessingResponse(
            request_headers=ep.HeadersResponse(response=common),
            mode_override=pm.ProcessingMode(
                request_body_mode=pm.ProcessingMode.NONE,
                response_header_mode=pm.ProcessingMode.SKIP,
                response_body_mode=pm.ProcessingMode.NONE,
            ),
        )

    async def process_request_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        return ep.ProcessingResponse(request_body=ep.BodyResponse())

    async def process_response_headers(self, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
        return ep.ProcessingResponse(response_headers=ep.HeadersResponse())

    async def process_response_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        return ep.ProcessingResponse(response_body=ep.BodyResponse())

    async def process_request_trailers(self, trailers: ep.HttpTrailers) -> ep.ProcessingResponse:
        return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())

    async def process_response_trailers(self, trailers: ep.HttpTrailers) -> ep.ProcessingResponse:
        return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())

    def error(self, error: RequestError) -> ep.ProcessingResponse:
        self.metrics.errors.labels(error.code).inc()
        if isinstance(error, Overloaded) or error.code == "prompt_too_long":
            self.metrics.admission_rejections.labels(error.code).inc()
        return immediate(error_reply(error))


class ModelsProcessor(PassThroughProcessor):
    """GET /v1/models (the aliases and the configured models) and GET /v1/models/{id}."""

    async def process_request_headers(self, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
        routing = self.config.routing
        path = self.request_headers.get(":path", "").split("?", 1)[0]
        if path.rstrip("/") == MODELS_PATH:
            return immediate(models_reply(routing.aliases, list(routing.models)))
        model = path[len(MODELS_PATH) + 1:]
        if model in routing.aliases or model in routing.models:
            return immediate(model_reply(model))
        shown = model if len(model) <= 64 else model[:64] + "..."
        return self.error(RequestError(404, f"model {shown!r} is not served by this router; use one of: "
                                       f"{', '.join([*routing.aliases, *routing.models])}", "model_not_found",
                                       "model"))


class ChatProcessor(PassThroughProcessor):
    """A chat completion: routed at the request body, accounted, cached and unmasked at the response."""

    def __init__(self, context: FrontContext, config: SwitchyardConfig, request_headers: dict[str, str]) -> None:
        super().__init__(context, config, request_headers)
        self.routed: Routed | None = None
        # Set at the request headers: the fallback attempt this upstream pass serves (None downstream).
        self.attempt: fallback.Attempt | None = None
        self.streaming_response = False
        self._response_chunks: list[bytes] = []
        self._response_bytes = 0
        self._stream_unmasker: StreamUnmasker | None = None
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    @property
    def context_message(self) -> common_pb2.RequestContext | None:
        return self.routed.context if self.routed is not None else None

    @property
    def _unmask(self) -> MaskMapping | None:
        return self.routed.unmask if self.routed is not None else None

    # -- request headers -------------------------------------------------------------------
    async def process_request_headers(self, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
        if headers.end_of_stream:
            return self.error(RequestError(400, "the request body is empty; send a JSON chat completion request",
                                           "empty_body"))
        remove = client_headers_to_remove(self.request_headers)
        # Read (and its signature checked) once per pass: the body phase goes on from it.
        self.attempt = attempt = fallback.attempt_from_headers(self.config, self.request_headers)
        if attempt is not None and not attempt.is_fallback:
            # The upstream pass of the first attempt sends the body the downstream pass wrote: its model is
            # named here and the body phase is skipped (where Envoy allows the override; else that phase
            # names it again).
            return ep.ProcessingResponse(
                request_headers=ep.HeadersResponse(response=ep.CommonResponse(header_mutation=ep.HeaderMutation(
                    remove_headers=[h for h in remove if h != SELECTED_MODEL_HEADER],
                    set_headers=[header_option(SELECTED_MODEL_HEADER, attempt.link.model)]))),
                mode_override=pm.ProcessingMode(request_body_mode=pm.ProcessingMode.NONE))
        return ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=ep.CommonResponse(
            header_mutation=ep.HeaderMutation(remove_headers=remove))))

    # -- request body ----------------------------------------------------------------------
    async def process_request_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        attempt = self.attempt
        if attempt is not None:
            # The upstream pass (Envoy's router runs the front again per attempt): rewrite for the
            # candidate of this attempt, route nothing.
            if not attempt.is_fallback:
                # The headers phase removed the routing headers; the backend still learns its model.
                return ep.ProcessingResponse(request_body=ep.BodyResponse(response=ep.CommonResponse(
                    header_mutation=ep.HeaderMutation(set_headers=[
                        header_option(SELECTED_MODEL_HEADER, attempt.link.model)]))))
            self.metrics.fallbacks.labels(model_label(self.config, attempt.previous.model),
                                          model_label(self.config, attempt.link.model), attempt.reason).inc()
            rewritten = fallback.rewrite_for(self.config, body.body, attempt.link)
            return ep.ProcessingResponse(request_body=ep.BodyResponse(response=ep.CommonResponse(
                header_mutation=ep.HeaderMutation(set_headers=[
                    header_option(SELECTED_MODEL_HEADER, attempt.link.model),
                    header_option("content-length", str(len(rewritten)))]),
                body_mutation=ep.BodyMutation(body=rewritten))))
        try:
            self.routed = routed = await self.context.router.route(self.config, body.body, self.request_headers)
        except RequestError as exc:
            return self.error(exc)
        self.outcome = outcome = routed.outcome
        degraded_headers = [("x-vsr-degraded", ",".join(outcome.degraded))] if outcome.degraded else []
        if outcome.reply is not None:
            return immediate(outcome.reply, [*outcome.headers, *degraded_headers])
        assert outcome.route is not None and routed.body is not None
        chain = fallback.fallback_chain(self.config, outcome)
        mutation = ep.HeaderMutation(set_headers=[
            header_option(SELECTED_MODEL_HEADER, outcome.route.model),
            header_option(SELECTED_BACKEND_HEADER, routed.backend),
            header_option("content-length", str(len(routed.body))),
            *(header_option(k, v) for k, v in fallback.request_headers(self.config, chain, self.request_headers)),
        ])
        return ep.ProcessingResponse(request_body=ep.BodyResponse(response=ep.CommonResponse(
            header_mutation=mutation,
            body_mutation=ep.BodyMutation(body=routed.body),
            clear_route_cache=True,
        )))

    # -- response headers --------------------------------------------------------------------
    async def process_response_headers(self, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
        values = decode_headers(headers)
        try:
            self.response_status = int(values.get(":status", "0"))
        except ValueError:
            self.response_status = 0
        attempt = self.attempt
        if attempt is not None:
            # The upstream pass: name the model that answered; the downstream pass takes it from here.
            if self.response_status in fallback.RETRIABLE_STATUSES:
                self.metrics.backend_failures.labels(model_label(self.config, attempt.link.model),
                                                     str(self.response_status)).inc()
            marks = [(fallback.FALLBACK_FROM_HEADER, attempt.first.model),
                     (fallback.SERVED_MODEL_HEADER, attempt.link.model)] if attempt.is_fallback else []
            return ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=ep.CommonResponse(
                header_mutation=ep.HeaderMutation(set_headers=[header_option(k, v) for k, v in marks]))))
        served_model = values.get(fallback.SERVED_MODEL_HEADER)
        if served_model is not None and self.outcome is not None:
            # A later candidate answered: account, cache and label the answer as that model's.
            served = fallback.route_served(self.outcome, served_model)
            if served is not None:
                self.outcome.route = served
        self.streaming_response = values.get("content-type", "").startswith("text/event-stream")
        set_headers = [header_option(k, v) for k, v in self._response_headers()]
        response = ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=ep.CommonResponse(
            header_mutation=ep.HeaderMutation(set_headers=set_headers,
                                              remove_headers=[fallback.SERVED_MODEL_HEADER]))))
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
        limit = self.config.front.max_body_bytes
        if self.streaming_response:
            # Chunks pass through as they are; a copy is kept (up to the body limit) to account and cache.
            self._response_bytes += len(body.body)
            if self._response_bytes <= limit:
                self._response_chunks.append(body.body)
            if body.end_of_stream:
                whole = b"".join(self._response_chunks) if self._response_bytes <= limit else b""
                completion = reassemble_sse(whole) if whole else None
                self._account(completion.get("usage") if completion else _usage_from_sse(whole))
                self._write_cache(completion)
        else:
            self._account(_usage_from_json(body.body))
            try:
                completion = loads(body.body)
            except (ValueError, UnicodeDecodeError, RecursionError):
                completion = None
            self._write_cache(completion if isinstance(completion, dict) else None)
        return ep.ProcessingResponse(response_body=ep.BodyResponse(response=ep.CommonResponse()))

    def _unmasked_response_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        """Put the client's own values back where the backend's answer repeats a placeholder."""
        mapping = self._unmask
        assert mapping is not None
        if self.streaming_response:
            if self._stream_unmasker is None:
                self._stream_unmasker = StreamUnmasker(mapping)
            text = self._stream_unmasker.feed(self._utf8.decode(body.body, final=body.end_of_stream))
            if body.end_of_stream:
                text += self._stream_unmasker.flush()
            return ep.ProcessingResponse(response_body=ep.BodyResponse(response=ep.CommonResponse(
                body_mutation=ep.BodyMutation(body=text.encode()))))
        self._account(_usage_from_json(body.body))
        return unmasked_body(body.body, mapping)

    def _write_cache(self, completion: dict[str, Any] | None) -> None:
        """Send a finished answer to the cache without making the client wait for it."""
        outcome, context = self.outcome, self.context_message
        if (completion is None or outcome is None or outcome.kind is not OutcomeKind.UPSTREAM or outcome.route is None
                or context is None or self.response_status != 200 or not self.config.cache.enabled
                or "no-store" in context.cache_directives or not cacheable(completion)):
            return
        self._store(context, outcome, completion)

    def _store(self, context: common_pb2.RequestContext, outcome: Outcome, completion: dict[str, Any]) -> None:
        """Queue a cache write (dropped and counted past cache.write_queue_size in flight)."""
        assert outcome.route is not None
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
        model = model_label(self.config, self.outcome.route.model)
        for key, counter in (("prompt_tokens", self.metrics.prompt_tokens),
                             ("completion_tokens", self.metrics.completion_tokens)):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
                counter.labels(model).inc(value)
                self.metrics.tokens.labels(model).inc(value)


class TranslatedProcessor(ChatProcessor):
    """Another client API (services/front/apis): routed by the same Router through its translator, answered,
    accounted, cached and unmasked in that API's own shape."""

    api: ApiTranslator = CHAT

    async def process_request_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        try:
            self.routed = routed = await self.context.router.route(self.config, body.body, self.request_headers,
                                                                   api=self.api)
        except RequestError as exc:
            return self.error(exc)
        self.outcome = outcome = routed.outcome
        degraded_headers = [("x-vsr-degraded", ",".join(outcome.degraded))] if outcome.degraded else []
        if outcome.reply is not None:
            return immediate(outcome.reply, [*outcome.headers, *degraded_headers])
        assert outcome.route is not None and routed.body is not None
        mutation = ep.HeaderMutation(set_headers=[
            header_option(SELECTED_MODEL_HEADER, outcome.route.model),
            header_option(SELECTED_BACKEND_HEADER, routed.backend),
            header_option("content-length", str(len(routed.body))),
        ])
        return ep.ProcessingResponse(request_body=ep.BodyResponse(response=ep.CommonResponse(
            header_mutation=mutation, body_mutation=ep.BodyMutation(body=routed.body), clear_route_cache=True)))

    async def process_response_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        api, mapping = self.api, self._unmask
        if self.streaming_response:
            # Events pass through as they come (unmasked where needed); a copy is kept to account and cache.
            self._response_bytes += len(body.body)
            if self._response_bytes <= self.config.front.max_body_bytes:
                self._response_chunks.append(body.body)
            if body.end_of_stream:
                whole = b"".join(self._response_chunks) if self._response_bytes <= self.config.front.max_body_bytes \
                    else b""
                answer = api.reassemble(whole) if whole else None
                self._account(api.usage(answer) if answer else api.stream_usage(whole))
                self._finish(answer)
            if mapping is None:
                return ep.ProcessingResponse(response_body=ep.BodyResponse(response=ep.CommonResponse()))
            if self._stream_unmasker is None:
                self._stream_unmasker = StreamUnmasker(mapping)
            text = self._stream_unmasker.feed(self._utf8.decode(body.body, final=body.end_of_stream))
            if body.end_of_stream:
                text += self._stream_unmasker.flush()
            return ep.ProcessingResponse(response_body=ep.BodyResponse(response=ep.CommonResponse(
                body_mutation=ep.BodyMutation(body=text.encode()))))
        try:
            answer = loads(body.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            answer = None
        answer = answer if isinstance(answer, dict) else None
        self._account(api.usage(answer) if answer else None)
        self._finish(answer)
        if mapping is None:
            return ep.ProcessingResponse(response_body=ep.BodyResponse(response=ep.CommonResponse()))
        return unmasked_body(body.body, mapping)

    def _finish(self, answer: dict[str, Any] | None) -> None:
        """Remember which model answered (previous_response_id follow-ups) and store a finished answer."""
        outcome, context = self.outcome, self.context_message
        if answer is None or outcome is None or outcome.kind is not OutcomeKind.UPSTREAM or outcome.route is None \
                or self.response_status != 200:
            return
        self.context.router.conversations.remember(self.api.answer_id(answer), outcome.route.model)
        if context is None or self._unmask is not None or not self.config.cache.enabled \
                or "no-store" in context.cache_directives:
            return
        # The cache holds chat completions; each API replays them in its own shape.
        completion = self.api.stored_answer(answer)
        if completion is None:
            return
        self._store(context, outcome, completion)

    def error(self, error: RequestError) -> ep.ProcessingResponse:
        self.metrics.errors.labels(error.code).inc()
        if isinstance(error, Overloaded) or error.code == "prompt_too_long":
            self.metrics.admission_rejections.labels(error.code).inc()
        return immediate(self.api.error_reply(error))


class ResponsesProcessor(TranslatedProcessor):
    """POST /v1/responses: the OpenAI Responses API."""

    api = RESPONSES


class AnthropicProcessor(TranslatedProcessor):
    """POST /v1/messages: Anthropic's Messages API."""

    api = ANTHROPIC


class StoredResponseProcessor(PassThroughProcessor):
    """GET/DELETE /v1/responses/{id}[/input_items|/cancel]: passed through, to the backend of the model that
    answered that response (the conversation pins), so a stored response is asked where it is stored."""

    async def process_request_headers(self, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
        response = await super().process_request_headers(headers)
        path = self.request_headers.get(":path", "").split("?", 1)[0]
        response_id = path[len(RESPONSES_PATH) + 1:].split("/", 1)[0]
        model = self.context.router.conversations.model_for(response_id)
        if model is not None and model in self.config.routing.models:
            response.request_headers.response.header_mutation.set_headers.append(
                header_option(SELECTED_BACKEND_HEADER, self.config.backend_for(model).name))
        return response


RESPONSES_PATH = "/v1/responses"
# The routed APIs by path (POST); each translates its body to the Router's common request.
TRANSLATED_PATHS: dict[str, type[TranslatedProcessor]] = {
    "/v1/responses": ResponsesProcessor,
    "/v1/messages": AnthropicProcessor,
}


def processor_for(method: str, path: str) -> type[PassThroughProcessor]:
    """The processor class for a request (AI Gateway's processor registry, by path)."""
    path = path.split("?", 1)[0]
    if method == "POST" and path in CHAT_PATHS:
        return ChatProcessor
    if method == "POST" and path in TRANSLATED_PATHS:
        return TRANSLATED_PATHS[path]
    if path.startswith(RESPONSES_PATH + "/"):
        return StoredResponseProcessor
    if method == "GET" and (path.rstrip("/") == MODELS_PATH or path.startswith(MODELS_PATH + "/")):
        return ModelsProcessor
    return PassThroughProcessor


class RequestProcessor:
    """One per ext_proc stream: picks its processor at request headers and hands it every phase.

    A message that comes before the request headers (a protocol error) is answered as pass-through.
    """

    def __init__(self, context: FrontContext) -> None:
        self.context = context
        self.metrics = context.metrics
        self.delegate: PassThroughProcessor | None = None

    @property
    def config(self) -> SwitchyardConfig:
        return self.delegate.config if self.delegate is not None else self.context.live.current

    @property
    def outcome(self) -> Outcome | None:
        return self.delegate.outcome if self.delegate is not None else None

    @property
    def response_status(self) -> int:
        return self.delegate.response_status if self.delegate is not None else 0

    def _current(self) -> PassThroughProcessor:
        if self.delegate is None:
            self.delegate = PassThroughProcessor(self.context, self.context.live.current, {})
        return self.delegate

    async def process_request_headers(self, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
        values = decode_headers(headers)
        kind = processor_for(values.get(":method", ""), values.get(":path", ""))
        self.delegate = kind(self.context, self.context.live.current, values)
        return await self.delegate.process_request_headers(headers)

    async def process_request_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        return await self._current().process_request_body(body)

    async def process_response_headers(self, headers: ep.HttpHeaders) -> ep.ProcessingResponse:
        return await self._current().process_response_headers(headers)

    async def process_response_body(self, body: ep.HttpBody) -> ep.ProcessingResponse:
        return await self._current().process_response_body(body)

    async def process_request_trailers(self, trailers: ep.HttpTrailers) -> ep.ProcessingResponse:
        return await self._current().process_request_trailers(trailers)

    async def process_response_trailers(self, trailers: ep.HttpTrailers) -> ep.ProcessingResponse:
        return await self._current().process_response_trailers(trailers)

    def failure_response(self, phase: str) -> ep.ProcessingResponse:
        """The answer when a phase raised: an error before the backend is called, pass-through after."""
        if phase in ("request_headers", "request_body"):
            self.metrics.errors.labels("internal").inc()
            # In the client API's own error shape (an Anthropic client gets an Anthropic error).
            api: ApiTranslator = getattr(self.delegate, "api", CHAT)
            return immediate(api.error_reply(RequestError(
                500, "the router failed to process this request; see the front's log", "router_error",
                error_type="server_error")))
        if phase == "response_headers":
            return ep.ProcessingResponse(response_headers=ep.HeadersResponse())
        if phase == "response_body":
            return ep.ProcessingResponse(response_body=ep.BodyResponse())
        if phase == "request_trailers":
            return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
        return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())


def _usage_from_json(raw: bytes) -> dict[str, Any] | None:
    try:
        value = loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
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
