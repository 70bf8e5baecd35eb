"""ASGI middleware: loopback-only Host checks (DNS rebinding), CORS origins, JSON bodies."""

from __future__ import annotations

import json
import re
import socket

from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import is_loopback_host
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


def _hostname(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host


def allowed_host(host_header: str) -> bool:
    host = _hostname(host_header)
    if not host or is_loopback_host(host) or host.endswith(".localhost"):
        return True
    try:
        return host == socket.gethostname().lower()
    except OSError:  # pragma: no cover
        return False


class LoopbackHostMiddleware:
    """Refuse requests whose ``Host`` is not a local name (a web page rebinding DNS to us)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not allowed_host(host):
                message = f"forbidden: host '{_hostname(host)}' is not a local name"
                body = json.dumps(error_body(scope["path"], 403, message)).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


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
