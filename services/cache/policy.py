"""Cache policy: when to bypass lookup or store, which threshold applies, what an entry may hold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from services.cache.verify import DECISIVE, PROVEN, Agreement, Rejection, Verdict
from services.common.config import CacheConfig
from services.common.sse import reassemble_sse, uncacheable_reason
from switchyard.v1 import common_pb2

# Bypass / refusal reasons; they appear in LookupResponse.bypass_reason, StoreResponse.reason and metrics.
# A refused answer's reason is the one services.common.sse.uncacheable_reason gives ("truncated", ...).
NO_CACHE = "no-cache"
NO_STORE = "no-store"
TEMPERATURE = "temperature"
NO_USER_MESSAGE = "no-user-message"
NO_FINGERPRINT = "no-fingerprint"
ANONYMOUS = "anonymous"
MODEL_DISABLED = "model-disabled"
NOT_A_COMPLETION = "not-a-completion"


# Match.check when cache.verify is off: the similarity threshold alone let it through.
SIMILARITY_ONLY = "similarity"
# Match.check of a candidate the pair classifier accepted.
PAIR_MODEL = "pair_model"
# Rejection reasons of the pair-model step (beside verify.Rejection's).
PAIR_MODEL_REJECTED = "pair-model"  # p(same) below cache.pair_threshold
PAIR_MODEL_FAILED = "pair-model-failed"  # the classifier did not answer in time: never served unverified
PAIR_CANDIDATES = "pair-candidates"  # beyond cache.pair_candidates in this lookup


class Step(str, Enum):
    """What the text checks decided about one candidate."""

    SERVE = "serve"
    REJECT = "reject"
    ASK_PAIR_MODEL = "ask-pair-model"


@dataclass(frozen=True)
class Screening:
    step: Step
    check: str = ""  # with SERVE: which check passed (an Agreement value or SIMILARITY_ONLY)
    rejection: str = ""  # with REJECT: a Rejection value (a metrics label)


class StoreRefusal(Exception):
    """An answer the cache will not keep; `reason` is one of the reason constants above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CachePolicy:
    """The CacheConfig rules as plain decisions; no I/O."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self._models = frozenset(config.models)

    def _temperature_too_high(self, params: common_pb2.RequestParams) -> bool:
        # An unset temperature counts as cacheable: most clients never send one, and the operator
        # who wants them bypassed can make the front (or backend) default explicit.
        return params.HasField("temperature") and params.temperature > self.config.max_temperature

    def _anonymous_bypassed(self, context: common_pb2.RequestContext) -> bool:
        # Without a tenant every client would share one scope: another client's answer is not theirs to get.
        return not context.tenant and self.config.anonymous == "bypass"

    def lookup_bypass(self, context: common_pb2.RequestContext) -> str | None:
        """Why this request must not be looked up, or None."""
        if NO_CACHE in context.cache_directives:
            return NO_CACHE
        if self._temperature_too_high(context.params):
            return TEMPERATURE
        if self._anonymous_bypassed(context):
            return ANONYMOUS
        return None

    def store_bypass(self, context: common_pb2.RequestContext, model: str) -> str | None:
        """Why an answer to this request must not be stored, or None."""
        if NO_STORE in context.cache_directives:
            return NO_STORE
        if self._temperature_too_high(context.params):
            return TEMPERATURE
        if self._anonymous_bypassed(context):
            return ANONYMOUS
        if not self.model_enabled(model):
            return MODEL_DISABLED
        return None

    def model_enabled(self, model: str) -> bool:
        return not self._models or model in self._models

    def threshold(self, category: str, agreement: Agreement | None = None) -> float:
        """The similarity a candidate needs on the rules alone. The same words (or a self-correction into them)
        need only the lexical threshold; a paraphrase, or any candidate with verification off, the category's."""
        if self.config.verify and agreement in PROVEN:
            return self.config.lexical_threshold
        return self.config.category_thresholds.get(category, self.config.similarity_threshold)

    def candidate_threshold(self, category: str) -> float:
        """The similarity a candidate needs before the pair classifier is asked."""
        return self.config.category_thresholds.get(category, self.config.candidate_threshold)

    @property
    def lowest_threshold(self) -> float:
        """The search cut-off: no candidate may hit below it."""
        lexical = [self.config.lexical_threshold] if self.config.verify else []
        candidate = [self.config.candidate_threshold] if self.config.uses_pair_model else []
        return min([self.config.similarity_threshold, *self.config.category_thresholds.values(), *lexical,
                    *candidate])

    def screen(self, verdict: Verdict, similarity: float, category: str) -> Screening:
        """What the text checks (`verdict`, services/cache/verify.py) and the similarity decide about one
        candidate: served, rejected, or left to the pair classifier (cache.pair_model, for the verdicts in
        cache.pair_model_judges)."""
        if not self.config.verify:
            if similarity >= self.threshold(category):
                return Screening(Step.SERVE, check=SIMILARITY_ONLY)
            return Screening(Step.REJECT, rejection=Rejection.SIMILARITY.value)
        if verdict.agreement in PROVEN:
            if similarity >= self.config.lexical_threshold:
                return Screening(Step.SERVE, check=verdict.agreement.value)
            return Screening(Step.REJECT, rejection=Rejection.SIMILARITY.value)
        judged = verdict.agreement or verdict.rejection
        if (self.config.uses_pair_model and judged is not None and judged not in DECISIVE
                and judged.value in self.config.pair_model_judges):
            if similarity < self.candidate_threshold(category):
                return Screening(Step.REJECT, rejection=Rejection.SIMILARITY.value)
            return Screening(Step.ASK_PAIR_MODEL)
        if verdict.agreement is not Agreement.PARAPHRASE:  # a rejection is final; no verdict is never a pass
            return Screening(Step.REJECT, rejection=(verdict.rejection or Rejection.EDITED).value)
        if similarity < self.threshold(category, verdict.agreement):
            return Screening(Step.REJECT, rejection=Rejection.SIMILARITY.value)
        return Screening(Step.SERVE, check=Agreement.PARAPHRASE.value)

    def pair_accepts(self, same_probability: float) -> bool:
        return same_probability >= self.config.pair_threshold

    @property
    def eviction_order(self) -> str:
        """The payload field whose smallest values are evicted first."""
        return "last_used_at" if self.config.eviction == "lru" else "created_at"


def completion_from_body(body: bytes) -> dict[str, Any]:
    """The cacheable chat.completion in a Store body (JSON, or an SSE stream as a fallback).

    Raises StoreRefusal when the body is not a finished chat.completion.
    """
    stripped = body.lstrip()
    if stripped.startswith(b"data:"):
        completion = reassemble_sse(stripped)
        if completion is None:
            raise StoreRefusal(NOT_A_COMPLETION, "the SSE body is not a complete chat.completion.chunk stream")
    else:
        try:
            completion = json.loads(body)
        except ValueError:
            raise StoreRefusal(NOT_A_COMPLETION, "the body is not JSON") from None
        if not isinstance(completion, dict) or completion.get("object") != "chat.completion":
            raise StoreRefusal(NOT_A_COMPLETION, "the body is not a chat.completion object")
    reason = uncacheable_reason(completion)
    if reason is not None:
        raise StoreRefusal(reason.value, reason.detail)
    return completion
