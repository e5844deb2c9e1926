"""The storage interface behind the semantic cache, shared by the embedded and server backends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.cache.scope import SCOPE_FIELDS

# Payload fields. The scope fields (defined with CacheScope) are matched exactly; created_at/last_used_at
# order TTL and eviction.
KEYWORD_FIELDS = (*SCOPE_FIELDS, "model", "category")
TIME_FIELDS = ("created_at", "last_used_at")


class StoreUnavailableError(RuntimeError):
    """The vector store cannot be opened or reached."""


@dataclass(frozen=True)
class CacheEntry:
    """One stored answer."""

    id: str
    vector: Sequence[float]
    scope: dict[str, str]
    model: str
    category: str
    query: str
    body: str
    created_at: float
    hits: int = 0
    # route_fingerprint of the route that answered (injected system prompt, reasoning); the front compares it.
    route: str = ""

    def payload(self) -> dict[str, Any]:
        return {**self.scope, "model": self.model, "category": self.category, "route": self.route,
                "query": self.query, "body": self.body, "created_at": self.created_at,
                "last_used_at": self.created_at, "hits": self.hits}


@dataclass(frozen=True)
class StoredHit:
    """A stored answer close to a query vector."""

    id: str
    similarity: float
    model: str
    category: str
    body: str
    hits: int
    created_at: float
    query: str = ""  # the stored question, which the verifier compares with the new one
    route: str = ""

    @classmethod
    def from_payload(cls, id: Any, score: float, payload: dict[str, Any]) -> StoredHit:
        return cls(id=str(id), similarity=float(score), model=payload.get("model", ""),
                   category=payload.get("category", ""), body=payload.get("body", ""),
                   hits=int(payload.get("hits", 0)), created_at=float(payload.get("created_at", 0.0)),
                   query=payload.get("query", ""), route=payload.get("route", ""))


@dataclass(frozen=True)
class ScopeFilter:
    """What a hit must match: exact payload values, and a creation time not older than the TTL."""

    equals: dict[str, str] = field(default_factory=dict)
    created_after: float | None = None


class CacheStore(Protocol):
    """A vector collection of CacheEntry points (cosine similarity)."""

    def search(self, vector: Sequence[float], where: ScopeFilter, limit: int, min_similarity: float) -> list[StoredHit]:
        """The closest entries matching `where`, best first, none below `min_similarity`."""
        ...

    def upsert(self, entries: Sequence[CacheEntry]) -> None: ...

    def touch(self, entry_id: str, hits: int, used_at: float) -> None:
        """Record a hit: the new hit count and the time (LRU order)."""
        ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def expire(self, created_before: float) -> None:
        """Delete every entry created before the given time."""
        ...

    def count(self) -> int: ...

    def oldest(self, order_field: str, limit: int) -> list[str]:
        """Ids of the `limit` entries with the smallest `order_field` (created_at or last_used_at)."""
        ...

    def compact(self) -> None:
        """Reclaim the space of deleted entries (a no-op where the backend does it by itself)."""
        ...

    def close(self) -> None: ...


def evict(store: CacheStore, max_entries: int, order_field: str) -> int:
    """Delete the entries beyond `max_entries`, smallest `order_field` first; returns how many."""
    excess = store.count() - max_entries
    if excess <= 0:
        return 0
    ids = store.oldest(order_field, excess)
    store.delete(ids)
    return len(ids)
