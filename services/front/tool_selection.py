"""Tool auto-selection: only the request's tools closest in meaning to the conversation go to the model.

Agents send dozens of tool definitions with every request; most are irrelevant to the turn at hand and
cost prompt tokens and latency. With tool_choice auto (or absent) the tools are ranked by the cosine
similarity of their name + description to the last user turn (the cache service's embedder: the front
owns no model), and the top k above a threshold are kept — plus, always, every tool the conversation
already called and the tool the client forces. Unranked tools (built-ins such as web_search) are kept.
A selection that cannot be made in time keeps every tool: it saves tokens, it must never cost an answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

from services.common.cache_fingerprint import normalize_text
from services.common.config import SwitchyardConfig, ToolSelectionConfig
from services.common.text_units import estimate_tokens
from services.front.apis.base import ApiTranslator, ToolChoiceMode, ToolRef
from services.front.chat_request import ChatRequest, dumps
from switchyard.v1 import cache_pb2, cache_pb2_grpc

log = logging.getLogger("switchyard.front")

HEADER = "x-vsr-tools-selected"
# The query is the last user turn; a turn shorter than this many characters takes the one before it too
# ("yes, do that" says nothing about which tool).
SHORT_TURN_CHARS = 40
QUERY_CHARS = 2000
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def tool_text(name: str, description: str) -> str:
    """What is embedded for a tool: its name in words (get_weather, getWeather -> get weather) and description."""
    words = _CAMEL.sub(" ", name).replace("_", " ").replace("-", " ").replace(".", " ")
    return f"{words}: {description}" if description else words


def tool_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def selection_query(request: ChatRequest) -> str:
    """The last user turn (with the one before it when it is short), as the services read it."""
    turns = [m.text for m in request.messages if m.role == "user" and m.text.strip()]
    if not turns:
        return ""
    query = turns[-1]
    if len(query) < SHORT_TURN_CHARS and len(turns) > 1:
        query = f"{turns[-2]}\n{query}"
    # Normalised as the cache normalises its query, so that both can share one embedding of the same turn.
    return normalize_text(query[-QUERY_CHARS:])


def choose(refs: list[ToolRef], scores: dict[int, float], top_k: int, threshold: float,
           always: set[str]) -> list[int]:
    """Indexes of the tools kept, in their request order: unranked tools, tools named in `always`, and the
    `top_k` best-scored ones at or above `threshold`."""
    ranked = sorted((r for r in refs if r.rankable and r.index in scores), key=lambda r: -scores[r.index])
    best = {r.index for r in ranked[:top_k] if scores[r.index] >= threshold}
    return [r.index for r in refs if not r.rankable or r.name in always or r.index in best]


@dataclass(frozen=True)
class ToolSelection:
    """The tools that go on: `keep` (indexes into the request's tools) and `added` (catalogue functions)."""

    keep: list[int]
    added: list[dict[str, Any]]
    total: int
    tokens_saved: int

    @property
    def header(self) -> tuple[str, str]:
        return HEADER, f"{len(self.keep) + len(self.added)}/{self.total}"

    def apply(self, api: ApiTranslator, body: dict[str, Any]) -> dict[str, Any]:
        return api.with_tools(body, self.keep, self.added)


@dataclass(frozen=True)
class CatalogueTool:
    function: dict[str, Any]  # an OpenAI function object: name, description, parameters
    text: str


class ToolCatalogueError(ValueError):
    """The configured tools catalogue cannot be read."""


def load_catalogue(path: Path) -> list[CatalogueTool]:
    """The upstream router's tools_db.json: [{"tool": {"type": "function", "function": {...}}, "description",
    "category", "tags"}]; the entry's description and tags are what is ranked."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ToolCatalogueError(f"{path}: cannot read the tools catalogue (routing.tools.catalogue_file): {exc}") \
            from None
    if not isinstance(entries, list):
        raise ToolCatalogueError(f"{path}: the tools catalogue must be a JSON list of entries")
    tools = []
    for i, entry in enumerate(entries):
        function = (entry.get("tool") or {}).get("function") if isinstance(entry, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ToolCatalogueError(f"{path}: entry [{i}] needs tool.function.name (the tools_db.json shape)")
        description = str(entry.get("description") or function.get("description") or "")
        tags = " ".join(str(t) for t in entry.get("tags") or [])
        tools.append(CatalogueTool(function, tool_text(function["name"], f"{description} {tags}".strip())))
    return tools


class ToolSelector:
    """One per front process: the cache service's ToolRanking stub, the catalogue, and the selection metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens_saved = Counter("switchyard_front_tool_tokens_saved",
                                    "Estimated prompt tokens of tool definitions not sent to the model.",
                                    registry=registry)
        self.selections = Counter("switchyard_front_tool_selections",
                                  "Tool selections by result (selected, kept_all, failed, added).",
                                  ["result"], registry=registry)
        self._channel: grpc.aio.Channel | None = None
        self._address = ""
        self._catalogue: tuple[Path, float, list[CatalogueTool]] | None = None

    def _stub(self, address: str) -> cache_pb2_grpc.ToolRankingStub:
        if self._channel is None or self._address != address:
            self._channel = grpc.aio.insecure_channel(address)
            self._address = address
        return cache_pb2_grpc.ToolRankingStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    def catalogue(self, path: Path) -> list[CatalogueTool]:
        mtime = path.stat().st_mtime
        if self._catalogue is None or self._catalogue[:2] != (path, mtime):
            self._catalogue = (path, mtime, load_catalogue(path))
        return self._catalogue[2]

    async def select(self, config: SwitchyardConfig, request: ChatRequest) -> ToolSelection | None:
        """The selection for this request, or None when its tools go on as they are."""
        settings = config.routing.tools
        api: ApiTranslator = request.api
        if not settings.enabled or api is None:
            return None
        choice = api.tool_choice(request.body)
        if choice.mode not in (ToolChoiceMode.AUTO, ToolChoiceMode.FORCED):
            return None
        refs = api.tools(request.body)
        query = selection_query(request)
        if not query:
            return None
        if not refs:
            if settings.catalogue_file is None or choice.mode is not ToolChoiceMode.AUTO:
                return None
            return await self._from_catalogue(config, settings, query)
        rankable = [r for r in refs if r.rankable]
        if len(refs) < settings.min_tools or not rankable:
            return None
        texts = [tool_text(r.name, r.description) for r in rankable]
        scores = await self._rank(config, query, texts, settings)
        if scores is None:
            return None
        always = api.called_tools(request.body) | ({choice.name} if choice.name else set())
        keep = choose(refs, {r.index: s for r, s in zip(rankable, scores)}, settings.top_k,
                      settings.similarity_threshold, always)
        tools = request.body.get("tools") or []
        dropped = [tools[r.index] for r in refs if r.index not in set(keep)]
        return ToolSelection(keep, [], len(refs), estimate_tokens(dumps(dropped).decode()) if dropped else 0)

    async def _from_catalogue(self, config: SwitchyardConfig, settings: ToolSelectionConfig,
                              query: str) -> ToolSelection | None:
        try:
            catalogue = self.catalogue(settings.catalogue_file)  # type: ignore[arg-type]
        except (OSError, ToolCatalogueError) as exc:
            log.warning("tool catalogue not used: %s", exc)
            return None
        if not catalogue:
            return None
        scores = await self._rank(config, query, [t.text for t in catalogue], settings)
        if scores is None:
            return None
        ranked = sorted(range(len(catalogue)), key=lambda i: -scores[i])
        added = [catalogue[i].function for i in ranked[:settings.top_k] if scores[i] >= settings.similarity_threshold]
        return ToolSelection([], added, 0, 0) if added else None

    async def _rank(self, config: SwitchyardConfig, query: str, texts: list[str],
                    settings: ToolSelectionConfig) -> list[float] | None:
        if not config.cache.enabled:
            return None
        request = cache_pb2.RankToolsRequest(query=query, tools=[cache_pb2.ToolText(key=tool_key(t), text=t)
                                                                 for t in texts])
        try:
            answer = await self._stub(config.cache.dial_address).RankTools(
                request, timeout=settings.deadline_ms / 1000.0)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
            detail = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "timeout"
            log.warning("tool ranking failed (%s); every tool is kept", detail)
            self.selections.labels("failed").inc()
            return None
        if len(answer.similarity) != len(texts):
            return None
        return list(answer.similarity)

    def record(self, selection: ToolSelection) -> None:
        if selection.added:
            self.selections.labels("added").inc()
        elif len(selection.keep) < selection.total:
            self.selections.labels("selected").inc()
        else:
            self.selections.labels("kept_all").inc()
        self.tokens_saved.inc(selection.tokens_saved)
