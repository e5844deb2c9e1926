"""Which model answered a Responses API response: a follow-up (previous_response_id) goes to the same one."""

from __future__ import annotations

import time
from collections import OrderedDict

# Bounded: one entry per response id a client may continue from.
PINS_KEPT = 50_000
PIN_TTL_S = 24 * 3600


class ConversationPins:
    """response id -> model, in this front process (replicas behind one gateway need session affinity on
    the conversation, or each replica pins on its own: a follow-up is then routed afresh)."""

    def __init__(self, kept: int = PINS_KEPT, ttl_s: float = PIN_TTL_S) -> None:
        self.kept = kept
        self.ttl_s = ttl_s
        self._pins: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def remember(self, response_id: str, model: str) -> None:
        if not response_id or not model:
            return
        self._pins[response_id] = (model, time.monotonic() + self.ttl_s)
        self._pins.move_to_end(response_id)
        while len(self._pins) > self.kept:
            self._pins.popitem(last=False)

    def model_for(self, response_id: str) -> str | None:
        found = self._pins.get(response_id)
        if found is None:
            return None
        model, expires = found
        if time.monotonic() > expires:
            del self._pins[response_id]
            return None
        return model
