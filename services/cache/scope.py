"""Cache scope: what, besides meaning, two requests must share for one's answer to serve the other."""

from __future__ import annotations

import hashlib
import json
import unicodedata
import uuid
from dataclasses import dataclass

from switchyard.v1 import common_pb2

# Stable namespace for entry ids, so that the same question in the same scope overwrites itself.
_ENTRY_NAMESPACE = uuid.UUID("6f1d2c3a-5b7e-4e0f-9a41-2f7c8d9e0b15")


class NoUserMessageError(ValueError):
    """The request has no user message, so there is nothing to look up or store."""


def normalize(text: str) -> str:
    """Unicode NFC with whitespace runs collapsed: formatting noise must not split a scope."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _digest(value: object) -> str:
    data = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:32]


def context_hash(messages: list[common_pb2.ChatMessage], last_user: int) -> str:
    """Hash of every message except the last user one: system prompt, earlier turns, and any
    tool results after it, so a follow-up only hits inside the same conversation."""
    before = [(m.role, m.name, normalize(m.text)) for m in messages[:last_user]]
    after = [(m.role, m.name, normalize(m.text)) for m in messages[last_user + 1:]]
    return _digest({"before": before, "after": after})


def params_hash(params: common_pb2.RequestParams) -> str:
    """Hash of the sampling parameters that change what the answer looks like.

    Temperature is not part of it: above max_temperature the cache is bypassed instead.
    """
    return _digest({
        "n": params.n or 1,
        "tools": params.has_tools,
        # "" and "text" ask for the same thing.
        "response_format": params.response_format or "text",
        # A short max_tokens cut-off answer must not serve a request that allows a longer one.
        "max_tokens": params.max_tokens if params.HasField("max_tokens") else None,
    })


@dataclass(frozen=True)
class CacheScope:
    """The embedded text plus the exact-match fields of one request."""

    query: str
    tenant: str
    context_hash: str
    params_hash: str

    def fields(self) -> dict[str, str]:
        """The payload fields a hit must match exactly (model/category are matched by the front)."""
        return {"tenant": self.tenant, "context_hash": self.context_hash, "params_hash": self.params_hash}

    def entry_id(self, model: str, category: str) -> str:
        """Same question, scope and model → same id, so storing it again replaces the old answer."""
        key = "\x1f".join((self.tenant, self.context_hash, self.params_hash, model, category, self.query))
        return str(uuid.uuid5(_ENTRY_NAMESPACE, key))


def scope_of(context: common_pb2.RequestContext) -> CacheScope:
    """The scope of a request; raises NoUserMessageError when it has no user message."""
    messages = list(context.messages)
    last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None)
    if last_user is None or not messages[last_user].text.strip():
        raise NoUserMessageError("the request has no non-empty user message")
    return CacheScope(
        query=normalize(messages[last_user].text),
        tenant=context.tenant,
        context_hash=context_hash(messages, last_user),
        params_hash=params_hash(context.params),
    )
