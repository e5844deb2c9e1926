"""Client APIs as translators to and from the Router's common request (chat completions, Responses, Anthropic)."""

from services.front.apis.anthropic import ANTHROPIC, AnthropicApi
from services.front.apis.base import ApiTranslator, ToolChoice, ToolChoiceMode, ToolRef
from services.front.apis.chat import CHAT, ChatApi
from services.front.apis.responses import RESPONSES, ResponsesApi

__all__ = ["ANTHROPIC", "CHAT", "RESPONSES", "AnthropicApi", "ApiTranslator", "ChatApi", "ResponsesApi",
           "ToolChoice", "ToolChoiceMode", "ToolRef"]
