"""Cache policy: when to bypass lookup or store, which threshold applies, what an entry may hold."""

from __future__ import annotations

import json
from typing import Any

from services.cache.verify import Agreement
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
        """The similarity a candidate needs. The same words (or a self-correction into them) need only the
        lexical threshold; a paraphrase, or any candidate with verification off, the category's."""
        if self.config.verify and agreement in (Agreement.EXACT, Agreement.LEXICAL, Agreement.CORRECTION):
            return self.config.lexical_threshold
        return self.config.category_thresholds.get(category, self.config.similarity_threshold)

    @property
    def lowest_threshold(self) -> float:
        """The search cut-off: no candidate may hit below it."""
        lexical = [self.config.lexical_threshold] if self.config.verify else []
        return min([self.config.similarity_threshold, *self.config.category_thresholds.values(), *lexical])

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
