"""The one place where exceptions become HTTP responses.

Two shapes, chosen by the path: the native API answers ``{"error": "message"}`` as Ollama does, the
OpenAI-compatible API (``/v1/...``) answers ``{"error": {"message", "type", "param", "code"}}`` as
OpenAI does, so each face's official client raises its own exception classes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import LocalLLMError, ServerBusy, Unauthorized

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"


def openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "invalid_request_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": openai_type(status), "param": param, "code": code}}


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX) or path == OPENAI_PREFIX.rstrip("/")


def error_body(path: str, status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    if is_openai_path(path):
        return openai_error(status, message, param, code)
    return {"error": message}


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, status, message, param, code), status_code=status,
                        headers=headers)


def error_of(path: str, exc: LocalLLMError) -> dict[str, Any]:
    """The body for an error met after a stream has begun (its status line is already sent)."""
    return error_body(path, exc.status_code, exc.message, exc.param, exc.code)


def param_path(location: tuple[Any, ...]) -> str | None:
    """Pydantic's error location as OpenAI names parameters: ``messages[0].content``."""
    parts = list(location)
    if "[key]" in parts:  # a bad key of a mapping: the mapping is the parameter
        parts = parts[: parts.index("[key]") - 1]
    text = ""
    for part in parts:
        if part in ("body", "query", "path"):
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).startswith(_UNION_MEMBERS):
            continue  # the name pydantic gives a union member, not a field
        else:
            text += f".{part}" if text else str(part)
    return text or None


_UNION_MEMBERS = ("function-", "tagged-union", "literal", "constrained", "str", "list", "dict", "int", "float", "bool")


def describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    """A sentence naming the first fields at fault, and the first field's name."""
    parts, first = [], None
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return "invalid JSON in the request body", None
        location = param_path(tuple(err.get("loc", ())))
        # A union reports one error per member: the deepest location under the first names the culprit.
        if first is None or (location and location.startswith(first) and len(location) > len(first)):
            first = location
        message = err.get("msg", "invalid value").removeprefix("Value error, ")
        part = f"{location}: {message}" if location else message
        if part not in parts:
            parts.append(part)
        if len(parts) == 3:
            break
    return ("invalid request: " + "; ".join(parts) if parts else "invalid request"), first


def allowed_methods(request: Request) -> list[str]:
    """Every method the API documents at this path (Starlette names only the first matching route's)."""
    table = getattr(request.app.state, "allowed_methods", None)
    if table is None:
        table = []
        for template, operations in request.app.openapi().get("paths", {}).items():
            pattern = re.compile("^" + re.sub(r"\\{[^/]+?\\}", ".+", re.escape(template)) + "$")
            table.append((pattern, {method.upper() for method in operations}))
        request.app.state.allowed_methods = table
    return sorted({m for pattern, methods in table if pattern.match(request.url.path) for m in methods})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LocalLLMError)
    async def _ours(request: Request, exc: LocalLLMError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("%s: %s", type(exc).__name__, exc.message)
        headers = None
        if isinstance(exc, ServerBusy):
            headers = {"Retry-After": str(exc.retry_after)}
        elif isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        return error_response(request, exc.status_code, exc.message, param=exc.param, code=exc.code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation(exc)
        return error_response(request, 400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = "not found"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            message = "method not allowed"
            headers = {"Allow": ", ".join(allowed_methods(request))}
        return error_response(request, exc.status_code, message, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(request, 500, f"internal error: {type(exc).__name__}")
