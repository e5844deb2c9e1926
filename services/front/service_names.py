"""The mesh services the front asks, as one enum (config section names, metric labels, header values)."""

from __future__ import annotations

from enum import Enum


class Service(str, Enum):
    DECISION = "decision"
    GUARD = "guard"
    CACHE = "cache"
