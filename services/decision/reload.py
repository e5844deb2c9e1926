"""Hot reload of the routing policy: on a config file change or SIGHUP, keep the old one if the new is bad."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from services.common.config import ConfigError, SwitchyardConfig, load_config

log = logging.getLogger("switchyard.decision")

POLL_INTERVAL_S = 1.0


class ConfigReloader:
    """Watches one config file; calls `apply` with each new valid config."""

    def __init__(self, path: Path, apply: Callable[[SwitchyardConfig], None],
                 on_result: Callable[[str], None] = lambda result: None) -> None:
        self.path = path
        self.apply = apply
        self.on_result = on_result
        self._stamp = self._current_stamp()

    def _current_stamp(self) -> tuple[float, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def reload(self) -> bool:
        """Load the file now; True when the new policy is in force."""
        self._stamp = self._current_stamp()
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            log.error("config reload rejected, the previous policy stays in force:\n%s", exc)
            self.on_result("rejected")
            return False
        self.apply(config)
        log.info("config reloaded from %s", self.path)
        self.on_result("applied")
        return True

    def check(self) -> bool | None:
        """Reload when the file changed since the last look; None when it did not."""
        stamp = self._current_stamp()
        if stamp is None or stamp == self._stamp:
            return None
        return self.reload()

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            self.check()
