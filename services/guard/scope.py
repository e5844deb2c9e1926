"""Which chat messages a guard check reads (GuardConfig `scope`: last_user, all_user, user_and_tool, all)."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.config import GuardScope
from switchyard.v1 import common_pb2

# Roles whose text the client wrote or pasted in: the user, system/developer prompts and tool
# results. Assistant turns are excluded: they are earlier answers of a model, not client input.
CLIENT_ROLES = frozenset({"user", "system", "developer", "tool", "function"})
# What a user or a tool put into the conversation: tool results carry fetched pages, files and API
# answers, where an indirect prompt injection arrives. System/developer prompts are the operator's own.
USER_AND_TOOL_ROLES = frozenset({"user", "tool", "function"})
_ROLES: dict[str, frozenset[str]] = {"all_user": frozenset({"user"}), "user_and_tool": USER_AND_TOOL_ROLES,
                                     "all": CLIENT_ROLES}


def select_messages(messages: Sequence[common_pb2.ChatMessage], scope: GuardScope) -> list[int]:
    """Indices of the messages to check, in order; messages without text (images only) are skipped,
    so "last_user" is the last user message that has text."""
    if scope == "last_user":
        for index in range(len(messages) - 1, -1, -1):
            if messages[index].role == "user" and messages[index].text:
                return [index]
        return []
    roles = _ROLES[scope]
    return [i for i, m in enumerate(messages) if m.role in roles and m.text]
