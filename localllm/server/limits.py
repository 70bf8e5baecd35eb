"""How much one request may carry (``LOCALLLM_MAX_MESSAGES``, ``LOCALLLM_MAX_PROMPT``), checked in the
routes before anything is looked up, loaded or rendered."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import Request

from ..errors import InvalidRequest


def _text_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_size(item) for key, item in value.items() if key != "images")
    if isinstance(value, list | tuple):
        return sum(_text_size(item) for item in value)
    return 0


def check_size(
    request: Request, *, items: Iterable[Any] = (), texts: Iterable[Any] = (), param: str = "messages"
) -> None:
    """Refuse more messages (or inputs) than ``LOCALLLM_MAX_MESSAGES``, or more characters of text than
    ``LOCALLLM_MAX_PROMPT`` (images are bounded by the body size instead)."""
    settings = request.app.state.settings
    items = list(items)
    if len(items) > settings.max_messages:
        raise InvalidRequest(f"the request has {len(items):,} {param}; this server accepts at most "
                             f"{settings.max_messages:,} (LOCALLLM_MAX_MESSAGES)", param=param)
    size = _text_size([item.model_dump() if hasattr(item, "model_dump") else item for item in items]) + \
        _text_size(list(texts))
    if size > settings.max_prompt:
        raise InvalidRequest(f"the request carries {size:,} characters of text; this server accepts at most "
                             f"{settings.max_prompt:,} (LOCALLLM_MAX_PROMPT)", param=param)
