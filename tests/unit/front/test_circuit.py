"""The per-service circuit breaker: open after N failures in a row, one probe after the cool-down."""

from __future__ import annotations

from services.common.config import CircuitBreakerConfig
from services.front.circuit import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, cooldown_ms: float = 1000) -> tuple[CircuitBreaker, Clock, list[CircuitState]]:
    clock, changes = Clock(), []
    return CircuitBreaker(CircuitBreakerConfig(failures=failures, cooldown_ms=cooldown_ms), clock,
                          changes.append), clock, changes


def test_opens_after_consecutive_failures_only() -> None:
    b, _, changes = breaker()
    b.record_failure()
    b.record_failure()
    b.record_success()  # the streak is broken
    b.record_failure()
    b.record_failure()
    assert b.state is CircuitState.CLOSED and b.allow()
    b.record_failure()
    assert b.state is CircuitState.OPEN and not b.allow()
    assert changes == [CircuitState.OPEN]


def test_half_open_lets_exactly_one_probe_through() -> None:
    b, clock, _ = breaker()
    for _ in range(3):
        b.record_failure()
    assert 0.9 < b.retry_after_s() <= 1.0
    clock.now += 1.0
    assert b.state is CircuitState.HALF_OPEN
    assert b.allow() and not b.allow()  # the probe, then fail fast while it is out
    b.record_success()
    assert b.state is CircuitState.CLOSED and b.allow() and b.allow()


def test_a_failed_probe_opens_again_for_a_full_cool_down() -> None:
    b, clock, changes = breaker(failures=1)
    b.record_failure()
    clock.now += 1.5
    assert b.allow()
    b.record_failure()
    assert b.state is CircuitState.OPEN and b.retry_after_s() == 1.0
    assert changes == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.OPEN]


def test_a_cancelled_probe_frees_the_slot_for_another() -> None:
    b, clock, _ = breaker(failures=1)
    b.record_failure()
    clock.now += 1.0
    assert b.allow()
    b.record_neutral()
    assert b.allow()
