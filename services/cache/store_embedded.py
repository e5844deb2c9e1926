"""CacheStore on Qdrant's own engine in-process (qdrant-edge-py), persisted in a local folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import qdrant_edge as qe

from services.cache.store import (KEYWORD_FIELDS, TIME_FIELDS, CacheEntry, ScopeFilter, StoredHit,
                                  StoreUnavailableError)


def _filter(where: ScopeFilter) -> qe.Filter:
    must: list = [qe.FieldCondition(key=k, match=qe.MatchValue(v)) for k, v in where.equals.items()]
    if where.created_after is not None:
        must.append(qe.FieldCondition(key="created_at", range=qe.RangeFloat(gte=where.created_after)))
    return qe.Filter(must=must)


class EmbeddedStore:
    """One EdgeShard folder per collection: `<path>/<collection>`."""

    def __init__(self, path: Path, collection: str, dimension: int) -> None:
        self.path = Path(path) / collection
        self.dimension = dimension
        # No HNSW: every lookup filters on indexed scope fields first, which leaves few candidates, and
        # building HNSW in-process holds the GIL for minutes at 100k entries (a 20k build froze the
        # service for 14 s). Without it, optimize() is only a vacuum: ~0.7 s at 50k entries.
        config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine),
                               optimizers=qe.EdgeOptimizersConfig(indexing_threshold=0))
        try:
            if (self.path / "edge_config.json").exists():
                self.shard = qe.EdgeShard.load(str(self.path), config)
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self.shard = qe.EdgeShard.create(str(self.path), config)
        except Exception as exc:  # the engine raises plain Exception
            raise StoreUnavailableError(
                f"cannot open the embedded cache store at {self.path}: {exc}; "
                f"check cache.path, or delete that folder if it was written with another embedding size"
            ) from exc
        # Indexes keep filtered search fast at 100k entries and are required for order_by.
        for key in KEYWORD_FIELDS:
            self.shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
        for key in TIME_FIELDS:
            self.shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Float))

    def search(self, vector: Sequence[float], where: ScopeFilter, limit: int, min_similarity: float) -> list[StoredHit]:
        points = self.shard.query(qe.QueryRequest(
            limit=limit, query=qe.Query.Nearest(list(map(float, vector))), filter=_filter(where),
            with_payload=True, with_vector=False, score_threshold=min_similarity))
        return [StoredHit.from_payload(p.id, p.score, p.payload or {}) for p in points]

    def upsert(self, entries: Sequence[CacheEntry]) -> None:
        points = [qe.Point(e.id, list(map(float, e.vector)), e.payload()) for e in entries]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def touch(self, entry_id: str, hits: int, used_at: float) -> None:
        self.shard.update(qe.UpdateOperation.set_payload([entry_id], {"hits": hits, "last_used_at": used_at}))

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.shard.update(qe.UpdateOperation.delete_points(list(ids)))

    def expire(self, created_before: float) -> None:
        self.shard.update(qe.UpdateOperation.delete_points_by_filter(
            qe.Filter(must=[qe.FieldCondition(key="created_at", range=qe.RangeFloat(lt=created_before))])))

    def count(self) -> int:
        return self.shard.count(qe.CountRequest(exact=True))

    def oldest(self, order_field: str, limit: int) -> list[str]:
        records, _ = self.shard.scroll(qe.ScrollRequest(
            limit=limit, order_by=qe.OrderBy(order_field, qe.Direction.Asc), with_payload=False, with_vector=False))
        return [str(r.id) for r in records]

    def compact(self) -> None:
        # The engine has no background optimizer; deleted points stay on disk until this runs.
        self.shard.optimize()

    def close(self) -> None:
        self.shard.flush()
        self.shard.close()
