"""Admission control and per-request deadlines: the front takes on only the routing work it can finish.

Every service call of a request gets a deadline that fits the work: the service's floor plus a
per-token cost for all the routing work in flight when the request was admitted (its own and the
requests ahead of it: they share Triton's CPU, so a request queued behind two long prompts waits for
them), capped by `front.max_routing_ms`. Work that could not finish under the cap is refused before
any service is asked — 400 prompt_too_long when the prompt alone is too long (as OpenAI answers a
prompt over the context length), 429 + Retry-After when the mesh is
busy — so a deadline is only ever missed by a service that is broken, never by one that is merely
busy, and the guard is never skipped for being slow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.config import ServiceConfig, SwitchyardConfig
from services.common.text_units import estimate_tokens
from services.front.chat_request import RequestError
from services.front.service_names import Service


# Share of the admission bound a deadline leaves for work admitted after its request.
BURST_SHARE = 0.5


class Overloaded(RequestError):
    """The mesh has as much routing work in flight as it can finish in time: 429, try again later."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(429, message, "router_overloaded", error_type="rate_limit_error",
                         headers=(("retry-after", str(retry_after_s)),))
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Admitted:
    """One admitted request: its work and the deadline of each service call, in seconds."""

    work: int
    deadlines_s: dict[Service, float]


class Admission:
    """Counts the requests and the routing work (token-equivalents) in flight; one per front process."""

    def __init__(self, config: SwitchyardConfig) -> None:
        self.inflight_requests = 0
        self.inflight_work = 0
        self.reconfigure(config)

    def reconfigure(self, config: SwitchyardConfig) -> None:
        """Take a new config snapshot's budget; the work in flight stays counted."""
        self._config = config
        self._sections: dict[Service, ServiceConfig] = {s: getattr(config, s.value) for s in Service}
        front = config.front
        enabled = [s for s in self._sections.values() if s.enabled] or list(self._sections.values())
        # The most work in flight under which every service's deadline stays below the cap.
        self.max_work = min(
            math.inf if s.deadline_per_token_ms == 0 else (front.max_routing_ms - s.deadline_ms) / s.deadline_per_token_ms
            for s in enabled)

    def work_of(self, texts: Iterable[str]) -> int:
        """A request's routing work: the tokens the services will read, plus a fixed overhead."""
        return sum(estimate_tokens(t) for t in texts) + self._config.front.admission.overhead_tokens

    def admit(self, work: int) -> Admitted:
        """Take a request on, or raise RequestError(400) / Overloaded(429) before any work is done."""
        front = self._config.front
        if work > self.max_work:
            raise RequestError(
                400, f"the prompt is too long to be checked within the routing budget: about {work} tokens of "
                f"work, the limit is {int(self.max_work)} (front.max_routing_ms = {front.max_routing_ms:g} ms at "
                f"deadline_per_token_ms); shorten the prompt or raise front.max_routing_ms", "prompt_too_long",
                "messages")
        if self.inflight_requests >= front.admission.max_inflight_requests:
            raise Overloaded(f"the router has {self.inflight_requests} requests in flight, its limit "
                             f"(front.admission.max_inflight_requests); retry after the Retry-After seconds",
                             self._retry_after_s())
        if self.inflight_work + work > self.max_work:
            raise Overloaded(f"the router is at its routing capacity ({self.inflight_work} of {int(self.max_work)} "
                             "token-equivalents in flight); retry after the Retry-After seconds", self._retry_after_s())
        # The work this request shares Triton with: what is in flight now, its own, and room for what is
        # admitted while it runs (requests that come later share the CPU too; a burst of 50 short
        # requests otherwise timed out the first ones, admitted into an empty mesh).
        ahead = self.inflight_work + work + BURST_SHARE * self.max_work
        self.inflight_requests += 1
        self.inflight_work += work
        cap_s = front.max_routing_ms / 1000.0
        deadlines = {s: min(cap_s, (c.deadline_ms + c.deadline_per_token_ms * ahead) / 1000.0)
                     for s, c in self._sections.items()}
        return Admitted(work, deadlines)

    def release(self, admitted: Admitted) -> None:
        self.inflight_requests -= 1
        self.inflight_work -= admitted.work

    def _retry_after_s(self) -> int:
        # About the time the work in flight needs to drain, at the slowest service's per-token cost.
        per_token_ms = max(s.deadline_per_token_ms for s in self._sections.values())
        return max(1, math.ceil(self.inflight_work * per_token_ms / 1000.0))
