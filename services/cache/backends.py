"""Opening the configured CacheStore backend for an embedding model."""

from __future__ import annotations

from services.cache.embedder import Embedder
from services.cache.store import CacheStore, StoreUnavailableError
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
        return ServerStore.connect(config.url, name, embedder.dimension)
    return EmbeddedStore(config.path, name, embedder.dimension)
