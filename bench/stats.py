"""Percentiles of samples and the median [min, max] of repeated rounds that every reported figure uses."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PERCENTILES = (50, 95, 99)


def percentiles(samples: Sequence[float]) -> dict[str, float | None]:
    if not samples:
        return {f"p{p}": None for p in PERCENTILES}
    values = np.percentile(np.asarray(samples, dtype=float), PERCENTILES)
    return {f"p{p}": round(float(v), 3) for p, v in zip(PERCENTILES, values)}


def spread(values: Iterable[float | None]) -> dict[str, float | None]:
    """Median with min and max over rounds (None rounds are skipped; all None gives None)."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return {"median": None, "min": None, "max": None, "rounds": 0}
    return {"median": round(float(np.median(kept)), 3), "min": round(min(kept), 3),
            "max": round(max(kept), 3), "rounds": len(kept)}


def fmt(s: dict[str, float | None], digits: int = 1) -> str:
    """'12.3 (11.0–14.2)' for a spread; '–' when nothing was measured."""
    if s.get("median") is None:
        return "–"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def thin(samples: Sequence[float], limit: int = 1500) -> list[float]:
    """An evenly spaced subset of the sorted samples: enough for a CDF plot, small enough for the JSON."""
    ordered = sorted(samples)
    if len(ordered) <= limit:
        return ordered
    step = len(ordered) / limit
    return [ordered[int(i * step)] for i in range(limit)] + [ordered[-1]]
