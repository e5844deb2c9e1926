"""Logging set-up shared by every switchyard process."""

from __future__ import annotations

import logging
import sys


def setup_logging(service: str, level: str = "info") -> logging.Logger:
    """Plain one-line logs on stderr; `switchyard up` prefixes each line with the process name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc and uvicorn are chatty at info level; their warnings still show.
    for noisy in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"switchyard.{service}")
