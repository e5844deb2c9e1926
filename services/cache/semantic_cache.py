"""The semantic cache: scoped similarity lookup, and a bounded write queue that embeds and stores answers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np

from services.cache.embedder import Embedder, EmbedderUnavailableError
from services.cache.metrics import CacheMetrics
from services.cache.pair_model import PairModelUnavailableError, PairScorer
from services.cache.policy import (NO_FINGERPRINT, NO_USER_MESSAGE, PAIR_CANDIDATES, PAIR_MODEL, PAIR_MODEL_FAILED,
                                   PAIR_MODEL_REJECTED, CachePolicy, Step, StoreRefusal, completion_from_body)
from services.cache.scope import CacheScope, NoFingerprintError, NoUserMessageError, scope_of
from services.cache.store import CacheEntry, CacheStore, ScopeFilter, StoredHit, StoreUnavailableError, evict
from services.cache.verify import verify
from services.common.config import CacheConfig
from services.common.triton import CALL_DEADLINE
from switchyard.v1 import common_pb2

log = logging.getLogger("switchyard.cache")

T = TypeVar("T")

# Candidates fetched per lookup: enough for one match per model/category in a scope.
SEARCH_LIMIT = 16
# Writes embedded together in one Triton call.
WRITE_BATCH = 32
QUEUE_FULL = "queue-full"
QUEUED = "queued"
# Kept back from the served call's deadline for the reply after the pair classifier answers.
PAIR_REPLY_MARGIN_S = 0.005


@dataclass(frozen=True)
class Match:
    """A stored answer that may serve the request, for one model/category/route."""

    model: str
    category: str
    similarity: float
    body: bytes
    entry_id: str
    # The route the answer came from (services/common/cache_fingerprint.route_fingerprint).
    route_fingerprint: str = ""
    # Which check passed: an Agreement value ("exact", "lexical", ...), PAIR_MODEL or SIMILARITY_ONLY.
    check: str = ""


@dataclass(frozen=True)
class LookupResult:
    matches: list[Match]
    # Why the cache did not look; empty when it did.
    bypass_reason: str = ""


@dataclass(frozen=True)
class StoreResult:
    queued: bool
    reason: str


@dataclass(frozen=True)
class _Write:
    scope: CacheScope
    model: str
    category: str
    body: str
    route: str


def _route(hit: StoredHit) -> tuple[str, str, str]:
    return hit.model, hit.category, hit.route


def _match(hit: StoredHit, check: str) -> Match:
    return Match(hit.model, hit.category, hit.similarity, hit.body.encode(), hit.id, route_fingerprint=hit.route,
                 check=check)


def _best_per_route(served: list[tuple[Match, StoredHit]]) -> list[tuple[Match, StoredHit]]:
    """The most similar served candidate of each model/category/route."""
    best: dict[tuple[str, str, str], tuple[Match, StoredHit]] = {}
    for match, hit in served:
        key = _route(hit)
        if key not in best or match.similarity > best[key][0].similarity:
            best[key] = (match, hit)
    return list(best.values())


class SemanticCache:
    """Lookups run on the caller's task; writes go through a bounded queue drained by one worker.

    Hits are recorded (hit count, last use for LRU) in a small coalescing map that the worker applies
    before its next write or purge, so that heavy hit traffic never takes room from writes.
    """

    def __init__(self, config: CacheConfig, store: CacheStore, embedder: Embedder, metrics: CacheMetrics,
                 clock: Callable[[], float] = time.time, pair_scorer: PairScorer | None = None) -> None:
        self.config = config
        self.policy = CachePolicy(config)
        self.store = store
        self.embedder = embedder
        # Asked when cache.pair_model is on; without one, what it would judge is never served.
        self.pair_scorer = pair_scorer
        self.metrics = metrics
        self.clock = clock
        self._queue: asyncio.Queue[_Write] = asyncio.Queue(maxsize=config.write_queue_size)
        self._touches: dict[str, int] = {}  # entry id -> new hit count
        # The store's calls block (disk, or HTTP for the server backend); keep them off the event loop.
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cache-store")
        self._worker: asyncio.Task[None] | None = None
        # Expired entries are already invisible to lookups (filtered by created_at); purging just frees space.
        self._expire_every_s = min(60.0, max(1.0, config.ttl_s / 10))
        # Deleted entries keep their disk space until a compaction; it briefly stalls the process
        # (the embedded engine holds the GIL), so it runs at start and then once per this many deletions.
        self._compact_after = max(10_000, config.max_entries)
        self._deleted = 0

    def reconfigure(self, config: CacheConfig) -> None:
        """A new policy (hot reload): thresholds, TTL, size, scope rules. The store and its queue stay."""
        self.config, self.policy = config, CachePolicy(config)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))

    # Life cycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._run(self.store.compact)
            self.metrics.entries.set(await self._run(self.store.count))
        except StoreUnavailableError as exc:
            # Serve anyway: lookups answer UNAVAILABLE (the front fails open) until the store is back.
            log.warning("cache: the vector store is unavailable at start (%s); retrying on every call", exc)
        self._worker = asyncio.create_task(self._work(), name="cache-writes")

    async def drain(self) -> None:
        """Wait until every queued write and recorded hit is applied."""
        await self._queue.join()
        if self._touches:
            await self._run(self._write, [], self._take_touches())

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Apply what is queued (for at most `drain_timeout_s`), then flush and close the store."""
        if self._worker is not None:
            try:
                await asyncio.wait_for(self._queue.join(), drain_timeout_s)
            except TimeoutError:
                log.warning("cache: %d queued writes lost at shutdown", self._queue.qsize())
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        await self._run(self.store.close)
        self._executor.shutdown(wait=True)

    # Lookup --------------------------------------------------------------------------------------

    async def lookup(self, context: common_pb2.RequestContext) -> LookupResult:
        """Matches for every model (and route) whose stored answer is close enough, in the same scope, and
        asks what this request asks (services/cache/verify.py).

        Raises EmbedderUnavailableError when the embedding model cannot answer.
        """
        reason = self.policy.lookup_bypass(context)
        scope: CacheScope | None = None
        if reason is None:
            try:
                scope = scope_of(context)
            except NoUserMessageError:
                reason = NO_USER_MESSAGE
            except NoFingerprintError:
                reason = NO_FINGERPRINT
        if reason is not None or scope is None:
            self.metrics.bypasses.labels("lookup", reason).inc()
            return LookupResult([], reason or NO_USER_MESSAGE)

        started = time.perf_counter()
        vector = (await self.embedder.embed([scope.query]))[0]
        embedded = time.perf_counter()
        where = ScopeFilter(scope.fields(), created_after=self.clock() - self.config.ttl_s)
        hits = await self._run(self.store.search, vector, where, SEARCH_LIMIT, self.policy.lowest_threshold)
        searched = time.perf_counter()
        # Off the event loop: comparing long texts takes a few milliseconds.
        served, asked = await self._run(self._screen, scope.query, hits) if hits else ([], [])
        screened = time.perf_counter()
        # On this task, so that the served call's deadline (services.common.triton.CALL_DEADLINE) bounds it.
        if asked:
            served += await self._ask_pair_model(scope.query, asked)
        done = time.perf_counter()
        stages = [("embed", embedded - started), ("search", searched - embedded), ("verify", screened - searched)]
        if asked:
            stages.append(("pair_model", done - screened))
        for stage, seconds in (*stages, ("total", done - started)):
            self.metrics.lookup_latency.labels(stage).observe(seconds)

        found = _best_per_route(served)
        for match, hit in found:
            self._record_hit(hit.id, hit.hits + 1)
            self.metrics.matches.labels(match.check).inc()
        (self.metrics.hits if found else self.metrics.misses).inc()
        return LookupResult(sorted((m for m, _ in found), key=lambda m: -m.similarity))

    def _screen(self, query: str, hits: list[StoredHit]) -> tuple[list[tuple[Match, StoredHit]], list[StoredHit]]:
        """In the store thread: the text checks on every candidate (best first). Returns the candidates they
        serve and those left to the pair classifier (at most cache.pair_candidates, and only where no better
        candidate of the same model/category/route was served already); the rest are counted by reason."""
        served: list[tuple[Match, StoredHit]] = []
        asked: list[StoredHit] = []
        decided: set[tuple[str, str, str]] = set()
        for hit in hits:  # best first
            key = _route(hit)
            if key in decided or not self.policy.model_enabled(hit.model):
                continue
            screening = self.policy.screen(verify(query, hit.query), hit.similarity, hit.category)
            if screening.step is Step.SERVE:
                served.append((_match(hit, screening.check), hit))
                decided.add(key)
            elif screening.step is Step.ASK_PAIR_MODEL and len(asked) < self.config.pair_candidates:
                asked.append(hit)
            else:
                self.metrics.rejections.labels(screening.rejection or PAIR_CANDIDATES).inc()
        return served, asked

    async def _ask_pair_model(self, query: str, asked: list[StoredHit]) -> list[tuple[Match, StoredHit]]:
        """One batched call to the pair classifier; what it does not accept in time is not served."""
        try:
            scores = await self._pair_scores([(hit.query, query) for hit in asked])
        except PairModelUnavailableError as exc:
            log.warning("cache: pair classifier unavailable, %d candidates not served: %s", len(asked), exc)
            self.metrics.pair_model_calls.labels(exc.reason).inc()
            self.metrics.rejections.labels(PAIR_MODEL_FAILED).inc(len(asked))
            return []
        self.metrics.pair_model_calls.labels("ok").inc()
        accepted = []
        for hit, score in zip(asked, scores.tolist()):
            self.metrics.pair_scores.observe(score)
            if self.policy.pair_accepts(score):
                accepted.append((_match(hit, PAIR_MODEL), hit))
            else:
                self.metrics.rejections.labels(PAIR_MODEL_REJECTED).inc()
        return accepted

    async def _pair_scores(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        if self.pair_scorer is None:
            raise PairModelUnavailableError("unavailable", "no pair classifier configured in this process")
        deadline = CALL_DEADLINE.get()
        budget = None if deadline is None else deadline - time.monotonic() - PAIR_REPLY_MARGIN_S
        if budget is not None and budget <= 0:
            raise PairModelUnavailableError("timeout", "the lookup's deadline is spent before the pair classifier")
        try:
            scores = await asyncio.wait_for(self.pair_scorer.same_scores(pairs), budget)
        except TimeoutError:
            raise PairModelUnavailableError("timeout", f"no answer within the lookup's deadline ({budget:.3f} s)") \
                from None
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(pairs):
            raise PairModelUnavailableError("error", f"{len(scores)} scores for {len(pairs)} pairs")
        return scores

    # Store ---------------------------------------------------------------------------------------

    def submit(self, context: common_pb2.RequestContext, model: str, category: str, body: bytes,
               route_fingerprint: str = "") -> StoreResult:
        """Check the answer and queue it for embedding + upsert; never waits."""
        reason = self.policy.store_bypass(context, model)
        if reason is None:
            try:
                scope = scope_of(context)
                completion = completion_from_body(body)
            except NoUserMessageError:
                reason = NO_USER_MESSAGE
            except NoFingerprintError:
                reason = NO_FINGERPRINT
            except StoreRefusal as refusal:
                self.metrics.bypasses.labels("store", refusal.reason).inc()
                return StoreResult(False, str(refusal))
        if reason is not None:
            self.metrics.bypasses.labels("store", reason).inc()
            return StoreResult(False, reason)
        write = _Write(scope, model or str(completion.get("model", "")), category,
                       json.dumps(completion, separators=(",", ":"), ensure_ascii=False), route_fingerprint)
        try:
            self._queue.put_nowait(write)
        except asyncio.QueueFull:
            self.metrics.write_drops.inc()
            return StoreResult(False, QUEUE_FULL)
        return StoreResult(True, QUEUED)

    def _record_hit(self, entry_id: str, hits: int) -> None:
        # Bounded like the queue; beyond it a hit goes unrecorded, which only blurs the LRU order.
        if entry_id in self._touches or len(self._touches) < self.config.write_queue_size:
            self._touches[entry_id] = max(hits, self._touches.get(entry_id, 0))

    def _take_touches(self) -> dict[str, int]:
        touches, self._touches = self._touches, {}
        return touches

    # Write worker --------------------------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        next_expiry = loop.time()
        while True:
            writes: list[_Write] = []
            try:
                writes.append(await asyncio.wait_for(self._queue.get(), max(0.0, next_expiry - loop.time())))
                while len(writes) < WRITE_BATCH and not self._queue.empty():
                    writes.append(self._queue.get_nowait())
            except TimeoutError:
                pass
            try:
                if writes or self._touches:
                    await self._apply(writes)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the worker must outlive one bad batch
                log.exception("cache: applying %d queued writes failed", len(writes))
                self.metrics.writes.labels("failed").inc(len(writes))
            finally:
                for _ in writes:
                    self._queue.task_done()
            if loop.time() >= next_expiry:
                next_expiry = loop.time() + self._expire_every_s
                try:
                    await self._run(self._expire)
                except Exception:  # noqa: BLE001
                    log.exception("cache: purging expired entries failed")

    async def _apply(self, writes: list[_Write]) -> None:
        entries: list[CacheEntry] = []
        if writes:
            try:
                vectors = await self.embedder.embed([w.scope.query for w in writes])
            except EmbedderUnavailableError as exc:
                log.warning("cache: %d answers not stored: %s", len(writes), exc)
                self.metrics.writes.labels("embedder_unavailable").inc(len(writes))
            else:
                now = self.clock()
                entries = [CacheEntry(id=w.scope.entry_id(w.model, w.category, w.route), vector=vector,
                                      scope=w.scope.fields(), model=w.model, category=w.category,
                                      query=w.scope.query, body=w.body, created_at=now, route=w.route)
                           for w, vector in zip(writes, vectors)]
        evicted, count = await self._run(self._write, entries, self._take_touches())
        if entries:
            self.metrics.writes.labels("stored").inc(len(entries))
        self.metrics.evictions.inc(evicted)
        self.metrics.entries.set(count)

    def _write(self, entries: list[CacheEntry], touches: dict[str, int]) -> tuple[int, int]:
        """In the store thread: record hits, upsert, keep the size bound; returns (evicted, count)."""
        now = self.clock()
        # Hits first, so that LRU eviction below sees them.
        for entry_id, hits in touches.items():
            try:
                self.store.touch(entry_id, hits, now)
            except Exception:  # noqa: BLE001 - the entry may have been evicted meanwhile
                log.debug("cache: recording a hit on %s failed", entry_id, exc_info=True)
        if entries:
            self.store.upsert(entries)
        evicted = evict(self.store, self.config.max_entries, self.policy.eviction_order) if entries else 0
        self._note_deleted(evicted)
        return evicted, self.store.count()

    def _expire(self) -> None:
        before = self.store.count()
        self.store.expire(self.clock() - self.config.ttl_s)
        after = self.store.count()
        self._note_deleted(before - after)
        self.metrics.entries.set(after)

    def _note_deleted(self, count: int) -> None:
        """In the store thread: compact once enough entries were deleted since the last time."""
        self._deleted += count
        if self._deleted >= self._compact_after:
            started = time.perf_counter()
            self.store.compact()
            log.info("cache: compacted after %d deletions in %.2f s", self._deleted, time.perf_counter() - started)
            self._deleted = 0
