"""Image jobs for the daemon: one worker process per image model, one job at a time, queued and budgeted.

A worker (``worker.py``) starts with a model's first job and stays for the request's ``keep_alive``
(listed by ``/api/ps`` beside the LLMs, reaped when it expires). Its memory counts in the same
budget as the loaded LLMs: the service is a :class:`~localllm.llm.scheduler.Tenant` of the text
scheduler, which evicts idle residents of either kind to make room for a new one. Jobs for a busy
worker wait their turn (at most ``max_queue`` of them; beyond, 503). A job that nobody waits for any
more (the client went away) is cancelled in the worker between two steps; events carry the job's
id, so a cancelled job's last events never reach the next one. A size or precision the model was
not converted for is converted once, from the stored ONNX sources, in a child process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import LocalLLMError, ServerBusy
from ..llm.residency import Residency, ResidentPool
from ..store.models import ModelStore
from . import models as image_models
from .models import ImageModel
from .params import ImageSettings

log = logging.getLogger(__name__)
START_TIMEOUT = 60.0
MIB = 1 << 20


def estimate_memory(settings: ImageSettings, sdxl: bool) -> int:
    """A worker's peak RSS for a job: the interpreter and numpy, plus activations that grow with the pixels.

    Calibrated on ``bench/diffusion.py`` (SD 1.5, 512 x 512, streamed weights: 218 to 257 MB)."""
    scale = settings.width * settings.height / (512 * 512)
    return int((150 + 110 * max(scale, 0.25) * (2 if sdxl else 1)) * MIB)


@dataclass
class Progress:
    completed: int
    total: int


@dataclass
class Result:
    png: bytes
    width: int
    height: int
    total_ns: int
    load_ns: int
    peak_rss: int


@dataclass
class WorkerHandle:
    model: ImageModel
    memory: int = 0  # bytes counted in the budget while resident
    proc: asyncio.subprocess.Process | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    residency: Residency = field(default_factory=Residency)
    next_id: int = 0
    resident: bool = False  # counted in the budget (from the reservation until it stops)

    @property
    def idle(self) -> bool:
        return not (self.lock.locked() or self.waiting > 0)

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "localllm.images.worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=env, limit=256 * MIB)
        try:
            ready = await asyncio.wait_for(self.read(), START_TIMEOUT)
        except TimeoutError:
            ready = None
        if not ready or ready.get("event") != "ready":
            await self.stop()
            raise LocalLLMError("the image worker did not start")

    def send(self, message: dict[str, Any]) -> None:
        if self.proc is None or self.proc.stdin is None or self.proc.stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")

    async def read(self) -> dict[str, Any] | None:
        """The worker's next event; None when it has exited."""
        assert self.proc is not None and self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        return json.loads(line) if line else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        self.resident = False
        if proc is None:
            return
        with contextlib.suppress(Exception):
            if proc.stdin:
                proc.stdin.close()  # EOF: the worker ends after its current step
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class ImageService(ResidentPool[WorkerHandle]):
    def __init__(self, store: ModelStore, scheduler: Any, *, default_keep_alive: float = 300.0,
                 max_queue: int = 512) -> None:
        self.store = store
        self.scheduler = scheduler  # llm.scheduler.Scheduler: the shared memory budget
        self.default_keep_alive = default_keep_alive
        self.max_queue = max_queue
        self._workers: dict[str, WorkerHandle] = {}
        self._converting: dict[Path, asyncio.Lock] = {}
        scheduler.tenants.append(self)  # the scheduler's budget counts and evicts this pool's residents too

    # --- residents (ResidentPool) ----------------------------------------------
    def residents(self) -> list[WorkerHandle]:
        return [w for w in self._workers.values() if w.resident]

    async def retire(self, handle: WorkerHandle) -> None:
        await handle.stop()
        self.scheduler.notify_idle()
        log.info("stopped the image worker of %s", handle.model.entry.name.display)

    # --- folders ---------------------------------------------------------------
    async def folder_for(self, model: ImageModel, settings: ImageSettings) -> Path:
        """The converted folder for this size and precision: the pulled one, or one converted now (once)."""
        config = model.config
        if (settings.width, settings.height, settings.precision) == (
                config.get("width"), config.get("height"), config.get("precision")):
            return await asyncio.to_thread(image_models.default_folder, self.store, model)
        target = image_models.variant_folder(self.store, model, settings.width, settings.height, settings.precision)
        lock = self._converting.setdefault(target, asyncio.Lock())
        async with lock:
            if not (target / "pipeline.json").exists():
                await asyncio.to_thread(self._convert_variant, model, settings, target)
        return target

    def _convert_variant(self, model: ImageModel, settings: ImageSettings, target: Path) -> None:
        from .convert_process import convert_in_child

        src = image_models.source_folder(self.store, model)
        staging = image_models.new_staging(self.store)
        try:
            log.info("converting %s for %dx%d %s", model.entry.name.display, settings.width, settings.height,
                     settings.precision)
            convert_in_child(src, staging / "out", settings.precision, settings.width, settings.height)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.rename(staging / "out", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --- jobs ------------------------------------------------------------------
    async def generate(self, model: ImageModel, prompt: str, settings: ImageSettings, seed: int,
                       keep_alive: float | None = None) -> AsyncIterator[Progress | Result]:
        """Progress per step, then the Result; raises our errors (before the first event where it can)."""
        handle = self._workers.setdefault(model.key, WorkerHandle(model=model))
        if handle.lock.locked() and handle.waiting >= self.max_queue:
            raise ServerBusy(f"{model.entry.name.display} has {handle.waiting} image requests waiting; "
                             "try again shortly", retry_after=5)
        started = time.monotonic_ns()
        handle.waiting += 1
        try:
            folder = await self.folder_for(model, settings)
            await handle.lock.acquire()
        finally:
            handle.waiting -= 1
        handle.residency.claimed()
        finished = True
        job_id = 0
        try:
            load_ns = await self._ensure_running(handle, settings)
            handle.next_id += 1
            job_id = handle.next_id
            handle.send({"id": job_id, "job": {
                "folder": str(folder), "prompt": prompt, "negative_prompt": settings.negative_prompt,
                "steps": settings.steps, "guidance": settings.guidance, "seed": seed,
                "scheduler": settings.scheduler}})
            finished = False
            while True:
                event = await handle.read()
                if event is None:
                    finished = True
                    await self.retire(handle)
                    raise LocalLLMError("the image worker exited during the job")
                if event.get("id") != job_id:
                    continue  # the end of an earlier, cancelled job
                kind = event.get("event")
                if kind == "progress":
                    yield Progress(int(event["completed"]), int(event["total"]))
                elif kind == "done":
                    finished = True
                    handle.memory = max(handle.memory, int(event.get("peak_rss", 0)))
                    yield Result(png=base64.b64decode(event["png"]), width=int(event["width"]),
                                 height=int(event["height"]), total_ns=time.monotonic_ns() - started,
                                 load_ns=load_ns, peak_rss=int(event.get("peak_rss", 0)))
                    return
                else:
                    finished = True
                    if kind == "cancelled":
                        return
                    raise _error(event)
        finally:
            if not finished:  # nobody waits for this job any more: the worker stops it at its next step
                handle.send({"cancel": job_id})
            handle.lock.release()
            self.scheduler.notify_idle()
            if self.used(handle, keep_alive):  # keep_alive 0: stopped now, outside this closing generator
                asyncio.get_running_loop().create_task(self._stop_if_idle(handle))

    async def _ensure_running(self, handle: WorkerHandle, settings: ImageSettings) -> int:
        """Start the worker (room made in the budget first); returns the nanoseconds it took."""
        need = estimate_memory(settings, handle.model.sdxl)
        label = handle.model.entry.name.display
        if handle.alive:
            if need > handle.memory:  # a bigger image than the worker was counted for
                await self.scheduler.reserve(label, need - handle.memory)
                handle.memory = need
            return 0
        start = time.monotonic_ns()
        if handle.resident:  # it died: its old reservation goes before the new one is made
            await self.retire(handle)
        await self.scheduler.reserve(label, need)
        handle.memory, handle.resident = need, True  # counted from here, before the process starts
        try:
            await handle.start()
        except BaseException:  # a failed start, or a client gone meanwhile: no half-started worker stays
            handle.resident = False
            if handle.proc is not None and handle.proc.returncode is None:
                handle.proc.kill()
            handle.proc = None
            raise
        log.info("started an image worker for %s (pid %d, ~%d MiB)", label, handle.proc.pid if handle.proc else 0,
                 need // MIB)
        return time.monotonic_ns() - start

    async def _stop_if_idle(self, handle: WorkerHandle) -> None:
        if handle.resident and handle.idle:
            await self.retire(handle)

    async def unload(self, model: ImageModel) -> None:
        """Stop the model's worker now if it is idle (a request with ``keep_alive: 0`` and no prompt)."""
        handle = self._workers.get(model.key)
        if handle is not None:
            await self._stop_if_idle(handle)

    # --- housekeeping ----------------------------------------------------------
    def start(self) -> None:
        self.start_reaper()

    async def stop(self) -> None:
        await self.stop_reaper()
        for handle in list(self._workers.values()):
            await handle.stop()


def _error(event: dict[str, Any]) -> LocalLLMError:
    kind = getattr(errors, str(event.get("kind")), None)
    message = str(event.get("message", "image generation failed"))
    if isinstance(kind, type) and issubclass(kind, LocalLLMError):
        return kind(message)
    return LocalLLMError(f"image generation failed: {message}")
