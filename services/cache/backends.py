"""Opening the configured CacheStore backend for an embedding model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from services.cache.embedder import Embedder
from services.cache.store import CacheEntry, CacheStore, ScopeFilter, StoredHit, StoreUnavailableError
from services.cache.store_embedded import EmbeddedStore
from services.cache.store_server import ServerStore
from services.common.config import CacheConfig


def collection_name(config: CacheConfig, embedder: Embedder) -> str:
    """One collection per embedding model and size: vectors of two models are not comparable."""
    return f"{config.collection}_{embedder.name}_{embedder.dimension}"


def open_store(config: CacheConfig, embedder: Embedder) -> CacheStore:
    name = collection_name(config, embedder)
    if config.store == "server":
        if not config.url:
            raise StoreUnavailableError("cache.store is 'server' but cache.url is empty; set it to the Qdrant "
                                        "server's URL, e.g. http://qdrant:6333")
        url = config.url
        return ReconnectingStore(lambda: ServerStore.connect(url, name, embedder.dimension))
    return EmbeddedStore(config.path, name, embedder.dimension)


class ReconnectingStore:
    """A CacheStore opened on first use, and again after a failure (at most every `retry_s`): the cache
    service starts and reports healthy while its Qdrant server is down, answers UNAVAILABLE meanwhile
    (so the front fails open to a miss), and serves again once the server is back, without a restart."""

    def __init__(self, opener: Callable[[], CacheStore], retry_s: float = 1.0) -> None:
        self._open = opener
        self._retry_s = retry_s
        self._store: CacheStore | None = None
        self._failed_at = -float("inf")
        self._error = ""
        self._lock = threading.Lock()  # the store's calls run on an executor's threads

    def _get(self) -> CacheStore:
        with self._lock:
            if self._store is None:
                if time.monotonic() - self._failed_at < self._retry_s:
                    raise StoreUnavailableError(self._error)
                try:
                    self._store = self._open()
                except StoreUnavailableError as exc:
                    self._failed_at, self._error = time.monotonic(), str(exc)
                    raise
            return self._store

    def _call(self, name: str, *args: Any) -> Any:
        store = self._get()
        try:
            return getattr(store, name)(*args)
        except StoreUnavailableError:
            with self._lock:  # reopen on the next call (after retry_s)
                self._store, self._failed_at = None, time.monotonic()
            raise

    def search(self, vector: Sequence[float], where: ScopeFilter, limit: int, min_similarity: float) -> list[StoredHit]:
        return self._call("search", vector, where, limit, min_similarity)

    def upsert(self, entries: Sequence[CacheEntry]) -> None:
        self._call("upsert", entries)

    def touch(self, entry_id: str, hits: int, used_at: float) -> None:
        self._call("touch", entry_id, hits, used_at)

    def delete(self, ids: Sequence[str]) -> None:
        self._call("delete", ids)

    def expire(self, created_before: float) -> None:
        self._call("expire", created_before)

    def count(self) -> int:
        return self._call("count")

    def oldest(self, order_field: str, limit: int) -> list[str]:
        return self._call("oldest", order_field, limit)

    def compact(self) -> None:
        self._call("compact")

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
