"""Hot reload for every process: one frozen config snapshot at a time, swapped whole, never half-updated.

Each process holds a `LiveConfig`. Work takes the snapshot once when it starts (an ext_proc stream,
a service call) and uses that one object to the end, so a reload in between never mixes two
configs in one request. A file that fails validation is rejected and the snapshot in force stays;
since every process validates the same file with the same code, a bad file is rejected everywhere.

What a reload changes: policy (routing, models, categories, guard and cache policies, thresholds,
deadlines, admission). What it cannot change while running: listening ports and the addresses the
front dials; those need a restart, and a reload that changes them says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from services.common.config import ConfigError, SwitchyardConfig, load_config

log = logging.getLogger("switchyard.config")

POLL_INTERVAL_S = 1.0


class LiveConfig:
    """The config snapshot in force in this process, and who wants to hear of a new one."""

    def __init__(self, config: SwitchyardConfig) -> None:
        self._current = config
        self._listeners: list[Callable[[SwitchyardConfig], None]] = []

    @property
    def current(self) -> SwitchyardConfig:
        return self._current

    def on_change(self, listener: Callable[[SwitchyardConfig], None]) -> None:
        self._listeners.append(listener)

    def swap(self, config: SwitchyardConfig) -> None:
        old, self._current = self._current, config
        for problem in restart_needed(old, config):
            log.warning("config reload: %s changed; it takes effect only after a restart", problem)
        for listener in self._listeners:
            listener(config)


def restart_needed(old: SwitchyardConfig, new: SwitchyardConfig) -> list[str]:
    """The keys whose change a running process cannot apply (it listens or dials where it started)."""
    keys = []
    for section in ("front", "decision", "guard", "cache", "triton", "envoy", "simulator"):
        for key in ("host", "port", "grpc_port", "http_port", "metrics_port", "address", "listener_port",
                    "admin_port"):
            before, after = getattr(getattr(old, section), key, None), getattr(getattr(new, section), key, None)
            if before != after:
                keys.append(f"{section}.{key}")
    if [b.model_dump() for b in old.backends] != [b.model_dump() for b in new.backends]:
        keys.append("backends (Envoy's clusters)")
    return keys


class ConfigReloader:
    """Watches one config file (polling, and SIGHUP); swaps a valid new config into `live`."""

    def __init__(self, path: Path, live: LiveConfig,
                 on_result: Callable[[str], None] = lambda result: None) -> None:
        self.path = path
        self.live = live
        self.on_result = on_result
        self._stamp = self._current_stamp()

    def _current_stamp(self) -> tuple[float, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def reload(self) -> bool:
        """Load the file now; True when the new config is in force."""
        self._stamp = self._current_stamp()
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            log.error("config reload rejected, the previous config stays in force:\n%s", exc)
            self.on_result("rejected")
            return False
        self.live.swap(config)
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


def start_reloading(path: Path | None, live: LiveConfig, registry: CollectorRegistry) -> asyncio.Task[None] | None:
    """Watch `path` for the process's lifetime, counting results in switchyard_config_reloads_total."""
    if path is None:
        return None
    reloads = Counter("switchyard_config_reloads", "Config reloads by result (applied/rejected).", ["result"],
                      registry=registry)
    reloader = ConfigReloader(path, live, lambda result: reloads.labels(result).inc())
    return asyncio.create_task(reloader.watch())
