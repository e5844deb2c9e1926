"""Which chat messages a guard check reads (GuardConfig `scope`: last_user, all_user, all)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from switchyard.v1 import common_pb2

Scope = Literal["last_user", "all_user", "all"]

# Roles whose text the client wrote or pasted in: the user, system/developer prompts and tool
# results. Assistant turns are excluded: they are earlier answers of a model, not client input.
CLIENT_ROLES = frozenset({"user", "system", "developer", "tool", "function"})


def select_messages(messages: Sequence[common_pb2.ChatMessage], scope: Scope) -> list[int]:
    """Indices of the messages to check, in order; messages without text (images only) are skipped,
    so "last_user" is the last user message that has text."""
    if scope == "last_user":
        for index in range(len(messages) - 1, -1, -1):
            if messages[index].role == "user" and messages[index].text:
                return [index]
        return []
    roles = {"user"} if scope == "all_user" else CLIENT_ROLES
    return [i for i, m in enumerate(messages) if m.role in roles and m.text]
