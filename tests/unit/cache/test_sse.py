"""SSE reassembly into one completion, and replay of a completion as SSE."""

from __future__ import annotations

import json

import pytest

from services.common.sse import Uncacheable, cacheable, completion_to_sse, reassemble_sse, uncacheable_reason


def chunk(delta: dict, finish_reason=None, index=0, **extra) -> bytes:
    body = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 7, "model": "m1",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}], **extra}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
STREAM = (chunk({"role": "assistant", "content": ""}) + chunk({"content": "Hello"}) + chunk({"content": " wor"})
          + chunk({"content": "ld"}) + chunk({}, "stop")
          + b"data: " + json.dumps({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 7,
                                    "model": "m1", "choices": [], "usage": USAGE}).encode() + b"\n\n"
          + b"data: [DONE]\n\n")


def test_reassembles_content_finish_reason_and_usage():
    completion = reassemble_sse(STREAM)
    assert completion["object"] == "chat.completion"
    assert completion["id"] == "chatcmpl-9" and completion["model"] == "m1" and completion["created"] == 7
    assert completion["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello world"},
                                      "logprobs": None, "finish_reason": "stop"}]
    assert completion["usage"] == USAGE
    assert cacheable(completion)


def test_crlf_comments_and_no_space_after_colon():
    raw = (b": keep-alive\r\n\r\n" + STREAM.replace(b"data: ", b"data:").replace(b"\n\n", b"\r\n\r\n"))
    assert reassemble_sse(raw)["choices"][0]["message"]["content"] == "Hello world"


def test_chunks_split_across_reads_still_join():
    # The front gathers the streamed body in pieces that need not align with events.
    pieces = [STREAM[i:i + 7] for i in range(0, len(STREAM), 7)]
    assert reassemble_sse(b"".join(pieces)) == reassemble_sse(STREAM)


def test_without_usage():
    raw = chunk({"role": "assistant", "content": "x"}, "length") + b"data: [DONE]\n\n"
    completion = reassemble_sse(raw)
    assert "usage" not in completion
    assert completion["choices"][0]["finish_reason"] == "length"
    assert uncacheable_reason(completion) is Uncacheable.TRUNCATED  # cut off by max_tokens: never cached


def test_several_choices():
    raw = (chunk({"role": "assistant", "content": "a"}, index=0) + chunk({"role": "assistant", "content": "b"}, index=1)
           + chunk({"content": "A"}, "stop", index=0) + chunk({}, "stop", index=1) + b"data: [DONE]\n\n")
    completion = reassemble_sse(raw)
    assert [c["message"]["content"] for c in completion["choices"]] == ["aA", "b"]


def test_tool_calls_and_reasoning():
    raw = (chunk({"role": "assistant", "reasoning_content": "think"})
           + chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                    "function": {"name": "get_", "arguments": "{\"a\""}}]})
           + chunk({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": ": 1}"}}]})
           + chunk({}, "tool_calls") + b"data: [DONE]\n\n")
    completion = reassemble_sse(raw)
    message = completion["choices"][0]["message"]
    assert message["content"] is None and message["reasoning_content"] == "think"
    assert message["tool_calls"] == [{"id": "call_1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": "{\"a\": 1}"}}]
    assert not cacheable(completion)


@pytest.mark.parametrize("raw", [
    b"",
    b"not sse at all",
    STREAM.replace(b"data: [DONE]\n\n", b""),  # cut off
    b"data: {broken json\n\ndata: [DONE]\n\n",
    b'data: {"error": {"message": "boom"}}\n\ndata: [DONE]\n\n',
    b'data: {"object": "chat.completion", "choices": []}\n\ndata: [DONE]\n\n',
    b"data: [DONE]\n\n",
    b"\xff\xfe",
])
def test_not_reassemblable(raw):
    assert reassemble_sse(raw) is None


def test_unfinished_choice_is_not_cacheable():
    raw = chunk({"role": "assistant", "content": "x"}) + b"data: [DONE]\n\n"
    completion = reassemble_sse(raw)
    assert completion["choices"][0]["finish_reason"] is None and not cacheable(completion)


def _answer(content="An answer.", finish_reason="stop", **message):
    return {"finish_reason": finish_reason, "message": {"role": "assistant", "content": content, **message}}


@pytest.mark.parametrize("completion, expected", [
    ({"object": "chat.completion", "choices": [_answer(), _answer("Another.")]}, None),
    ({"choices": [_answer()]}, None),
    ({"object": "chat.completion", "choices": [_answer(), _answer(finish_reason="length")]}, Uncacheable.TRUNCATED),
    ({"object": "chat.completion", "choices": [_answer(), _answer(finish_reason="content_filter")]},
     Uncacheable.CONTENT_FILTER),
    ({"choices": [_answer(None, "tool_calls", tool_calls=[{"id": "c"}])]}, Uncacheable.TOOL_CALLS),
    ({"choices": [_answer(finish_reason=None)]}, Uncacheable.NOT_FINISHED),
    ({"choices": [_answer(None, refusal="I can't help with that.")]}, Uncacheable.REFUSAL),
    ({"choices": [_answer("I'm sorry, but I can't help with that request.")]}, Uncacheable.REFUSAL),
    ({"choices": [_answer("I cannot assist with creating malware.")]}, Uncacheable.REFUSAL),
    ({"choices": [_answer("Sorry for the wait! Here is the recipe: ...")]}, None),
    ({"choices": [_answer("I can help with that. First, ...")]}, None),
    ({"choices": [_answer("   ")]}, Uncacheable.EMPTY),
    ({"object": "chat.completion", "choices": []}, Uncacheable.NOT_A_COMPLETION),
    ({"object": "chat.completion.chunk", "choices": [_answer()]}, Uncacheable.NOT_A_COMPLETION),
])
def test_uncacheable_reason(completion, expected):
    assert uncacheable_reason(completion) is expected
    assert cacheable(completion) is (expected is None)


def events(raw: bytes) -> list:
    assert raw.endswith(b"data: [DONE]\n\n")
    return [json.loads(e[6:]) for e in raw.decode().split("\n\n") if e and e != "data: [DONE]"]


def test_replay_round_trips_and_ends_with_usage_and_done():
    original = reassemble_sse(STREAM)
    original["choices"][0]["message"]["content"] = "A longer answer, " * 20
    replay = completion_to_sse(original)
    chunks = events(replay)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-9" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert 3 <= len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) <= 12
    assert chunks[-1] == {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 7, "model": "m1",
                          "choices": [], "usage": USAGE}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert reassemble_sse(replay) == original


def test_replay_without_usage_and_of_tool_calls():
    original = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": None,
                                         "tool_calls": [{"id": "c", "type": "function",
                                                         "function": {"name": "f", "arguments": "{}"}}]}}]}
    replay = completion_to_sse(original)
    assert all(c["choices"] for c in events(replay))
    assert reassemble_sse(replay) == original
    assert not any("usage" in c for c in events(completion_to_sse({**original, "usage": USAGE}, include_usage=False)))


def test_replay_keeps_unicode_and_long_words():
    original = reassemble_sse(STREAM)
    original["choices"][0]["message"]["content"] = "Ünïcödé " + "x" * 500 + " 终"
    assert reassemble_sse(completion_to_sse(original)) == original
