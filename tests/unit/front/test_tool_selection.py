"""Tool auto-selection: what is kept, what is cut, and when nothing is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.common.config import parse_config
from services.front.apis import ANTHROPIC, CHAT, RESPONSES, ToolRef
from services.front.tool_selection import (ToolCatalogueError, ToolSelector, choose, load_catalogue,
                                           selection_query, tool_text)
from tests.conftest import example_config_data

NAMES = [f"tool_{i}" for i in range(10)]


def config(**tools):
    data = example_config_data()
    data["routing"]["tools"] = tools
    return parse_config(data)


def chat_body(**extra) -> dict:
    return {"model": "MoM", "messages": [{"role": "user", "content": "What is the weather in Oslo today?"}],
            "tools": [{"type": "function", "function": {"name": n, "description": f"does {n}"}} for n in NAMES],
            **extra}


class FakeSelector(ToolSelector):
    """The ranking call answered by a script: tool_i scores i/10 (tool_9 best)."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self.queries: list[str] = []

    async def _rank(self, config, query, texts, settings):  # type: ignore[override]
        self.queries.append(query)
        return [int(t.split(":")[0].split()[-1]) / 10 if t.startswith("tool") else 0.9 for t in texts]


def test_tool_text_spells_names_as_words() -> None:
    assert tool_text("getWeather", "Now.") == "get Weather: Now."
    assert tool_text("math.gcd_of", "") == "math gcd of"


def test_choose_keeps_top_k_over_threshold_unranked_and_always() -> None:
    refs = [ToolRef(i, n, "") for i, n in enumerate(NAMES)] + [ToolRef(10, "", "", rankable=False)]
    scores = {i: i / 10 for i in range(10)}
    assert choose(refs, scores, 3, 0.0, set()) == [7, 8, 9, 10]
    assert choose(refs, scores, 3, 0.85, set()) == [9, 10]
    assert choose(refs, scores, 3, 0.85, {"tool_0"}) == [0, 9, 10]


def test_selection_query_takes_the_turn_before_a_short_one() -> None:
    request = CHAT.parse(json.dumps({"model": "MoM", "messages": [
        {"role": "user", "content": "Book a table for four at an Italian place tonight"},
        {"role": "assistant", "content": "Which area?"}, {"role": "user", "content": "Downtown"}]}).encode())
    assert selection_query(request) == "Book a table for four at an Italian place tonight Downtown"


async def test_auto_cuts_to_top_k_and_counts_the_tokens() -> None:
    selector = FakeSelector()
    request = CHAT.parse(json.dumps(chat_body()).encode())
    selection = await selector.select(config(top_k=3), request)
    assert selection is not None and selection.keep == [7, 8, 9] and selection.header == ("x-vsr-tools-selected",
                                                                                           "3/10")
    assert selection.tokens_saved > 0
    out = selection.apply(CHAT, request.body)
    assert [t["function"]["name"] for t in out["tools"]] == ["tool_7", "tool_8", "tool_9"]
    assert len(request.body["tools"]) == 10  # the client's body is not changed in place


async def test_forced_and_called_tools_stay() -> None:
    body = chat_body(tool_choice={"type": "function", "function": {"name": "tool_1"}})
    body["messages"] = [body["messages"][0], {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "tool_2", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"}]
    selection = await FakeSelector().select(config(top_k=3), CHAT.parse(json.dumps(body).encode()))
    assert selection is not None and selection.keep == [1, 2, 7, 8, 9]


@pytest.mark.parametrize("extra, settings", [
    ({"tool_choice": "none"}, {}), ({"tool_choice": "required"}, {}), ({}, {"enabled": False}),
    ({}, {"min_tools": 11})])
async def test_left_alone(extra: dict, settings: dict) -> None:
    selector = FakeSelector()
    assert await selector.select(config(**settings), CHAT.parse(json.dumps(chat_body(**extra)).encode())) is None


async def test_responses_and_anthropic_tools() -> None:
    selector = FakeSelector()
    tools = [{"type": "function", "name": n, "description": f"does {n}"} for n in NAMES]
    request = RESPONSES.parse(json.dumps({"model": "MoM", "input": "weather in Oslo please, today",
                                          "tools": [*tools, {"type": "web_search"}]}).encode())
    selection = await selector.select(config(top_k=2), request)
    assert selection is not None and selection.keep == [8, 9, 10] and selection.header[1] == "3/11"
    request = ANTHROPIC.parse(json.dumps({"model": "MoM", "max_tokens": 10, "tool_choice": {"type": "tool",
                                                                                            "name": "tool_0"},
                                          "messages": [{"role": "user", "content": "weather in Oslo please"}],
                                          "tools": [{"name": n, "description": "", "input_schema": {}}
                                                    for n in NAMES]}).encode())
    selection = await selector.select(config(top_k=2), request)
    assert selection is not None and selection.keep == [0, 8, 9]


def test_catalogue_shape(tmp_path: Path) -> None:
    path = tmp_path / "tools_db.json"
    path.write_text(json.dumps([{"tool": {"type": "function", "function": {
        "name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}},
        "description": "Current weather, temperature", "category": "weather", "tags": ["rain"]}]))
    [tool] = load_catalogue(path)
    assert tool.function["name"] == "get_weather" and tool.text == "get weather: Current weather, temperature rain"
    path.write_text(json.dumps([{"function": {}}]))
    with pytest.raises(ToolCatalogueError, match="tool.function.name"):
        load_catalogue(path)


async def test_catalogue_adds_tools_to_a_request_without_any(tmp_path: Path) -> None:
    path = tmp_path / "tools_db.json"
    path.write_text(json.dumps([{"tool": {"type": "function", "function": {"name": "tool_9", "description": "x"}}},
                                {"tool": {"type": "function", "function": {"name": "tool_0", "description": "y"}}}]))
    selector = FakeSelector()
    request = ANTHROPIC.parse(json.dumps({"model": "MoM", "max_tokens": 10, "messages": [
        {"role": "user", "content": "weather in Oslo please"}]}).encode())
    selection = await selector.select(config(catalogue_file=str(path), similarity_threshold=0.5), request)
    assert selection is not None and [f["name"] for f in selection.added] == ["tool_9"]
    out = selection.apply(ANTHROPIC, request.body)
    assert out["tools"] == [{"name": "tool_9", "description": "x", "input_schema": {"type": "object",
                                                                                     "properties": {}}}]
