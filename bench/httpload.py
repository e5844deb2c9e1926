"""Low-overhead HTTP/1.1 load generator, run as its own process pinned to one core: job JSON in, results JSON out.

Raw asyncio streams instead of httpx: a request costs tens of microseconds of client CPU, so the client
does not eat the 2-core machine it measures; its own CPU time is reported next to every figure.
Modes: ``closed`` (N connections back to back), ``open`` (fixed arrival rate; latency counted from the
scheduled send time so a slow server cannot hide queueing), ``list`` (each body once, headers captured).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bench.prompts import UNIQUE_MARK as PROMPT_MARK

REQUEST_TIMEOUT_S = 30.0
MAX_OPEN_CONNECTIONS = 512
# Replaced in every request by a letter code of its sequence number (same width, so the content-length holds).
UNIQUE_MARK = PROMPT_MARK.encode()
_LETTERS = b"abcdefghijklmnopqrstuvwxyz"


def _first_number() -> int:
    """A random start for a job's request numbers: two jobs (rounds, paths) never send the same texts."""
    return int.from_bytes(os.urandom(4), "big") % (len(_LETTERS) ** len(UNIQUE_MARK) // 2)


def stamped(raw: bytes, number: int) -> bytes:
    """raw with UNIQUE_MARK (if any) replaced by a 7-letter code of number: every request a new text."""
    if UNIQUE_MARK not in raw:
        return raw
    code = bytearray()
    for _ in range(len(UNIQUE_MARK)):
        number, digit = divmod(number, len(_LETTERS))
        code.append(_LETTERS[digit])
    return raw.replace(UNIQUE_MARK, bytes(code))


@dataclass
class Results:
    """One row per request; columns kept as flat lists so the JSON stays small."""

    lat_ms: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    outcome: list[str] = field(default_factory=list)  # backend, blocked, hit, error
    headers: list[dict[str, str]] = field(default_factory=list)
    # Seconds from the start of the run to when each request was due (open loop with "times": true).
    sent_s: list[float] = field(default_factory=list)

    def add(self, index: int, lat_ms: float, status: int, outcome: str, headers: dict[str, str] | None,
            sent_s: float | None = None) -> None:
        if sent_s is not None:
            self.sent_s.append(round(sent_s, 3))
        self.index.append(index)
        self.lat_ms.append(round(lat_ms, 3))
        self.status.append(status)
        self.outcome.append(outcome)
        if headers is not None:
            self.headers.append(headers)


class Connection:
    """One keep-alive HTTP/1.1 connection; reopened after any error."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        else:
            body = await self.reader.read()
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _raw_requests(job: dict[str, Any]) -> list[bytes]:
    url = urlsplit(job["url"])
    extra = "".join(f"{k}: {v}\r\n" for k, v in (job.get("headers") or {}).items())
    out = []
    for body in job["bodies"]:
        data = body.encode()
        out.append((f"POST {url.path or '/'} HTTP/1.1\r\nhost: {url.hostname}:{url.port}\r\n"
                    f"content-type: application/json\r\ncontent-length: {len(data)}\r\n{extra}\r\n").encode() + data)
    return out


def _outcome(status: int, headers: dict[str, str], body: bytes) -> str:
    if status != 200:
        return "error"
    if headers.get("x-vsr-cache-hit") == "true":
        return "hit"
    if b"content_filter" in body:
        return "blocked"
    return "backend"


async def _one(conn: Connection, raw: bytes, capture: list[str] | None) -> tuple[int, str, dict[str, str] | None]:
    try:
        status, headers, body = await asyncio.wait_for(conn.request(raw), REQUEST_TIMEOUT_S)
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError):
        conn.close()
        return 0, "error", ({} if capture is not None else None)
    kept = {k: headers[k] for k in capture if k in headers} if capture is not None else None
    return status, _outcome(status, headers, body), kept


async def closed_loop(job: dict[str, Any], raws: list[bytes], results: Results) -> None:
    url = urlsplit(job["url"])
    deadline = time.perf_counter() + float(job["duration_s"])
    counter = iter(range(_first_number(), 1 << 62))

    capture = job.get("capture")  # header names to keep per request (None: keep none)
    # Wait as a well-behaved client does (the OpenAI SDKs honour Retry-After) instead of retrying a 429 at once.
    honor_retry_after = bool(job.get("honor_retry_after")) and capture is not None and "retry-after" in capture

    async def worker() -> None:
        conn = Connection(url.hostname or "127.0.0.1", url.port or 80)
        while time.perf_counter() < deadline:
            n = next(counter)
            i = n % len(raws)
            started = time.perf_counter()
            status, outcome, kept = await _one(conn, stamped(raws[i], n), capture)
            results.add(i, (time.perf_counter() - started) * 1000, status, outcome, kept)
            if honor_retry_after and status == 429 and kept is not None:
                await asyncio.sleep(min(5.0, float(kept.get("retry-after", "1"))))
        conn.close()

    await asyncio.gather(*(worker() for _ in range(int(job["concurrency"]))))


async def open_loop(job: dict[str, Any], raws: list[bytes], results: Results) -> None:
    url = urlsplit(job["url"])
    rate, duration = float(job["rate"]), float(job["duration_s"])
    idle: list[Connection] = []
    opened = 0
    tasks: set[asyncio.Task[None]] = set()

    times = bool(job.get("times"))

    async def fire(i: int, scheduled: float) -> None:
        nonlocal opened
        conn = idle.pop() if idle else Connection(url.hostname or "127.0.0.1", url.port or 80)
        status, outcome, _ = await _one(conn, stamped(raws[i % len(raws)], first + i), None)
        results.add(i % len(raws), (time.perf_counter() - scheduled) * 1000, status, outcome, None,
                    scheduled - start if times else None)
        idle.append(conn)

    first = _first_number()
    start = time.perf_counter()
    total = int(rate * duration)
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= MAX_OPEN_CONNECTIONS:
            # The server is this far behind: count the request as an error instead of growing without bound.
            results.add(i % len(raws), 0.0, 0, "error", None, scheduled - start if times else None)
            continue
        task = asyncio.create_task(fire(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()


async def send_list(job: dict[str, Any], raws: list[bytes], results: Results) -> None:
    url = urlsplit(job["url"])
    capture = [h.lower() for h in job.get("capture_headers", [])]
    queue = iter(range(len(raws)))

    async def worker() -> None:
        conn = Connection(url.hostname or "127.0.0.1", url.port or 80)
        for i in queue:
            started = time.perf_counter()
            status, outcome, headers = await _one(conn, raws[i], capture)
            results.add(i, (time.perf_counter() - started) * 1000, status, outcome, headers)
        conn.close()

    await asyncio.gather(*(worker() for _ in range(int(job.get("concurrency", 1)))))


MODES = {"closed": closed_loop, "open": open_loop, "list": send_list}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    if job.get("core") is not None:
        os.sched_setaffinity(0, {int(job["core"])})
    raws = _raw_requests(job)
    results = Results()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    asyncio.run(MODES[job["mode"]](job, raws, results))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    out = {k: v for k, v in results.__dict__.items() if v or k != "headers"}
    out.update(wall_s=round(wall, 3), client_cpu_s=round(cpu, 3), sent=len(results.lat_ms))
    return out


if __name__ == "__main__":
    json.dump(run_job(json.load(sys.stdin)), sys.stdout)
