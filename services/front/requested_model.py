"""The `model` a client asks for, checked by the front before any service is asked.

What the router accepts must not depend on whether decision is up: an unknown or absurd model name is
refused here (400), so a slow or crashed decision service can never widen what reaches a backend.
"""

from __future__ import annotations

from services.common.config import SwitchyardConfig
from services.front.chat_request import RequestError

# How much of a refused name an error message repeats.
_ECHO_CHARS = 64


def check_requested_model(config: SwitchyardConfig, model: str) -> None:
    """Raise RequestError(400) unless `model` is an alias, a configured model, or passthrough allows it."""
    limit = config.front.max_model_name_chars
    if len(model) > limit:
        raise RequestError(400, f"'model' is {len(model)} characters long; the limit is {limit} "
                           "(front.max_model_name_chars). Name a configured model or 'MoM'",
                           "invalid_model", "model")
    if not model.isprintable():
        raise RequestError(400, "'model' contains control characters; name a configured model or 'MoM'",
                           "invalid_model", "model")
    routing = config.routing
    if model in routing.aliases or model in routing.models or routing.unknown_model == "passthrough":
        return
    shown = model if len(model) <= _ECHO_CHARS else model[:_ECHO_CHARS] + "..."
    known = ", ".join([*routing.aliases, *routing.models])
    raise RequestError(400, f"model {shown!r} is not served by this router; use one of: {known}",
                       "model_not_found", "model")
