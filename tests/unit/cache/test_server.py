"""The gRPC adapter: protos in and out, and UNAVAILABLE when the embedder cannot answer."""

from __future__ import annotations

import json

import grpc
import pytest

from services.cache.metrics import CacheMetrics
from services.cache.semantic_cache import SemanticCache
from services.cache.server import CacheServicer
from services.cache.store_embedded import EmbeddedStore
from switchyard.v1 import cache_pb2, cache_pb2_grpc
from tests.unit.cache.conftest import DIM, cache_config, completion, request


@pytest.fixture
async def stub(tmp_path, embedder, clock):
    cache = SemanticCache(cache_config(), EmbeddedStore(tmp_path, "c", DIM), embedder, CacheMetrics(), clock=clock)
    await cache.start()
    server = grpc.aio.server()
    cache_pb2_grpc.add_CacheServicer_to_server(CacheServicer(cache), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield cache_pb2_grpc.CacheStub(channel), cache
    await channel.close()
    await server.stop(None)
    await cache.close()


async def test_store_then_lookup(stub):
    client, cache = stub
    stored = await client.Store(cache_pb2.StoreRequest(request=request("q"), model="m1", category="math",
                                                       body=completion("cached")))
    assert stored.stored and stored.reason == "queued"
    await cache.drain()
    found = await client.Lookup(cache_pb2.LookupRequest(request=request("q")))
    assert found.has_opinion and found.bypass_reason == ""
    (match,) = found.matches
    assert (match.model, match.category) == ("m1", "math") and match.similarity > 0.99 and match.entry_id
    assert json.loads(match.body)["choices"][0]["message"]["content"] == "cached"


async def test_bypass_has_no_opinion(stub):
    client, _ = stub
    found = await client.Lookup(cache_pb2.LookupRequest(request=request("q", directives=["no-cache"])))
    assert not found.has_opinion and found.bypass_reason == "no-cache"
    refused = await client.Store(cache_pb2.StoreRequest(request=request("q"), model="m1", body=b"{}"))
    assert not refused.stored and refused.reason.startswith("not-a-completion")


async def test_embedder_down_is_unavailable(stub, embedder):
    client, cache = stub
    embedder.down = True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.Lookup(cache_pb2.LookupRequest(request=request("q")))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "embedding model unavailable" in caught.value.details()
    assert cache.metrics.registry.get_sample_value("switchyard_cache_errors_total", {"reason": "embedder"}) == 1
