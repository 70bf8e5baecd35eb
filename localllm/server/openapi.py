"""``/openapi.json`` as the server really behaves, for both faces.

FastAPI documents a 422 for validation errors and a JSON body for every 200; this server answers
validation errors with 400, each face's errors in its own shape, streams NDJSON or SSE when asked,
and takes raw bytes for blob uploads. A schema-driven client or fuzzer reads this document, so it
says exactly that.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

NATIVE_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
OPENAI_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}
STATUS_TEXT = {
    400: "Invalid request (the message names the problem)",
    401: "An API key is configured and the request lacks it or has another",
    404: "No such model, blob or route",
    422: "The model file is malformed",
    500: "Internal error",
    502: "The registry failed",
    503: "Every slot and queue place is taken; retry after the Retry-After header's seconds",
    507: "The disk is full",
}
STREAMS = {
    "/api/pull": "application/x-ndjson",
    "/api/generate": "application/x-ndjson",
    "/api/chat": "application/x-ndjson",
    "/v1/chat/completions": "text/event-stream",
    "/v1/completions": "text/event-stream",
}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            app.openapi_schema = _as_served(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _as_served(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["NativeError"] = NATIVE_ERROR
    schemas["OpenAIError"] = OPENAI_ERROR
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, operations in document.get("paths", {}).items():
        error_ref = {"$ref": "#/components/schemas/" + ("OpenAIError" if path.startswith("/v1/") else "NativeError")}
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, text in STATUS_TEXT.items():
                responses.setdefault(str(status), {
                    "description": text, "content": {"application/json": {"schema": error_ref}},
                })
            if path in STREAMS and "200" in responses:
                responses["200"].setdefault("content", {})[STREAMS[path]] = {"schema": {"type": "string"}}
            if path == "/api/blobs/{digest}":
                _describe_blob(method, operation)
    return document


def _describe_blob(method: str, operation: dict[str, Any]) -> None:
    responses = operation["responses"]
    if method == "post":
        operation["requestBody"] = {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
        responses["200"] = {"description": "The blob was already stored"}
        responses["201"] = {"description": "The blob was stored"}
    else:
        responses["200"] = {"description": "The blob is stored"}
    for status in ("200", "201", "404"):
        if status in responses and method == "head":
            responses[status].pop("content", None)
