"""Streamed responses, both faces: NDJSON lines (``/api``) and SSE events (``/v1``), each ending with one
error event in the face's shape when the work fails after the status line went out; and the bridges from
blocking work in a thread, and from a client that leaves, to those streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import LocalLLMError
from .errors import error_body, error_of

log = logging.getLogger(__name__)
Event = dict[str, Any]
NDJSON = "application/x-ndjson"
_DONE = object()


async def events_from_thread(work: Callable[[Callable[[Event], None]], None]) -> AsyncIterator[Event]:
    """Run ``work(emit)`` in a thread and yield what it emits; its failure is raised here, for the
    stream's error tail (``with_error_tail``) to put into words.

    If the client goes away the work carries on to its end (a pull is worth
    finishing; the next one would resume it anyway), only unheard: so an unexpected
    failure is logged in the thread, where its traceback is, heard or not.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    def put(item: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (shutdown)
            pass

    def run() -> None:
        try:
            work(put)
        except LocalLLMError as exc:
            put(exc)
        except Exception as exc:
            log.exception("streamed work failed")
            put(LocalLLMError(f"internal error: {type(exc).__name__}"))  # logged: not again at the tail
        finally:
            put(_DONE)

    threading.Thread(target=run, name="stream-work", daemon=True).start()
    while True:
        item = await queue.get()
        if item is _DONE:
            return
        if isinstance(item, LocalLLMError):
            raise item
        yield item  # type: ignore[misc]


async def with_error_tail(path: str, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """The events, then, if the work fails mid-stream, one error event shaped for ``path``'s face (the
    status line is gone, so the error travels in the body, as Ollama and OpenAI send it); never a cut
    connection without a word, never a traceback."""
    async with aclosing(events):  # type: ignore[type-var]
        try:
            async for event in events:
                yield event
        except LocalLLMError as exc:
            yield error_of(path, exc)
        except Exception as exc:
            log.exception("%s failed mid-stream", path)
            yield error_body(path, 500, f"internal error: {type(exc).__name__}")


def ndjson_response(request: Request, events: AsyncIterator[Event]) -> StreamingResponse:
    """One JSON object per line, as the native API streams."""

    async def lines() -> AsyncIterator[bytes]:
        async for event in with_error_tail(request.url.path, events):
            yield json.dumps(event).encode() + b"\n"

    return ClosingStreamingResponse(lines(), media_type=NDJSON)


def sse_response(request: Request, events: AsyncIterator[Event]) -> StreamingResponse:
    """Server-sent events ending in ``[DONE]``, as OpenAI streams."""

    async def body() -> AsyncIterator[bytes]:
        async for event in with_error_tail(request.url.path, events):
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return ClosingStreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that closes its iterator as soon as the client is gone.

    Starlette stops iterating when a send fails but leaves the generator to the
    garbage collector; closing it here is what stops a generation for nobody."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


async def until_disconnected(request: Request, work: Any) -> Any:
    """Run ``work``; if the client goes away first, cancel it (nothing decodes for nobody)."""
    task = asyncio.ensure_future(work)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if not done and await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return {}  # nobody is there to read it
    return task.result()


class ClientGone(Exception):
    """The client disconnected before the first event: there is no one to answer."""


async def first_event(request: Request, events: AsyncIterator[Any]) -> Any:
    """The first event of a stream, watching the connection meanwhile: a client that leaves while its
    prompt is queued or being read cancels the work then, not after the first token."""
    task = asyncio.ensure_future(anext(events))
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await task
            await events.aclose()  # type: ignore[attr-defined]
            raise ClientGone()
