"""CacheStore on a Qdrant server through qdrant-client (also runs on its local mode in tests)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from qdrant_client import QdrantClient
from qdrant_client import models as qm

from services.cache.store import (KEYWORD_FIELDS, TIME_FIELDS, CacheEntry, ScopeFilter, StoredHit,
                                  StoreUnavailableError)


def _filter(where: ScopeFilter) -> qm.Filter:
    must: list = [qm.FieldCondition(key=k, match=qm.MatchValue(value=v)) for k, v in where.equals.items()]
    if where.created_after is not None:
        must.append(qm.FieldCondition(key="created_at", range=qm.Range(gte=where.created_after)))
    return qm.Filter(must=must)


class ServerStore:
    """One Qdrant collection per embedding model and dimension."""

    def __init__(self, client: QdrantClient, collection: str, dimension: int) -> None:
        self.client = client
        self.collection = collection
        self.dimension = dimension
        try:
            if not client.collection_exists(collection):
                client.create_collection(collection, vectors_config=qm.VectorParams(
                    size=dimension, distance=qm.Distance.COSINE))
            with warnings.catch_warnings():
                # Local mode (tests) warns that payload indexes do nothing there.
                warnings.simplefilter("ignore", UserWarning)
                for key in KEYWORD_FIELDS:
                    client.create_payload_index(collection, key, qm.PayloadSchemaType.KEYWORD)
                for key in TIME_FIELDS:
                    client.create_payload_index(collection, key, qm.PayloadSchemaType.FLOAT)
        except Exception as exc:  # qdrant-client raises transport-specific errors
            raise StoreUnavailableError(
                f"cannot open Qdrant collection {collection!r}: {exc}; check cache.url and that the "
                "Qdrant server is up"
            ) from exc
        info = client.get_collection(collection)
        size = getattr(info.config.params.vectors, "size", dimension)
        if size != dimension:
            raise StoreUnavailableError(
                f"Qdrant collection {collection!r} holds {size}-d vectors but the embedder makes "
                f"{dimension}-d ones; use another cache.collection or delete that collection")

    @classmethod
    def connect(cls, url: str, collection: str, dimension: int) -> ServerStore:
        return cls(QdrantClient(url=url), collection, dimension)

    def search(self, vector: Sequence[float], where: ScopeFilter, limit: int, min_similarity: float) -> list[StoredHit]:
        points = self.client.query_points(
            self.collection, query=list(map(float, vector)), query_filter=_filter(where), limit=limit,
            with_payload=True, with_vectors=False, score_threshold=min_similarity).points
        return [StoredHit.from_payload(p.id, p.score, p.payload or {}) for p in points]

    def upsert(self, entries: Sequence[CacheEntry]) -> None:
        self.client.upsert(self.collection, [
            qm.PointStruct(id=e.id, vector=list(map(float, e.vector)), payload=e.payload()) for e in entries])

    def touch(self, entry_id: str, hits: int, used_at: float) -> None:
        self.client.set_payload(self.collection, payload={"hits": hits, "last_used_at": used_at}, points=[entry_id])

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.client.delete(self.collection, points_selector=qm.PointIdsList(points=list(ids)))

    def expire(self, created_before: float) -> None:
        self.client.delete(self.collection, points_selector=qm.FilterSelector(filter=qm.Filter(
            must=[qm.FieldCondition(key="created_at", range=qm.Range(lt=created_before))])))

    def count(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def oldest(self, order_field: str, limit: int) -> list[str]:
        records, _ = self.client.scroll(self.collection, limit=limit, with_payload=False, with_vectors=False,
                                        order_by=qm.OrderBy(key=order_field, direction=qm.Direction.ASC))
        return [str(r.id) for r in records]

    def compact(self) -> None:
        pass  # the Qdrant server vacuums and indexes in the background

    def close(self) -> None:
        self.client.close()
