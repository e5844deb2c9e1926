"""gRPC adapter of the cache service."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc

from services.cache.backends import open_store
from services.cache.embedder import EmbedderUnavailableError, TritonEmbedder
from services.cache.metrics import CacheMetrics
from services.cache.pair_model import TritonPairScorer
from services.cache.semantic_cache import LookupResult, SemanticCache
from services.cache.store import StoreUnavailableError
from services.cache.tool_ranker import ToolRanker
from services.common.config import SwitchyardConfig
from services.common.grpc_server import run_grpc_service
from services.common.reload import LiveConfig, start_reloading
from services.common.triton import LazyTritonModels, set_call_deadline
from switchyard.v1 import cache_pb2, cache_pb2_grpc

log = logging.getLogger("switchyard.cache")


def lookup_to_proto(result: LookupResult) -> cache_pb2.LookupResponse:
    return cache_pb2.LookupResponse(
        has_opinion=not result.bypass_reason,
        bypass_reason=result.bypass_reason,
        matches=[cache_pb2.CacheMatch(model=m.model, category=m.category, similarity=m.similarity, body=m.body,
                                      entry_id=m.entry_id, route_fingerprint=m.route_fingerprint, check=m.check)
                 for m in result.matches],
    )


class CacheServicer(cache_pb2_grpc.CacheServicer):
    """Thin adapter: proto in, SemanticCache, proto out; an unreachable embedder or store is UNAVAILABLE."""

    def __init__(self, cache: SemanticCache) -> None:
        self.cache = cache

    async def Lookup(self, request: cache_pb2.LookupRequest,
                     context: grpc.aio.ServicerContext) -> cache_pb2.LookupResponse:
        set_call_deadline(context.time_remaining())
        try:
            return lookup_to_proto(await self.cache.lookup(request.request))
        except EmbedderUnavailableError as exc:
            self.cache.metrics.errors.labels("embedder").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cache: embedding model unavailable: {exc}")
        except StoreUnavailableError as exc:
            self.cache.metrics.errors.labels("store").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cache: vector store unavailable: {exc}")
        raise AssertionError("unreachable: abort raises")

    async def Store(self, request: cache_pb2.StoreRequest,
                    context: grpc.aio.ServicerContext) -> cache_pb2.StoreResponse:
        result = self.cache.submit(request.request, request.model, request.category, request.body,
                                   request.route_fingerprint)
        return cache_pb2.StoreResponse(stored=result.queued, reason=result.reason)


class ToolRankingServicer(cache_pb2_grpc.ToolRankingServicer):
    """Thin adapter of ToolRanker; an unreachable embedder is UNAVAILABLE (the front then keeps every tool)."""

    def __init__(self, ranker: ToolRanker, metrics: CacheMetrics) -> None:
        self.ranker = ranker
        self.metrics = metrics

    async def RankTools(self, request: cache_pb2.RankToolsRequest,
                        context: grpc.aio.ServicerContext) -> cache_pb2.RankToolsResponse:
        set_call_deadline(context.time_remaining())
        try:
            scores = await self.ranker.rank(request.query, [(t.key, t.text) for t in request.tools])
        except EmbedderUnavailableError as exc:
            self.metrics.errors.labels("embedder").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cache: embedding model unavailable: {exc}")
        return cache_pb2.RankToolsResponse(similarity=scores)


def add_servicers(server: grpc.aio.Server, cache: SemanticCache, ranker: ToolRanker) -> None:
    cache_pb2_grpc.add_CacheServicer_to_server(CacheServicer(cache), server)
    cache_pb2_grpc.add_ToolRankingServicer_to_server(ToolRankingServicer(ranker, cache.metrics), server)


async def serve(config: SwitchyardConfig, config_path: Path | None = None) -> None:
    section = config.cache
    metrics = CacheMetrics()
    models = LazyTritonModels(config.triton)  # one client for the embedder and the pair classifier
    embedder = TritonEmbedder(config.triton, models=models)
    cache = SemanticCache(section, open_store(section, embedder), embedder, metrics,
                          pair_scorer=TritonPairScorer(models))
    await cache.start()
    live = LiveConfig(config)
    live.on_change(lambda new: cache.reconfigure(new.cache))
    reload_task: asyncio.Task[None] | None = None

    async def start_reloading_config() -> None:
        nonlocal reload_task
        reload_task = start_reloading(config_path, live, metrics.registry)

    async def shutdown() -> None:
        if reload_task is not None:
            reload_task.cancel()
        await cache.close()
        await embedder.close()

    await run_grpc_service(
        "cache",
        section.host,
        section.port,
        section.metrics_port,
        lambda server: add_servicers(server, cache, ToolRanker(embedder)),
        [cache_pb2.DESCRIPTOR.services_by_name["Cache"].full_name,
         cache_pb2.DESCRIPTOR.services_by_name["ToolRanking"].full_name],
        on_shutdown=shutdown, on_started=start_reloading_config,
        registry=metrics.registry,
    )
