"""A circuit breaker per service: stop calling a service that keeps failing, probe it after a cool-down.

closed ──N failures in a row──► open ──cool-down──► half_open ──probe ok──► closed
                                  ▲                      │
                                  └──── probe failed ────┘

While open, calls fail at once (the front applies the service's failure mode without waiting for a
deadline); in half-open exactly one call goes through as the probe and the others still fail fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from services.common.config import CircuitBreakerConfig


class CircuitState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Gauge values of switchyard_front_circuit_state.
STATE_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


class CircuitBreaker:
    def __init__(self, config: CircuitBreakerConfig, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[CircuitState], None] | None = None) -> None:
        self._failures_to_open = config.failures
        self._cooldown_s = config.cooldown_ms / 1000.0
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self._cooldown_s:
            self._set(CircuitState.HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """May a call go out now? In half-open, True once (the probe) until its result is recorded."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def retry_after_s(self) -> float:
        """Seconds until the next probe may go out (0 when calls go through)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._cooldown_s - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        self._failures = 0
        self._probe_out = False
        if self._state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        was_probe = self._probe_out
        self._probe_out = False
        if was_probe or (self._state is CircuitState.CLOSED and self._failures >= self._failures_to_open):
            self._opened_at = self._clock()
            self._set(CircuitState.OPEN)

    def record_neutral(self) -> None:
        """A call that says nothing about the service's health (cancelled, or the request was rejected)."""
        self._probe_out = False

    def _set(self, state: CircuitState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
