"""Scope: what must match exactly for a cached answer to be reused (the fingerprint: test_fingerprint.py)."""

from __future__ import annotations

import pytest

from services.cache.scope import NoFingerprintError, NoUserMessageError, normalize, scope_of
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


def test_no_user_message_raises():
    context = common_pb2.RequestContext(messages=[common_pb2.ChatMessage(role="system", text="s")],
                                        answer_fingerprint="f")
    with pytest.raises(NoUserMessageError):
        scope_of(context)
    with pytest.raises(NoUserMessageError):
        scope_of(request("   "))


def test_no_fingerprint_raises():
    context = request("q")
    context.answer_fingerprint = ""
    with pytest.raises(NoFingerprintError):
        scope_of(context)


def test_tenant_and_fingerprint_are_the_scope_fields():
    a, b = scope_of(request("q", tenant="alice")), scope_of(request("q", tenant="bob"))
    assert a.fields() == {"tenant": "alice", "fingerprint": a.fingerprint}
    assert a.entry_id("m", "") != b.entry_id("m", "")


def test_route_is_part_of_the_entry_id():
    scope = scope_of(request("q"))
    assert scope.entry_id("m", "math", "route-1") != scope.entry_id("m", "math", "route-2")


def test_normalize_nfc():
    assert normalize("cafe\u0301") == normalize("caf\u00e9")
