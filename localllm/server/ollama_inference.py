"""The native API's inference routes: ``/api/generate``, ``/api/chat``, ``/api/embed``,
``/api/embeddings``, ``/api/ps``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import UnsupportedInput
from ..llm.embedding import embed
from ..llm.facts import ModelFacts
from ..llm.generation import Outcome, ToolCalls, generate, load_only
from ..llm.grammar import grammar_for
from ..llm.options import parse_keep_alive, parse_options
from ..llm.prompts import chat_spec, generate_spec
from ..llm.requests import Piece
from ..llm.scheduler import Scheduler
from ..names import ModelName
from ..services.show import details
from .images_api import generate_image, image_model
from .limits import check_size
from .schemas import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, template_messages
from .streaming import ClientGone, first_event, ndjson_response, until_disconnected

log = logging.getLogger(__name__)
router = APIRouter()


def _scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def _facts(request: Request, model: str) -> ModelFacts:
    name = ModelName.parse(model)
    return await run_in_threadpool(_scheduler(request).facts, name)


def _keep_alive(value: Any) -> float | None:
    return None if value is None else parse_keep_alive(value)


async def _respond(
    request: Request, events: AsyncIterator[Piece | ToolCalls | Outcome], chunk: Any, final: Any, stream: bool
) -> Response:
    """Stream NDJSON chunks, or gather one object; errors before the first piece keep their status.

    ``chunk(text, calls)`` shapes a piece of text or a list of finished tool calls, ``final(outcome, text)``
    the last object (``text`` None when streamed: the text and the calls went out already).
    """
    try:  # template, context and loading errors surface here, as 4xx/5xx
        first = await first_event(request, events)
    except ClientGone:
        return Response(status_code=499)

    if stream:
        async def lines() -> AsyncIterator[dict[str, Any]]:
            item: Piece | ToolCalls | Outcome | None = first
            try:
                while item is not None:
                    if isinstance(item, Outcome):
                        yield final(item, None)
                    elif isinstance(item, ToolCalls):
                        yield chunk("", item.calls)
                    else:
                        yield chunk(item.text)
                    item = await anext(events, None)
            finally:
                await events.aclose()

        return ndjson_response(request, lines())

    async def gather() -> dict[str, Any]:
        pieces: list[str] = []
        item: Piece | ToolCalls | Outcome | None = first
        try:
            while not isinstance(item, Outcome):
                if isinstance(item, Piece):
                    pieces.append(item.text)
                item = await anext(events)
        finally:
            await events.aclose()
        return final(item, "".join(pieces))

    return JSONResponse(await until_disconnected(request, gather()))


# --- /api/generate -----------------------------------------------------------
@router.post("/api/generate")
async def generate_route(body: GenerateRequest, request: Request) -> Response:
    image = await image_model(request, body.model)
    if image is not None:  # an image model: the prompt becomes a picture
        return await generate_image(request, image, body, _keep_alive(body.keep_alive))
    facts = await _facts(request, body.model)
    check_size(request, texts=[body.prompt, body.system, body.suffix, body.template], param="prompt")
    asked = [field for field in ("width", "height", "steps") if getattr(body, field) is not None]
    if asked:
        raise UnsupportedInput(f"{facts.name.display} is not an image model: {', '.join(asked)} are for image "
                               "models", param="model")
    options = parse_options(body.options)
    keep_alive = _keep_alive(body.keep_alive)
    grammar_for(body.format)  # a bad format is a 400 before anything loads
    if body.images and not facts.has_vision:
        raise UnsupportedInput(f"{facts.name.display} does not support images")
    model = facts.name.display

    if not body.prompt and not body.suffix:
        load_ns = await load_only(_scheduler(request), facts, facts.params.merged(options), keep_alive)
        reason = "unload" if keep_alive == 0 else "load"
        return JSONResponse(
            {"model": model, "created_at": now(), "response": "", "done": True, "done_reason": reason,
             **({"load_duration": load_ns} if load_ns else {})}
        )

    prompt = generate_spec(facts, prompt=body.prompt, system=body.system, template_override=body.template,
                           context=body.context, raw=body.raw, suffix=body.suffix)
    events = generate(
        _scheduler(request), facts, options=options, keep_alive=keep_alive, prompt=prompt, format=body.format
    )

    def chunk(text: str, _calls: None = None) -> dict[str, Any]:
        return {"model": model, "created_at": now(), "response": text, "done": False}

    def final(outcome: Outcome, text: str | None) -> dict[str, Any]:
        result = {"model": model, "created_at": now(), "response": text or "", "done": True,
                  "done_reason": outcome.reason}
        if not body.raw:
            result["context"] = outcome.context
        return {**result, **outcome.timings()}

    return await _respond(request, events, chunk, final, body.stream)


# --- /api/chat ---------------------------------------------------------------
@router.post("/api/chat")
async def chat_route(body: ChatRequest, request: Request) -> Response:
    facts = await _facts(request, body.model)
    check_size(request, items=body.messages, texts=[body.tools or []])
    options = parse_options(body.options)
    keep_alive = _keep_alive(body.keep_alive)
    grammar_for(body.format)
    if any(m.images for m in body.messages) and not facts.has_vision:
        raise UnsupportedInput(f"{facts.name.display} does not support images")
    model = facts.name.display

    if not body.messages:
        load_ns = await load_only(_scheduler(request), facts, facts.params.merged(options), keep_alive)
        reason = "unload" if keep_alive == 0 else "load"
        return JSONResponse(
            {"model": model, "created_at": now(), "message": {"role": "assistant", "content": ""},
             "done": True, "done_reason": reason, **({"load_duration": load_ns} if load_ns else {})}
        )

    messages = template_messages(body.messages)

    events = generate(
        _scheduler(request), facts, options=options, keep_alive=keep_alive,
        prompt=chat_spec(facts, messages, body.tools),
        format=body.format, tools=body.tools,
    )

    def chunk(text: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        return {"model": model, "created_at": now(), "message": message, "done": False}

    def final(outcome: Outcome, text: str | None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text or ""}
        if outcome.tool_calls and text is not None:  # streamed: each call went out as it was complete
            message["tool_calls"] = outcome.tool_calls
        return {"model": model, "created_at": now(), "message": message, "done": True,
                "done_reason": outcome.reason, **outcome.timings()}

    return await _respond(request, events, chunk, final, body.stream)


# --- embeddings --------------------------------------------------------------
@router.post("/api/embed")
async def embed_route(body: EmbedRequest, request: Request) -> dict[str, Any]:
    facts = await _facts(request, body.model)
    check_size(request, items=[body.input] if isinstance(body.input, str) else body.input, param="input")
    inputs: list[str | list[int]] = [body.input] if isinstance(body.input, str) else list(body.input)
    result = await embed(
        _scheduler(request), facts, inputs, options=parse_options(body.options),
        keep_alive=_keep_alive(body.keep_alive), truncate=body.truncate, dimensions=body.dimensions,
    )
    return {
        "model": facts.name.display,
        "embeddings": result.vectors,
        "total_duration": result.total_ns,
        "load_duration": result.load_ns,
        "prompt_eval_count": result.prompt_tokens,
    }


@router.post("/api/embeddings")
async def embeddings_route(body: EmbeddingsRequest, request: Request) -> dict[str, Any]:
    facts = await _facts(request, body.model)
    result = await embed(
        _scheduler(request), facts, [body.prompt] if body.prompt else [], options=parse_options(body.options),
        keep_alive=_keep_alive(body.keep_alive), truncate=True,
    )
    return {"embedding": result.vectors[0] if result.vectors else []}


# --- /api/ps -----------------------------------------------------------------
@router.get("/api/ps")
async def ps_route(request: Request) -> dict[str, Any]:
    """One entry per model, as Ollama shows: a model's instances (its embedding instance beside its chat
    instance, say) are merged, their sizes summed, with the latest expiry and the largest context."""
    store = request.app.state.store
    merged: dict[str, dict[str, Any]] = {}  # in order: the most recently used model first

    def add(entry: Any, size: int, expires: datetime, context_length: int) -> None:
        name = entry.name.display
        model = merged.setdefault(name, {
            "name": name, "model": name, "size": 0, "digest": entry.digest.split(":", 1)[1],
            "details": details(store, entry), "expires_at": expires, "size_vram": 0, "context_length": 0,
        })
        model["size"] += size
        model["expires_at"] = max(model["expires_at"], expires)
        model["context_length"] = max(model["context_length"], context_length)

    for loaded in _scheduler(request).running():
        entry = loaded.facts.entry
        expires = loaded.residency.expires_wallclock()
        add(entry, loaded.memory or entry.manifest.total_size, expires, loaded.runner.n_ctx)
    for worker in request.app.state.images.running():  # image workers, in the same budget
        add(worker.model.entry, worker.memory, worker.residency.expires_wallclock(), 0)
    for facts, error in _scheduler(request).broken_models():  # not loaded, and will not be until created again
        add(facts.entry, 0, datetime.now(UTC), 0)
        merged[facts.entry.name.display].update(status="broken", error=error)
    for model in merged.values():
        model["expires_at"] = model["expires_at"].isoformat().replace("+00:00", "Z")
    return {"models": list(merged.values())}
