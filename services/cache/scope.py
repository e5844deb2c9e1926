"""Cache scope: what, besides meaning, two requests must share for one's answer to serve the other."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from services.common.cache_fingerprint import last_user_index, normalize_text
from switchyard.v1 import common_pb2

# The exact-match fields of a scope, as the stores index and filter them: every field but the query.
SCOPE_FIELDS = ("tenant", "fingerprint")

# Stable namespace for entry ids, so that the same question in the same scope overwrites itself.
_ENTRY_NAMESPACE = uuid.UUID("6f1d2c3a-5b7e-4e0f-9a41-2f7c8d9e0b15")

normalize = normalize_text


class NoUserMessageError(ValueError):
    """The request has no user message, or an empty one, so there is nothing to look up or store."""


class NoFingerprintError(ValueError):
    """The caller sent no answer_fingerprint: the fields that change the answer are unknown."""


@dataclass(frozen=True)
class CacheScope:
    """The embedded text plus the exact-match fields of one request.

    `fingerprint` covers every request field that can change the answer except the query text
    (services/common/cache_fingerprint.py): tools, response format, sampling limits, content parts,
    the earlier turns with their tool calls. The tenant is "" for anonymous requests.
    """

    query: str
    tenant: str
    fingerprint: str

    def fields(self) -> dict[str, str]:
        """The payload fields a hit must match exactly (model/category/route are matched by the front)."""
        return {name: getattr(self, name) for name in SCOPE_FIELDS}

    def entry_id(self, model: str, category: str, route: str = "") -> str:
        """Same question, scope, model and route → same id, so storing it again replaces the old answer."""
        key = "\x1f".join((self.tenant, self.fingerprint, route, model, category, self.query))
        return str(uuid.uuid5(_ENTRY_NAMESPACE, key))


def scope_of(context: common_pb2.RequestContext) -> CacheScope:
    """The scope of a request; NoUserMessageError or NoFingerprintError when it cannot have one."""
    messages = list(context.messages)
    last_user = last_user_index([m.role for m in messages])
    if last_user is None or not messages[last_user].text.strip():
        raise NoUserMessageError("the request has no non-empty user message")
    if not context.answer_fingerprint:
        raise NoFingerprintError("the request context carries no answer_fingerprint")
    return CacheScope(query=normalize_text(messages[last_user].text), tenant=context.tenant,
                      fingerprint=context.answer_fingerprint)
