"""Fallback to the next candidate: the chain the front hands Envoy, and the per-attempt rewrite.

Envoy retries a failed backend call (routing.fallback: connect failure, reset, per-try timeout,
502/503/504 — always before the first byte reached the client) within the route's cluster. The front
runs twice on the way: as the downstream ext_proc filter it routes once and writes the chain (the
PII-allowed candidates, best first) into a request header; as an upstream filter of the router it sees
every attempt, and rewrites the body's `model` and reasoning fields for the candidate of that attempt
(`x-envoy-attempt-count`). So the retry is Envoy's, and no model outside the checked chain is ever asked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, replace
from typing import Any

from services.common.config import SwitchyardConfig
from services.common.fallback_headers import FALLBACK_CHAIN_HEADER
from services.front.body_rewrite import rewrite_body
from services.front.chat_request import dumps, loads
from services.front.merge import Outcome, Route

# Set by the front (downstream) on every routed request, signed (ChainSigner); a verified one marks the
# upstream pass. Envoy also removes a client-sent one before the front sees the request (envoy_config.py).
CHAIN_HEADER = FALLBACK_CHAIN_HEADER
ATTEMPT_HEADER = "x-envoy-attempt-count"
TIMEOUT_RETRY_HEADER = "x-envoy-is-timeout-retry"
MAX_RETRIES_HEADER = "x-envoy-max-retries"
REQUEST_ID_HEADER = "x-request-id"
NEXT_HEADER = "x-vsr-fallback-next"
FALLBACK_FROM_HEADER = "x-vsr-fallback-from"
# The model that answered, from the upstream pass to the downstream one (removed there).
SERVED_MODEL_HEADER = "x-switchyard-fallback-model"
RETRIABLE_STATUSES = frozenset({502, 503, 504})


class ChainError(ValueError):
    """A chain header that the front did not write (or a config reload removed its models)."""


@dataclass(frozen=True)
class Link:
    """One candidate of the chain: what the body rewrite needs beyond what all candidates share."""

    model: str
    use_reasoning: bool
    reasoning_effort: str = ""


def fallback_chain(config: SwitchyardConfig, outcome: Outcome) -> list[Route]:
    """The routes Envoy may try for an upstream outcome, the chosen one first: PII-allowed candidates
    only (merge filtered them), on the chosen model's backend (a retry stays in the route's cluster),
    at most routing.fallback.attempts."""
    assert outcome.route is not None
    fallback = config.routing.fallback
    if not fallback.enabled:
        return [outcome.route]
    backend = config.backend_for(outcome.route.model).name
    chain = [outcome.route]
    for route in outcome.fallbacks:
        if len(chain) >= fallback.attempts:
            break
        if route.model in config.routing.models and config.backend_for(route.model).name == backend \
                and route.model not in {r.model for r in chain}:
            chain.append(route)
    return chain


class ChainSigner:
    """Signs the chain the downstream pass writes, so that the upstream pass trusts only the front's own.

    The key is routing.fallback.signing_key (every front replica the same) or, without one, this
    process's own: Envoy sends the downstream and the upstream pass of a request over one gRPC
    connection, so they meet the same replica. A chain that does not verify is not an upstream pass:
    the request is routed as any other (guard included), so a forged header gains nothing.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key or secrets.token_bytes(32)

    @classmethod
    def for_config(cls, config: SwitchyardConfig, process_key: bytes) -> ChainSigner:
        configured = config.routing.fallback.signing_key
        return cls(configured.encode() if configured else process_key)

    def _mac(self, request_id: str, payload: str) -> str:
        return hmac.new(self.key, f"{request_id}\n{payload}".encode(), hashlib.sha256).hexdigest()[:32]

    def encode(self, chain: list[Route], request_id: str) -> str:
        payload = json.dumps([[r.model, r.use_reasoning, r.reasoning_effort] for r in chain], separators=(",", ":"))
        return f"{self._mac(request_id, payload)}.{payload}"

    def verify(self, value: str, request_id: str) -> str | None:
        """The payload of a chain this key signed for this request, else None."""
        mac, _, payload = value.partition(".")
        return payload if payload and hmac.compare_digest(mac, self._mac(request_id, payload)) else None


# One key per front process when the config names none (ChainSigner's docstring says why that works).
PROCESS_KEY = secrets.token_bytes(32)


def decode_chain(config: SwitchyardConfig, payload: str) -> list[Link]:
    try:
        items = json.loads(payload)
        links = [Link(str(m), bool(r), str(e)) for m, r, e in items]
    except (ValueError, TypeError) as exc:
        raise ChainError(f"{CHAIN_HEADER}: not a chain the front wrote: {exc}") from None
    if not links or any(link.model not in config.routing.models for link in links):
        raise ChainError(f"{CHAIN_HEADER}: names a model that is not configured: {payload[:200]}")
    return links


def request_headers(config: SwitchyardConfig, chain: list[Route], headers: dict[str, str]) -> list[tuple[str, str]]:
    """Headers the downstream pass sets: the signed chain, and as many retries as it has further candidates."""
    signer = ChainSigner.for_config(config, PROCESS_KEY)
    out = [(CHAIN_HEADER, signer.encode(chain, headers.get(REQUEST_ID_HEADER, ""))),
           (MAX_RETRIES_HEADER, str(len(chain) - 1))]
    if len(chain) > 1:
        # For the Envoy AI Gateway variant: its route rules match the next candidate (helm aigateway.yaml).
        out.append((NEXT_HEADER, chain[1].model))
    return out


def attempt_number(headers: dict[str, str]) -> int:
    try:
        return max(1, int(headers.get(ATTEMPT_HEADER, "1")))
    except ValueError:
        return 1


@dataclass
class Attempt:
    """One upstream attempt, as the front's upstream pass sees it."""

    chain: list[Link]
    number: int
    timeout_retry: bool = False

    @property
    def link(self) -> Link:
        return self.chain[min(self.number, len(self.chain)) - 1]

    @property
    def first(self) -> Link:
        return self.chain[0]

    @property
    def previous(self) -> Link:
        return self.chain[min(self.number, len(self.chain)) - 2]

    @property
    def is_fallback(self) -> bool:
        return self.number > 1 and len(self.chain) > 1

    @property
    def reason(self) -> str:
        """Why this attempt exists: Envoy says when a per-try timeout caused it; else the previous
        attempt failed (a refused or reset connection, or a retriable status)."""
        return "timeout" if self.timeout_retry else "error"


def attempt_from_headers(config: SwitchyardConfig, headers: dict[str, str]) -> Attempt | None:
    """The upstream attempt these request headers describe; None when they carry no chain the front signed
    (a downstream pass: route it)."""
    value = headers.get(CHAIN_HEADER)
    if value is None:
        return None
    payload = ChainSigner.for_config(config, PROCESS_KEY).verify(value, headers.get(REQUEST_ID_HEADER, ""))
    if payload is None:
        return None
    return Attempt(decode_chain(config, payload), attempt_number(headers),
                   headers.get(TIMEOUT_RETRY_HEADER, "") == "true")


def rewrite_for(config: SwitchyardConfig, body: bytes, link: Link) -> bytes:
    """The body of the first attempt, made the request of `link`: its model and reasoning fields (the
    system prompt, masking and every other field stay as the downstream pass wrote them)."""
    value: Any = loads(body)
    # The first candidate's reasoning switch is the router's, not the client's: off with it, so that a
    # model of another family (or of none) gets only its own.
    families = config.routing.reasoning_families.values()
    kwargs = value.get("chat_template_kwargs")
    if isinstance(kwargs, dict):
        kwargs = {k: v for k, v in kwargs.items()
                  if k not in {f.parameter for f in families if f.type == "chat_template_kwargs"}}
        if kwargs:
            value["chat_template_kwargs"] = kwargs
        else:
            value.pop("chat_template_kwargs")
    for family in families:
        if family.type == "reasoning_effort":
            value.pop(family.parameter, None)
    route = Route(model=link.model, use_reasoning=link.use_reasoning, reasoning_effort=link.reasoning_effort)
    return dumps(rewrite_body(value, route, config.routing, decided=True))


def route_served(outcome: Outcome, model: str) -> Route | None:
    """The candidate of `outcome` that served the answer, when a fallback served it (else None)."""
    if outcome.route is None or model == outcome.route.model:
        return None
    for route in outcome.fallbacks:
        if route.model == model:
            return replace(route)
    return None
