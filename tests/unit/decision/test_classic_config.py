"""A vLLM Semantic Router classic config.yaml loads and means the same in switchyard."""

from __future__ import annotations

from pathlib import Path

from services.common.config import load_config
from services.common.model_io import DOMAIN_LABELS
from services.decision.decider import Decider
from services.decision.policy import RoutingPolicy
from services.front.body_rewrite import rewrite_body
from services.front.merge import Route
from switchyard.v1 import common_pb2

CLASSIC = Path(__file__).parent / "data" / "classic_config.yaml"


class MathClassifier:
    labels = DOMAIN_LABELS

    async def classify(self, texts: list[str]) -> list[list[float]]:
        return [[0.9 if label == "math" else 0.1 / 13 for label in self.labels] for _ in texts]


def test_classic_keys_load_into_their_switchyard_meaning() -> None:
    config = load_config(CLASSIC)
    routing = config.routing
    assert routing.default_model == "openai/gpt-oss-20b"
    assert routing.confidence_threshold == 0.6
    assert routing.default_reasoning_effort == "high"
    assert [b.name for b in config.backends] == ["endpoint1", "endpoint2"]
    assert routing.models["qwen3-8b"].backend == "endpoint2"
    assert routing.models["qwen3-8b"].pii_policy.pii_types_allowed == ["EMAIL_ADDRESS", "PERSON"]
    assert routing.reasoning_families["gpt-oss"].type == "reasoning_effort"
    assert config.cache.similarity_threshold == 0.85 and config.cache.eviction == "fifo" and config.cache.ttl_s == 3600
    assert config.guard.jailbreak.threshold == 0.7 and config.guard.pii.threshold == 0.7
    assert config.backend_for("openai/gpt-oss-20b").port == 8000


async def test_classic_config_routes_the_same() -> None:
    config = load_config(CLASSIC)
    decider = Decider(RoutingPolicy(config.routing), MathClassifier())
    context = common_pb2.RequestContext(requested_model="MoM",
                                        messages=[common_pb2.ChatMessage(role="user", text="Integrate x^2")])
    decision = await decider.decide(context)
    assert decision.category == "math"
    assert [c.model for c in decision.candidates] == ["qwen3-8b", "openai/gpt-oss-20b"]
    assert decision.candidates[1].reasoning_effort == "high"
    first = decision.candidates[0]
    route = Route(model=first.model, category="math", use_reasoning=first.use_reasoning,
                  system_prompt=decision.system_prompt)
    body = rewrite_body({"model": "MoM", "messages": [{"role": "user", "content": "Integrate x^2"}]},
                        route, config.routing, decided=True)
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["messages"][0] == {"role": "system", "content": "You are a mathematics expert."}
    second = decision.candidates[1]
    body = rewrite_body({"model": "MoM", "messages": [], "chat_template_kwargs": {"enable_thinking": False}},
                        Route(model=second.model, use_reasoning=True, reasoning_effort=second.reasoning_effort),
                        config.routing, decided=True)
    assert body["reasoning_effort"] == "high" and "chat_template_kwargs" not in body
