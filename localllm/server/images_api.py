"""Images through both faces: ``/api/generate`` with an image model, and ``/v1/images/generations``.

Both validate everything (``images/params.py``) before a worker is asked, then drive
``ImageService``. The native face streams ``{completed, total}`` per step and ends with ``image``
(base64 PNG), as Ollama's client reads it; OpenAI's face answers once, with ``b64_json`` or a
``url`` the daemon serves until it expires. Those URLs name an unguessable token looked up in
memory, never a path.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..errors import InvalidRequest, NotFound, UnsupportedInput
from ..images import models as image_models
from ..images.models import ImageModel
from ..images.params import ImageSettings, parse_size, resolve
from ..images.service import ImageService, Progress, Result
from ..names import ModelName
from .streaming import ClientGone, first_event, ndjson_response, until_disconnected

log = logging.getLogger(__name__)
router = APIRouter()
MAX_N = 4
FILES_PATH = "/v1/images/files/"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")
OPTION_NAMES = ("negative_prompt", "guidance", "scheduler", "precision", "steps", "width", "height")


def _service(request: Request) -> ImageService:
    return request.app.state.images


def _max_size(request: Request) -> int:
    return request.app.state.settings.image_max_size


async def image_model(request: Request, model: str) -> ImageModel | None:
    """The stored image model of that name; None for a text model (ModelNotFound if there is none)."""
    store = request.app.state.store
    name = ModelName.parse(model)

    def look() -> ImageModel | None:
        entry = store.get(name)
        return image_models.load(store, entry) if image_models.is_image(entry.manifest) else None

    return await run_in_threadpool(look)


def _seed(settings: ImageSettings, index: int = 0) -> int:
    """The request's seed (+ the image's index), or a fresh one."""
    return settings.seed + index if settings.seed is not None else secrets.randbelow(2**31)


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# --- /api/generate with an image model ----------------------------------------------
async def generate_image(request: Request, model: ImageModel, body: Any, keep_alive: float | None) -> Response:
    """The image branch of ``/api/generate`` (``body``: its GenerateRequest)."""
    options = dict(body.options or {})
    given = {k: options.get(k) for k in OPTION_NAMES} | {
        "width": body.width if body.width is not None else options.get("width"),
        "height": body.height if body.height is not None else options.get("height"),
        "steps": body.steps if body.steps is not None else options.get("steps"),
        "seed": options.get("seed"),
    }
    if isinstance(given["seed"], int) and given["seed"] < 0:  # Ollama's -1: a random seed
        given["seed"] = None
    settings = resolve(given, model.params, model.config, _max_size(request))
    name = model.entry.name.display
    service = _service(request)
    if not body.prompt:  # Ollama's "load" / "unload" request
        if keep_alive == 0:
            await service.unload(model)
        return JSONResponse({"model": name, "created_at": _now(), "response": "", "done": True,
                             "done_reason": "unload" if keep_alive == 0 else "load"})
    events = service.generate(model, body.prompt, settings, _seed(settings), keep_alive)

    def shape(item: Progress | Result) -> dict[str, Any]:
        if isinstance(item, Progress):
            return {"model": name, "created_at": _now(), "response": "", "done": False,
                    "completed": item.completed, "total": item.total}
        return {"model": name, "created_at": _now(), "response": "", "done": True, "done_reason": "stop",
                "image": base64.b64encode(item.png).decode(), "total_duration": item.total_ns,
                "load_duration": item.load_ns}

    try:
        first = await first_event(request, events)  # validation, conversion and start errors keep their status
    except ClientGone:
        return Response(status_code=499)
    if body.stream:
        async def lines() -> AsyncIterator[dict[str, Any]]:
            item: Progress | Result | None = first
            try:
                while item is not None:
                    yield shape(item)
                    item = await anext(events, None)
            finally:
                await events.aclose()

        return ndjson_response(request, lines())

    async def gather() -> dict[str, Any]:
        item: Progress | Result = first
        try:
            while not isinstance(item, Result):
                item = await anext(events)
        finally:
            await events.aclose()
        return shape(item)

    return JSONResponse(await until_disconnected(request, gather()))


# --- /v1/images/generations ---------------------------------------------------------
class ImageGenerationRequest(BaseModel):
    """OpenAI's body; ``quality``, ``style``, ``user`` and the GPT-image fields are accepted and ignored.
    Extensions: ``seed``, ``steps``, ``negative_prompt``, ``guidance``, ``scheduler``, ``precision``,
    ``options`` (the same names), ``keep_alive``."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: str | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    seed: int | None = None
    steps: int | None = None
    negative_prompt: str | None = None
    guidance: float | None = None
    scheduler: str | None = None
    precision: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | int | None = None


@router.post("/v1/images/generations")
async def images_generations(body: ImageGenerationRequest, request: Request) -> Response:
    from ..llm.options import parse_keep_alive

    if not body.model:
        raise InvalidRequest("model is required: name an image model, e.g. sd-turbo", param="model")
    n = 1 if body.n is None else body.n
    if not 1 <= n <= MAX_N:
        raise InvalidRequest(f"n must be between 1 and {MAX_N}, not {n}", param="n")
    response_format = body.response_format or "both"  # unsaid: DALL-E's url and GPT Image's b64_json
    if response_format not in ("b64_json", "url", "both"):
        raise InvalidRequest(f"response_format must be 'b64_json' or 'url', not {response_format!r}",
                             param="response_format")
    given: dict[str, Any] = {k: (body.options or {}).get(k) for k in OPTION_NAMES}
    for key in ("steps", "negative_prompt", "guidance", "scheduler", "precision"):
        if getattr(body, key) is not None:
            given[key] = getattr(body, key)
    if body.size is not None and body.size != "auto":
        given["width"], given["height"] = parse_size(body.size)
    given["seed"] = body.seed
    keep_alive = None if body.keep_alive is None else parse_keep_alive(body.keep_alive)
    model = await image_model(request, body.model)
    if model is None:
        raise UnsupportedInput(f"{body.model} is not an image model: it cannot make images", param="model")
    settings = resolve(given, model.params, model.config, _max_size(request))
    service = _service(request)

    async def make() -> list[Result]:
        results = []
        for index in range(n):
            async for item in service.generate(model, body.prompt, settings, _seed(settings, index), keep_alive):
                if isinstance(item, Result):
                    results.append(item)
        return results

    results = await until_disconnected(request, make())
    if not results:
        return Response(status_code=499)
    files: ImageFiles = request.app.state.image_files
    data = []
    for result in results:
        item: dict[str, Any] = {"revised_prompt": None}
        if response_format in ("url", "both"):
            item["url"] = str(request.base_url).rstrip("/") + f"{FILES_PATH}{files.put(result.png)}.png"
        if response_format in ("b64_json", "both"):
            item["b64_json"] = base64.b64encode(result.png).decode()
        data.append(item)
    return JSONResponse({"created": int(time.time()), "data": data, "output_format": "png",
                         "size": f"{settings.width}x{settings.height}"})


@router.get(FILES_PATH + "{filename}", include_in_schema=False)
async def image_file(filename: str, request: Request) -> Response:
    token = filename.removesuffix(".png")
    png = request.app.state.image_files.get(token) if filename.endswith(".png") else None
    if png is None:
        raise NotFound("no such image, or its URL has expired")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


class ImageFiles:
    """Generated PNGs behind expiring tokens, in memory (bounded in bytes, oldest dropped first)."""

    def __init__(self, ttl: float, max_bytes: int = 256 << 20) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._files: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def put(self, png: bytes) -> str:
        self._expire()
        token = secrets.token_urlsafe(24)
        self._files[token] = (time.monotonic() + self.ttl, png)
        while sum(len(p) for _, p in self._files.values()) > self.max_bytes and len(self._files) > 1:
            self._files.popitem(last=False)
        return token

    def get(self, token: str) -> bytes | None:
        if not _TOKEN.fullmatch(token):
            return None
        self._expire()
        found = self._files.get(token)
        return found[1] if found else None

    def _expire(self) -> None:
        now = time.monotonic()
        for token in [t for t, (expires, _) in self._files.items() if expires <= now]:
            del self._files[token]
