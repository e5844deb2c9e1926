"""gRPC adapter of the decision service."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc

from services.common.config import SwitchyardConfig
from services.common.grpc_server import run_grpc_service
from services.decision.classifier import ClassifierUnavailableError, TritonDomainClassifier
from services.decision.decider import Decider, DomainClassifier
from services.decision.metrics import DecisionMetrics
from services.decision.policy import Decision, RoutingPolicy, UnknownModelError
from services.common.reload import LiveConfig, start_reloading
from services.common.triton import set_call_deadline
from switchyard.v1 import decision_pb2, decision_pb2_grpc

log = logging.getLogger("switchyard.decision")

_PROMPT_MODES = {"replace": decision_pb2.SYSTEM_PROMPT_MODE_REPLACE, "insert": decision_pb2.SYSTEM_PROMPT_MODE_INSERT}


def decision_to_proto(decision: Decision) -> decision_pb2.DecideResponse:
    return decision_pb2.DecideResponse(
        has_opinion=True,
        category=decision.category,
        confidence=decision.confidence,
        candidates=[decision_pb2.Candidate(model=c.model, score=c.score, use_reasoning=c.use_reasoning,
                                           reasoning_effort=c.reasoning_effort) for c in decision.candidates],
        probabilities=[decision_pb2.CategoryProbability(category=k, probability=v)
                       for k, v in decision.probabilities.items()],
        system_prompt=decision.system_prompt,
        system_prompt_mode=_PROMPT_MODES[decision.system_prompt_mode.value],
        matched_rule=decision.matched_rule,
        fallback_reason=decision.fallback_reason,
        sticky=decision.sticky,
    )


class DecisionServicer(decision_pb2_grpc.DecisionServicer):
    """Thin adapter: proto in, Decider, proto out; errors become gRPC status codes."""

    def __init__(self, decider: Decider, metrics: DecisionMetrics) -> None:
        self.decider = decider
        self.metrics = metrics

    async def Decide(self, request: decision_pb2.DecideRequest,
                     context: grpc.aio.ServicerContext) -> decision_pb2.DecideResponse:
        set_call_deadline(context.time_remaining())
        try:
            decision = await self.decider.decide(request.request)
        except UnknownModelError as exc:
            self.metrics.errors.labels("unknown_model").inc()
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except ClassifierUnavailableError as exc:
            self.metrics.errors.labels("classifier_unavailable").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        self._count(decision)
        return decision_to_proto(decision)

    def _count(self, decision: Decision) -> None:
        source = ("rule" if decision.matched_rule else decision.fallback_reason or "classifier")
        best = decision.candidates[0]
        # A passed-through client model name must not become a label value.
        model = best.model if best.model in self.decider.policy.routing.models else "other"
        self.metrics.decisions.labels(source, decision.category or "none", model).inc()
        if decision.category:
            self.metrics.category_classifications.labels(decision.category).inc()
            self.metrics.reasoning.labels(decision.category, model, str(best.use_reasoning).lower()).inc()
        if decision.probabilities:
            self.metrics.confidence.observe(decision.confidence)


async def serve(config: SwitchyardConfig, config_path: Path | None = None,
                classifier: DomainClassifier | None = None) -> None:
    section = config.decision
    metrics = DecisionMetrics()
    if classifier is None:
        classifier = TritonDomainClassifier(config.triton, metrics.classifier_latency.labels("domain"))
    decider = Decider(RoutingPolicy(config.routing), classifier)
    servicer = DecisionServicer(decider, metrics)
    live = LiveConfig(config)
    # A new routing policy object per snapshot: a Decide call in flight keeps the one it started with.
    live.on_change(lambda new: setattr(decider, "policy", RoutingPolicy(new.routing)))
    watch_task: asyncio.Task[None] | None = None

    async def start_watching() -> None:
        nonlocal watch_task
        watch_task = start_reloading(config_path, live, metrics.registry)

    async def stop() -> None:
        if watch_task is not None:
            watch_task.cancel()
        await classifier_close(classifier)

    await run_grpc_service(
        "decision", section.host, section.port, section.metrics_port,
        lambda server: decision_pb2_grpc.add_DecisionServicer_to_server(servicer, server),
        [decision_pb2.DESCRIPTOR.services_by_name["Decision"].full_name],
        on_shutdown=stop, registry=metrics.registry, on_started=start_watching,
    )


async def classifier_close(classifier: object) -> None:
    close = getattr(classifier, "close", None)
    if close is not None:
        await close()
