"""Bridging blocking work that reports progress (in a thread) to an async NDJSON stream."""

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

log = logging.getLogger(__name__)
Event = dict[str, Any]
_DONE = object()


async def events_from_thread(work: Callable[[Callable[[Event], None]], None]) -> AsyncIterator[Event]:
    """Run ``work(emit)`` in a thread and yield what it emits; a failure becomes ``{"error"}``.

    If the client goes away the work carries on to its end (a pull is worth
    finishing; the next one would resume it anyway), only unheard.
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
            put({"error": exc.message})
        except Exception as exc:  # never a traceback to the client
            log.exception("streamed work failed")
            put({"error": f"internal error: {type(exc).__name__}: {exc}"})
        finally:
            put(_DONE)

    threading.Thread(target=run, name="stream-work", daemon=True).start()
    while True:
        item = await queue.get()
        if item is _DONE:
            return
        yield item  # type: ignore[misc]


async def ndjson(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    async with aclosing(events):  # type: ignore[type-var]
        async for event in events:
            yield json.dumps(event).encode() + b"\n"


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
