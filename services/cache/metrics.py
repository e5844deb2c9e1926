"""Prometheus metrics of the cache service, on the service's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Lookups are embedding (a Triton round trip) plus a filtered vector search: 0.5 ms .. 1 s.
LOOKUP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
# p("same") of the pair classifier: finer near 1, where cache.pair_threshold sits.
PAIR_SCORE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.hits = Counter("llm_cache_hits", "Lookups that found at least one match.", registry=r)
        self.misses = Counter("llm_cache_misses", "Lookups that found no match.", registry=r)
        self.matches = Counter("switchyard_cache_matches", "Matches returned, by the check that let them through "
                               "(exact, lexical, correction, paraphrase, pair_model; similarity when verification "
                               "is off).", ["check"], registry=r)
        self.rejections = Counter("switchyard_cache_rejections", "Candidates above the search cut-off that were not "
                                  "served, by reason (numbers, negation, entities, ..., similarity; pair-model, "
                                  "pair-model-failed, pair-candidates).", ["reason"], registry=r)
        self.bypasses = Counter("switchyard_cache_bypasses", "Lookups or stores skipped, by operation and reason.",
                                ["operation", "reason"], registry=r)
        self.entries = Gauge("switchyard_cache_entries", "Entries in the cache collection.", registry=r)
        self.evictions = Counter("switchyard_cache_evictions", "Entries removed to stay under max_entries.",
                                 registry=r)
        self.write_drops = Counter("switchyard_cache_write_drops", "Store requests dropped because the write "
                                   "queue was full.", registry=r)
        self.writes = Counter("switchyard_cache_writes", "Entries written by the write worker, by result.",
                              ["result"], registry=r)
        self.lookup_latency = Histogram("switchyard_cache_lookup_seconds", "Lookup latency by stage "
                                        "(embed, search, verify, pair_model, total).", ["stage"], buckets=LOOKUP_BUCKETS, registry=r)
        self.pair_model_calls = Counter("switchyard_cache_pair_model_calls", "Calls to the pair classifier, by "
                                        "outcome (ok, timeout, unavailable, error); a failed call serves none of "
                                        "its candidates.", ["outcome"], registry=r)
        self.pair_scores = Histogram("switchyard_cache_pair_score", "p(same) the pair classifier gave each "
                                     "candidate.", buckets=PAIR_SCORE_BUCKETS, registry=r)
        self.errors = Counter("switchyard_cache_errors", "Lookups that failed, by reason.", ["reason"], registry=r)
