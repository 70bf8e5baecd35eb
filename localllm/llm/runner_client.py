"""The daemon's side of a runner process: start it, send it work, route its events, notice its death.

One :class:`RunnerProcess` per loaded model instance. Requests get ids; the events for each go to its
own queue. When the process ends unasked (llama.cpp aborted, a segfault, the OOM killer), every request
it had fails with :class:`RunnerStopped`, which names the model and how it died, and the scheduler is
told so that the next request starts a fresh runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidModelFile, RunnerStopped, ServerBusy
from . import protocol
from .protocol import LoadConfig, PromptBuilt, PromptSpec
from .requests import CompletionRequest, Finished, Piece, TokenLogprob

log = logging.getLogger("localllm.runner")
START_TIMEOUT = 600.0  # seconds to load a model (a large one from a slow disk)
STOP_TIMEOUT = 5.0
LINE_LIMIT = 1 << 30  # one event line: embeddings of a large batch, a long context
_PATH = re.compile(r"(?:/[\w.+-]+)+/([\w.+-]+)")


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "it stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = {"SIGABRT": " (llama.cpp gave up on the model file)", "SIGKILL": " (killed, perhaps out of memory)",
                "SIGSEGV": " (a crash in llama.cpp)"}.get(name, "")
        return f"killed by {name}{hint}"
    return f"exit status {returncode}"


def without_paths(text: str) -> str:
    """A runner's last words without the server's absolute paths (a client sees them)."""
    return _PATH.sub(r"\1", text)


@dataclass
class Stats:
    queued: int = 0
    active: int = 0
    rss: int = 0


class RunnerProcess:
    """A running ``localllm.llm.runner_process`` for one :class:`LoadConfig`."""

    def __init__(self, config: LoadConfig, label: str, proc: asyncio.subprocess.Process, *, max_queue: int,
                 on_token: Callable[[bool, float], None] | None) -> None:
        self.config = config
        self.label = label
        self.proc = proc
        self.max_queue = max_queue
        self.on_token = on_token
        self.stats = Stats()
        self.load_seconds = 0.0
        self.n_vocab = 0
        self.on_exit: Callable[[RunnerProcess], None] | None = None
        self.stopping = False
        self.exit_description: str | None = None
        self._queues: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._next_id = 0
        self._stderr_tail: deque[str] = deque(maxlen=12)
        self._embed_turn = asyncio.Lock()
        self._embed_waiting = 0
        self._tasks: list[asyncio.Task] = []
        self._completions = 0  # completions and scorings in flight

    # --- starting ----------------------------------------------------------------------------------
    @classmethod
    async def start(cls, config: LoadConfig, label: str, *, max_queue: int = 512,
                    on_token: Callable[[bool, float], None] | None = None) -> RunnerProcess:
        """Start a runner and wait until its model is loaded; a failed load raises (422 for a bad file)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "localllm.llm.runner_process",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        runner = cls(config, label, proc, max_queue=max_queue, on_token=on_token)
        runner._tasks.append(asyncio.get_running_loop().create_task(runner._read_stderr()))
        try:
            await runner._send({"op": "load", "config": config.to_wire(), "max_queue": max_queue})
            ready = await asyncio.wait_for(runner._read_event(), timeout=START_TIMEOUT)
        except (TimeoutError, ConnectionError) as exc:
            await runner.kill()
            raise InvalidModelFile(f"the model runner for {label} did not start: {exc or 'timed out'}") from exc
        if ready is None or ready.get("event") != "ready":
            await runner._wait_exit()
            if ready is not None and ready.get("event") == "load_failed":
                error = protocol.error_from_wire(ready.get("error") or {})
                log.warning("the model runner for %s could not load it: %s", label, error.message)
                raise error
            log.error("the model runner %d for %s stopped while loading, %s%s", proc.pid, label,
                      runner.exit_description, runner._last_words())
            raise InvalidModelFile(f"llama.cpp could not load {label}: the model runner stopped while loading, "
                                   f"{runner.exit_description}{runner._last_words()}")
        runner.load_seconds = float(ready.get("load_seconds", 0.0))
        runner.n_vocab = int(ready.get("n_vocab", 0))
        runner.stats.rss = int(ready.get("rss", 0))
        runner._tasks.append(asyncio.get_running_loop().create_task(runner._route_events()))
        log.info("runner %d for %s is ready (%.2fs, %d MiB resident)", proc.pid, label, runner.load_seconds,
                 runner.stats.rss >> 20)
        return runner

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def n_ctx(self) -> int:
        return self.config.n_ctx

    @property
    def queued(self) -> int:
        return min(self.stats.queued, self._completions)

    @property
    def active(self) -> int:
        """Sequences being decoded, as the runner last said (none when no completion is in flight here)."""
        return min(self.stats.active, self._completions)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and self.exit_description is None

    # --- work --------------------------------------------------------------------------------------
    async def complete(
        self, spec: PromptSpec, request: CompletionRequest
    ) -> AsyncIterator[PromptBuilt | Piece | Finished]:
        """A completion's events: the built prompt, text pieces, then one Finished. Closing the iterator
        early cancels it in the runner."""
        self._completions += 1
        try:
            async for event in self._call({"op": "complete", "prompt": spec.to_wire(),
                                           "request": protocol.request_to_wire(request)}):
                kind = event.get("event")
                if kind == "prompt":
                    yield PromptBuilt(int(event["tokens"]), event.get("echo"))
                elif kind == "piece":
                    yield protocol.piece_from_wire(event)
                elif kind == "finished":
                    yield protocol.finished_from_wire(event)
                    return
        finally:
            self._completions -= 1

    async def score(self, spec: PromptSpec, top: int) -> tuple[list[TokenLogprob], str | None]:
        """The prompt tokens' log-probabilities (the BOS token left out), and the prompt's text if asked."""
        async for event in self._call({"op": "score", "prompt": spec.to_wire(), "top": top}):
            if event.get("event") == "scores":
                return protocol.logprobs_from_wire(event["logprobs"]) or [], event.get("echo")
        return [], None

    async def embed(self, inputs: list[str | list[int]], *, truncate: bool) -> tuple[list[list[float]], int]:
        """Embedding requests take turns in arrival order; beyond ``max_queue`` waiting, 503."""
        if self._embed_turn.locked() and self._embed_waiting >= self.max_queue:
            raise ServerBusy(f"this model is busy and {self._embed_waiting} request(s) are already waiting for it; "
                             "try again shortly")
        self._embed_waiting += 1
        try:
            await self._embed_turn.acquire()
        finally:
            self._embed_waiting -= 1
        try:
            async for event in self._call({"op": "embed", "inputs": inputs, "truncate": truncate}):
                if event.get("event") == "embeddings":
                    return event["vectors"], int(event["count"])
            return [], 0
        finally:
            self._embed_turn.release()

    async def _call(self, message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Send a request and yield its events until one ends it; errors are raised as ours."""
        self._check_alive()
        self._next_id += 1
        job_id = self._next_id
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues[job_id] = queue
        done = False
        try:
            await self._send({**message, "id": job_id})
            while True:
                event = await queue.get()
                kind = event.get("event")
                if kind == "error":
                    done = True
                    raise protocol.error_from_wire(event.get("error") or {})
                if kind == "stopped":
                    done = True
                    raise RunnerStopped(event["message"])
                if kind in ("finished", "scores", "embeddings"):
                    done = True
                yield event
                if done:
                    return
        finally:
            self._queues.pop(job_id, None)
            if not done and self.alive:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._send({"op": "cancel", "id": job_id})

    def _check_alive(self) -> None:
        if not self.alive:
            raise RunnerStopped(self._stopped_message())

    # --- the pipes ---------------------------------------------------------------------------------
    async def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(protocol.dumps(message))
        await self.proc.stdin.drain()

    async def _read_event(self) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return None
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                return event

    async def _route_events(self) -> None:
        try:
            while (event := await self._read_event()) is not None:
                if event.get("event") == "stats":
                    self._take_stats(event)
                    continue
                queue = self._queues.get(event.get("id"))  # type: ignore[arg-type]
                if queue is not None:
                    queue.put_nowait(event)
        except (ValueError, asyncio.LimitOverrunError) as exc:  # a line beyond LINE_LIMIT: not a runner we trust
            log.error("runner %d for %s sent an unreadable event (%s); stopping it", self.pid, self.label, exc)
            self.proc.kill()
        await self._wait_exit()
        if not self.stopping:
            log.error("the model runner %d for %s stopped: %s%s", self.pid, self.label, self.exit_description,
                      self._last_words())
        message = self._stopped_message()
        for queue in list(self._queues.values()):
            queue.put_nowait({"event": "stopped", "message": message})
        if self.on_exit is not None and not self.stopping:
            self.on_exit(self)

    def _take_stats(self, event: dict[str, Any]) -> None:
        self.stats = Stats(int(event.get("queued", 0)), int(event.get("active", 0)), int(event.get("rss", 0)))
        if self.on_token is not None:
            for first, seconds in event.get("timings") or []:
                self.on_token(bool(first), float(seconds))

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode("utf-8", errors="replace").rstrip()
            if text:
                self._stderr_tail.append(text)
                log.info("runner %d: %s", self.proc.pid, text)

    async def _wait_exit(self) -> None:
        returncode = await self.proc.wait()
        with contextlib.suppress(TimeoutError):  # the last lines of stderr, for the message
            await asyncio.wait_for(asyncio.gather(*self._tasks[:1]), timeout=1.0)
        if self.exit_description is None:
            self.exit_description = describe_exit(returncode)

    def _last_words(self) -> str:
        interesting = [line for line in self._stderr_tail if "error" in line.lower() or "assert" in line.lower()
                       or "failed" in line.lower()]
        return f": {without_paths(interesting[-1])[:300]}" if interesting else ""

    def _stopped_message(self) -> str:
        how = "it was unloaded" if self.stopping else (self.exit_description or "it stopped")
        return f"the model runner for {self.label} stopped: {how}{self._last_words()}"

    # --- stopping ----------------------------------------------------------------------------------
    async def close(self) -> None:
        """Unload: close the runner's stdin (it cancels what runs and exits), then make sure it is gone."""
        self.stopping = True
        if self.proc.returncode is None:
            with contextlib.suppress(OSError, RuntimeError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=STOP_TIMEOUT)
            except TimeoutError:
                await self.kill()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=1.0)

    async def kill(self) -> None:
        self.stopping = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
