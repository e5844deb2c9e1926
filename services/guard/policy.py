"""Which found PII types block a request outright (the front checks the rest against each model's pii_policy)."""

from __future__ import annotations

from collections.abc import Iterable


def blocking_types(found: Iterable[str], block_types: Iterable[str], mask_types: Iterable[str]) -> list[str]:
    """Found types that block the request whatever model is chosen.

    A type listed in both block_types and mask_types is masked, not blocked: masking is the more
    specific instruction (block_types defaults to CREDIT_CARD and US_SSN, so listing US_SSN under
    mask_types alone is enough to have SSNs masked).
    """
    return sorted(set(found) & set(block_types) - set(mask_types))

