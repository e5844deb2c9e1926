"""Admission control: deadlines from the work in flight, 400 for a prompt too long, 429 when busy."""

from __future__ import annotations

import pytest

from services.common.config import parse_config
from services.front.admission import Admission, Overloaded
from services.front.chat_request import RequestError
from services.front.service_names import Service
from tests.conftest import example_config_data


def admission(**front) -> Admission:
    data = example_config_data()
    # Round numbers for the arithmetic below (not the shipped defaults).
    data["front"].update({"max_routing_ms": 4000, **front})
    data["envoy"]["message_timeout_ms"] = 5000
    data["triton"]["timeout_ms"] = 4000
    for service, floor in (("decision", 300), ("guard", 300), ("cache", 150)):
        data[service].update(deadline_per_token_ms=1.0, deadline_ms=floor)
    return Admission(parse_config(data))


def test_work_is_tokens_plus_overhead() -> None:
    a = admission(admission={"overhead_tokens": 32})
    assert a.work_of([]) == 32
    assert a.work_of(["hello world", "again"]) == 35


def test_deadline_is_floor_plus_per_token_cost_of_the_work_in_flight() -> None:
    a = admission()  # guard: 300 ms + 1 ms/token; cache: 150 ms + 1 ms/token; cap 4000 ms; bound 3700
    burst = 0.5 * a.max_work  # room for the work admitted while a request runs
    first = a.admit(200)
    assert first.deadlines_s[Service.GUARD] == pytest.approx(0.3 + (200 + burst) / 1000)
    assert first.deadlines_s[Service.CACHE] == pytest.approx(0.15 + (200 + burst) / 1000)
    second = a.admit(1000)  # admitted behind the first: its deadline counts both
    assert second.deadlines_s[Service.GUARD] == pytest.approx(0.3 + (1200 + burst) / 1000)
    third = a.admit(1500)
    assert third.deadlines_s[Service.GUARD] == pytest.approx(4.0)  # capped at front.max_routing_ms
    for admitted in (first, second, third):
        a.release(admitted)
    assert a.inflight_work == 0 and a.inflight_requests == 0


def test_a_request_too_long_for_the_cap_is_400_even_when_idle() -> None:
    a = admission()
    assert a.max_work == pytest.approx(3700)  # (4000 - 300) / 1.0, the guard's floor is the highest
    with pytest.raises(RequestError) as error:
        a.admit(3701)
    assert error.value.status == 400 and "front.max_routing_ms" in error.value.message
    assert not isinstance(error.value, Overloaded)


def test_busy_is_429_with_retry_after_and_takes_nothing_on() -> None:
    a = admission()
    held = a.admit(3000)
    with pytest.raises(Overloaded) as error:
        a.admit(800)
    assert error.value.status == 429 and error.value.code == "router_overloaded"
    assert dict(error.value.headers)["retry-after"] == "3"
    assert a.inflight_requests == 1 and a.inflight_work == 3000
    a.release(held)
    a.admit(800)


def test_request_count_bound() -> None:
    a = admission(admission={"max_inflight_requests": 2})
    a.admit(10)
    a.admit(10)
    with pytest.raises(Overloaded):
        a.admit(10)
