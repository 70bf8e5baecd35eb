"""Optional API key: with ``LOCALLLM_API_KEY`` set, every route but the health check wants it."""

from __future__ import annotations

import hmac

from fastapi import Request

from ..errors import Unauthorized

OPEN_PATHS = frozenset({"/"})  # the health check, so monitors need no secret
OPEN_PREFIXES = ("/v1/images/files/",)  # generated images: the unguessable, expiring URL is the capability


async def require_api_key(request: Request) -> None:
    key = request.app.state.settings.api_key
    expected = key.get_secret_value() if key else ""
    if not expected or request.url.path in OPEN_PATHS or request.url.path.startswith(OPEN_PREFIXES):
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("this server needs an API key: send 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthorized("the API key is not valid for this server")
