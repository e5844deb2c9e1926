"""One contract for every CacheStore: the embedded engine and qdrant-client (local mode stands in for a server)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from qdrant_client import QdrantClient

from services.cache.store import CacheEntry, CacheStore, ScopeFilter, StoreUnavailableError, evict
from services.cache.store_embedded import EmbeddedStore
from services.cache.store_server import ServerStore
from tests.unit.cache.conftest import DIM, text_vector, unit

SCOPE = {"tenant": "t1", "context_hash": "c1", "params_hash": "p1"}


def entry(name: str, *, vector=None, created_at: float = 100.0, model: str = "m1", category: str = "",
          **scope: str) -> CacheEntry:
    return CacheEntry(id=_uuid(name), vector=text_vector(name) if vector is None else vector,
                      scope={**SCOPE, **scope}, model=model, category=category, query=name,
                      body=f'{{"answer": "{name}"}}', created_at=created_at)


def _uuid(name: str) -> str:
    import uuid
    return str(uuid.uuid5(uuid.NAMESPACE_OID, name))


@pytest.fixture(params=["embedded", "server-memory", "server-path"])
def store(request, tmp_path) -> Iterator[CacheStore]:
    if request.param == "embedded":
        opened: CacheStore = EmbeddedStore(tmp_path, "c_fake_384", DIM)
    elif request.param == "server-memory":
        opened = ServerStore(QdrantClient(":memory:"), "c_fake_384", DIM)
    else:
        opened = ServerStore(QdrantClient(path=str(tmp_path / "qdrant")), "c_fake_384", DIM)
    yield opened
    opened.close()


def test_empty(store):
    assert store.count() == 0
    assert store.search(text_vector("q"), ScopeFilter(SCOPE), 5, 0.0) == []
    assert store.oldest("created_at", 5) == []


def test_search_finds_nearest_with_payload(store):
    store.upsert([entry("a"), entry("b"), entry("c", model="m2", category="math")])
    hits = store.search(text_vector("c"), ScopeFilter(SCOPE), 3, 0.0)
    assert hits[0].id == _uuid("c") and hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert (hits[0].model, hits[0].category, hits[0].body) == ("m2", "math", '{"answer": "c"}')
    assert hits[0].hits == 0 and hits[0].created_at == 100.0
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)


def test_min_similarity_cuts_off(store):
    base = text_vector("q")
    other = unit(text_vector("o") - text_vector("o").dot(base) * base)
    store.upsert([entry("near", vector=unit(0.95 * base + np.sqrt(1 - 0.95 ** 2) * other)), entry("far")])
    hits = store.search(base, ScopeFilter(SCOPE), 5, 0.9)
    assert [h.id for h in hits] == [_uuid("near")]
    assert hits[0].similarity == pytest.approx(0.95, abs=1e-4)


@pytest.mark.parametrize("field", ["tenant", "context_hash", "params_hash"])
def test_every_scope_field_filters(store, field):
    store.upsert([entry("q"), entry("q-other", vector=text_vector("q"), **{field: "different"})])
    hits = store.search(text_vector("q"), ScopeFilter(SCOPE), 5, 0.5)
    assert [h.id for h in hits] == [_uuid("q")]
    hits = store.search(text_vector("q"), ScopeFilter({**SCOPE, field: "different"}), 5, 0.5)
    assert [h.id for h in hits] == [_uuid("q-other")]


def test_created_after_filters(store):
    store.upsert([entry("old", created_at=10.0), entry("new", vector=text_vector("old"), created_at=50.0)])
    hits = store.search(text_vector("old"), ScopeFilter(SCOPE, created_after=20.0), 5, 0.5)
    assert [h.id for h in hits] == [_uuid("new")]


def test_upsert_same_id_replaces(store):
    store.upsert([entry("a")])
    store.upsert([CacheEntry(**{**entry("a").__dict__, "body": "new", "created_at": 200.0})])
    assert store.count() == 1
    assert store.search(text_vector("a"), ScopeFilter(SCOPE), 1, 0.5)[0].body == "new"


def test_touch_updates_hits_and_lru_order(store):
    store.upsert([entry("a", created_at=1.0), entry("b", created_at=2.0), entry("c", created_at=3.0)])
    assert store.oldest("last_used_at", 2) == [_uuid("a"), _uuid("b")]
    store.touch(_uuid("a"), 4, used_at=10.0)
    assert store.oldest("last_used_at", 2) == [_uuid("b"), _uuid("c")]
    assert store.oldest("created_at", 1) == [_uuid("a")]
    assert store.search(text_vector("a"), ScopeFilter(SCOPE), 1, 0.5)[0].hits == 4


def test_delete_expire_and_evict(store):
    store.upsert([entry(f"e{i}", created_at=float(i)) for i in range(10)])
    store.delete([_uuid("e0")])
    assert store.count() == 9
    store.expire(created_before=3.0)
    assert store.count() == 7
    assert evict(store, 5, "created_at") == 2
    assert store.count() == 5
    assert store.oldest("created_at", 10) == [_uuid(f"e{i}") for i in range(5, 10)]
    assert evict(store, 5, "created_at") == 0


def test_embedded_store_survives_reopen(tmp_path):
    first = EmbeddedStore(tmp_path, "c", DIM)
    first.upsert([entry("a"), entry("b")])
    first.touch(_uuid("b"), 3, 5.0)
    first.close()
    second = EmbeddedStore(tmp_path, "c", DIM)
    assert second.count() == 2
    assert second.search(text_vector("b"), ScopeFilter(SCOPE), 1, 0.5)[0].hits == 3
    second.close()


def test_reopening_with_another_dimension_says_what_to_do(tmp_path):
    EmbeddedStore(tmp_path, "c", DIM).close()
    with pytest.raises(StoreUnavailableError, match="cache.path"):
        EmbeddedStore(tmp_path, "c", 8)
    client = QdrantClient(":memory:")
    ServerStore(client, "c", DIM)
    with pytest.raises(StoreUnavailableError, match="cache.collection"):
        ServerStore(client, "c", 8)
