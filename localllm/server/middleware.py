"""ASGI middleware: the edge checks (Host, Origin, API key, body size) before any body is read; CORS
origins; JSON bodies; request metrics."""

from __future__ import annotations

import hmac
import json
import re
import socket
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Settings, is_loopback_host
from ..metrics import Metrics
from .errors import error_body

# Ollama's defaults: local web pages and desktop-app shells.
LOCAL_ORIGINS = (
    r"https?://(localhost|127\.0\.0\.1|\[::1\]|0\.0\.0\.0)(:\d+)?",
    r"app://.*",
    r"file://.*",
    r"tauri://.*",
    r"vscode-webview://.*",
    r"vscode-file://.*",
)


def origin_regex(extra: list[str]) -> str:
    """One regex for the allowed origins; ``extra`` entries may use ``*`` wildcards."""
    patterns = list(LOCAL_ORIGINS)
    for origin in extra:
        patterns.append(".*" if origin == "*" else ".*".join(re.escape(p) for p in origin.split("*")))
    return "^(" + "|".join(patterns) + ")$"


_HOST = re.compile(r"^(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?$")
OPEN_PATHS = frozenset({"/"})  # the health check, so monitors need no secret
OPEN_PREFIXES = ("/v1/images/files/",)  # generated images: the unguessable, expiring URL is the capability
UNLIMITED_PREFIXES = ("/api/blobs/",)  # uploads stream to disk, hashed as they come


def _hostname(host_header: str) -> str | None:
    """The host of a ``Host`` header, or None when it is not exactly a host with an optional port
    (``127.0.0.1:11434@evil.com`` and ``[::1]evil.com`` are not)."""
    match = _HOST.match(host_header.strip().lower())
    if match is None:
        return None
    return match.group("ipv6") or match.group("name")


def allowed_host(host_header: str) -> bool:
    if not host_header.strip():
        return True  # HTTP/1.0 clients send none; a browser always does
    host = _hostname(host_header)
    if host is None:
        return False
    if is_loopback_host(host) or host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return host == socket.gethostname().lower()
    except OSError:  # pragma: no cover
        return False


async def _refuse(scope: Scope, send: Send, status: int, message: str, code: str | None = None,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(error_body(scope["path"], status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": body})


class EdgeMiddleware:
    """What is refused before a byte of the body is read, in this order: a ``Host`` that is not a local
    name (DNS rebinding; only when bound to loopback), an ``Origin`` that is not allowed (a web page's
    cross-site request: CORS would only hide the answer, the request would run), a missing or wrong API
    key, and a body larger than ``LOCALLLM_MAX_BODY`` (413; a chunked body is cut off where it passes)."""

    def __init__(self, app: ASGIApp, settings: Settings, *, check_host: bool) -> None:
        self.app = app
        self.check_host = check_host
        self.origins = re.compile(origin_regex(settings.extra_origins))
        key = settings.api_key.get_secret_value() if settings.api_key else ""
        self.key = key.encode()
        self.max_body = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        host = headers.get(b"host", b"").decode("latin-1")
        if self.check_host and not allowed_host(host):
            shown = _hostname(host) or "(malformed)"
            await _refuse(scope, send, 403, f"forbidden: host '{shown}' is not a local name")
            return
        origin = headers.get(b"origin")
        if origin is not None and not self.origins.match(origin.decode("latin-1")):
            await _refuse(scope, send, 403, f"forbidden: requests from the web origin '{origin.decode('latin-1')}' "
                          "are not allowed (LOCALLLM_ORIGINS lists the allowed ones)")
            return
        path = scope["path"]
        if self.key and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES) and scope["method"] != "OPTIONS":
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not given.strip():
                await _refuse(scope, send, 401, "this server needs an API key: send 'Authorization: Bearer <key>'",
                              code="invalid_api_key", headers=[(b"www-authenticate", b"Bearer")])
                return
            if not hmac.compare_digest(given.strip(), self.key):
                await _refuse(scope, send, 401, "the API key is not valid for this server", code="invalid_api_key",
                              headers=[(b"www-authenticate", b"Bearer")])
                return
        if path.startswith(UNLIMITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        await self._limited(scope, receive, send, headers.get(b"content-length"))

    async def _limited(self, scope: Scope, receive: Receive, send: Send, length: bytes | None) -> None:
        too_big = (f"the request body is larger than this server accepts ({self.max_body:,} bytes; "
                   "LOCALLLM_MAX_BODY sets it)")
        try:
            declared = int(length) if length is not None else 0
        except ValueError:
            declared = 0
        if declared > self.max_body:
            await _refuse(scope, send, 413, too_big)
            return
        received, overflow, started = 0, False, False

        async def counting_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    overflow = True
                    return {"type": "http.disconnect"}  # the app stops reading; the 413 is ours to send
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if overflow:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not overflow:
                raise
        if overflow and not started:
            await _refuse(scope, send, 413, too_big)


class JsonBodyMiddleware:
    """Read API bodies as JSON whatever ``Content-Type`` says, as Ollama does.

    ``curl -d '{...}'`` sends ``application/x-www-form-urlencoded``; Ollama's
    clients and scripts rely on the body being taken as JSON anyway. Blob
    uploads are raw bytes and keep their type.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("POST", "PUT", "PATCH", "DELETE")
            and scope["path"].startswith(("/api/", "/v1/"))
            and not scope["path"].startswith("/api/blobs/")
        ):
            headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
            original = dict(scope.get("headers") or []).get(b"content-type", b"")
            if b"json" not in original:
                scope = dict(scope, headers=[*headers, (b"content-type", b"application/json")])
        await self.app(scope, receive, send)


class RequestMetricsMiddleware:
    """Count requests by route (its template, so names in paths do not multiply the series) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def recording_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(f"{scope['method']} {endpoint}", str(status)).inc()
