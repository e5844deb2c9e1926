"""Scope hashing: what must match exactly for a cached answer to be reused."""

from __future__ import annotations

import pytest

from services.cache.scope import NoUserMessageError, normalize, scope_of
from switchyard.v1 import common_pb2
from tests.unit.cache.conftest import request

HISTORY = [("system", "You are terse."), ("user", "Hi"), ("assistant", "Hello!")]


def test_same_request_same_scope_and_id():
    a, b = scope_of(request("What is X?", history=HISTORY)), scope_of(request("What is X?", history=HISTORY))
    assert a == b
    assert a.entry_id("m1", "c") == b.entry_id("m1", "c")
    assert a.entry_id("m1", "c") != a.entry_id("m2", "c")


def test_query_is_the_last_user_message_normalized():
    scope = scope_of(request("  What\n is   X? ", history=HISTORY))
    assert scope.query == "What is X?"


def test_whitespace_in_earlier_turns_does_not_split_the_scope():
    spaced = [("system", "You  are\nterse. "), ("user", "Hi"), ("assistant", "Hello!")]
    assert scope_of(request("q", history=HISTORY)).context_hash == scope_of(request("q", history=spaced)).context_hash


@pytest.mark.parametrize("history", [
    [("system", "You are verbose."), ("user", "Hi"), ("assistant", "Hello!")],  # other system prompt
    [("system", "You are terse."), ("user", "Hey"), ("assistant", "Hello!")],  # other earlier turn
    [("user", "Hi"), ("assistant", "Hello!")],  # no system prompt
    [],  # a fresh conversation
])
def test_other_conversation_context_changes_the_hash(history):
    assert scope_of(request("q", history=HISTORY)).context_hash != scope_of(request("q", history=history)).context_hash


def test_role_is_part_of_the_context():
    a = scope_of(request("q", history=[("system", "x")]))
    b = scope_of(request("q", history=[("user", "x")]))
    assert a.context_hash != b.context_hash


def test_messages_after_the_last_user_message_count():
    context = request("q", history=HISTORY)
    context.messages.append(common_pb2.ChatMessage(role="tool", text="42"))
    assert scope_of(context).query == "q"
    assert scope_of(context).context_hash != scope_of(request("q", history=HISTORY)).context_hash


def test_tenant_is_a_scope_field():
    a, b = scope_of(request("q", tenant="alice")), scope_of(request("q", tenant="bob"))
    assert a.fields()["tenant"] == "alice" and b.fields()["tenant"] == "bob"
    assert a.entry_id("m", "") != b.entry_id("m", "")


@pytest.mark.parametrize("params", [{"n": 2}, {"has_tools": True}, {"response_format": "json_object"},
                                    {"max_tokens": 16}])
def test_answer_shaping_params_change_the_params_hash(params):
    assert scope_of(request("q")).params_hash != scope_of(request("q", **params)).params_hash


@pytest.mark.parametrize("same", [{"n": 1}, {"response_format": "text"}, {"stream": True}, {"temperature": 0.0}])
def test_defaults_and_transport_params_do_not(same):
    assert scope_of(request("q")).params_hash == scope_of(request("q", **same)).params_hash


def test_no_user_message_raises():
    context = common_pb2.RequestContext(messages=[common_pb2.ChatMessage(role="system", text="s")])
    with pytest.raises(NoUserMessageError):
        scope_of(context)
    with pytest.raises(NoUserMessageError):
        scope_of(request("   "))


def test_normalize_nfc():
    assert normalize("cafe\u0301") == normalize("caf\u00e9")
