"""Which models are loaded, for how long, and which instance serves a request.

A request names a model and options; the scheduler finds (or loads) the
llama.cpp instance whose load-time settings match (one with a larger context
serves a request for a smaller one), hands it out as a lease, and when the
lease ends keeps the instance for the request's ``keep_alive`` (default 5
minutes, ``LOCALLLM_KEEP_ALIVE``; negative: forever; 0: unload now). Idle
instances past their time are unloaded by a reaper task.

Room: at most ``LOCALLLM_MAX_LOADED_MODELS`` instances, whose estimated
memory (weights + KV cache, ``memory.py``) stays within ``LOCALLLM_MAX_MEMORY``.
To load another, idle instances are unloaded least recently used first; a
busy instance is never unloaded, so a load that does not fit waits for one
to become idle (and gives up with a 503 after ``WAIT_FOR_ROOM`` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from ..errors import BrokenModel, InsufficientMemory, InvalidModelFile, LocalLLMError, ServerBusy, UnsupportedInput
from ..gguf_info import GGUFInfo, read_gguf
from ..names import ModelName
from ..store.manifests import ManifestEntry, MediaType
from ..store.models import ModelStore
from .memory import estimate, gib
from .options import DEFAULT_NUM_CTX, Options, parse_options
from .protocol import LoadConfig
from .runner_client import RunnerProcess

log = logging.getLogger(__name__)
FOREVER = float("inf")
WAIT_FOR_ROOM = 60.0  # seconds a load waits for busy models to finish before a 503
BROKEN_AFTER = 2  # failed loads in a row that mark a model broken (until it is created or pulled again)


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@dataclass
class ModelFacts:
    """What a request needs to know about a stored model before and after loading."""

    entry: ManifestEntry
    info: GGUFInfo
    params: Options
    template: str | None  # the manifest's template layer
    system: str | None
    messages: list[dict[str, Any]]
    has_vision: bool

    @property
    def name(self) -> ModelName:
        return self.entry.name


@dataclass
class Loaded:
    key: tuple
    facts: ModelFacts
    runner: RunnerProcess
    estimate: int = 0  # bytes, from the model's facts
    active: int = 0
    expires_at: float = FOREVER  # monotonic seconds
    last_used: float = field(default_factory=time.monotonic)
    unload_when_idle: bool = False

    @property
    def memory(self) -> int:
        """What the instance counts in the budget: its runner's measured resident set, or the estimate
        when that is larger (the KV cache and buffers fill as requests come)."""
        return max(self.estimate, self.runner.stats.rss)

    def expires_wallclock(self) -> datetime:
        if self.expires_at == FOREVER:
            return datetime(2318, 1, 1, tzinfo=UTC)  # far future, as Ollama shows "forever"
        return datetime.now(UTC) + timedelta(seconds=max(0.0, self.expires_at - time.monotonic()))


class Tenant(Protocol):
    """Something else that lives in the memory budget (the image workers)."""

    def resident_memory(self) -> int: ...

    def resident_count(self) -> int: ...

    async def evict_idle(self) -> bool:
        """Stop the least recently used idle resident; False when none is idle."""
        ...


@lru_cache(maxsize=64)
def _gguf_info(digest: str, path: Path) -> GGUFInfo:
    """Blobs never change under their digest, so their header is read once (it costs tens of ms)."""
    return read_gguf(path)


class Scheduler:
    def __init__(
        self, store: ModelStore, *, max_loaded: int = 3, default_keep_alive: float = 300.0, max_queue: int = 512,
        num_parallel: int = 4, memory_budget: int | None = None, metrics: Any = None,
        default_num_ctx: int = DEFAULT_NUM_CTX,
    ) -> None:
        self.store = store
        self.max_queue = max_queue
        self.num_parallel = max(1, num_parallel)
        self.default_num_ctx = default_num_ctx
        self.memory_budget = memory_budget
        self.metrics = metrics
        self._idle = asyncio.Event()  # set whenever a lease ends: a waiting load looks again
        self.max_loaded = max(1, max_loaded)
        self.default_keep_alive = default_keep_alive
        self._loaded: dict[tuple, Loaded] = {}
        self._loading: dict[tuple, asyncio.Lock] = {}
        self._reaper: asyncio.Task | None = None
        self.tenants: list[Tenant] = []
        self._failed_loads: dict[str, tuple[ModelFacts, list[str]]] = {}  # manifest digest -> failed loads in a row
        store.on_commit.append(self.forget_failures)  # created or pulled again: a fresh chance

    # --- facts ---------------------------------------------------------------
    def facts(self, name: ModelName) -> ModelFacts:
        entry = self.store.get(name)
        if entry.manifest.layer(MediaType.IMAGE_FILE) is not None:
            raise UnsupportedInput(f"{entry.name.display} is an image model: it makes images (/api/generate with a "
                                   "prompt, or /v1/images/generations), not text or embeddings", param="model")
        paths = self.store.model_paths(entry.manifest)
        if not paths:
            raise InvalidModelFile(f"'{entry.name.display}' has no model layer")
        return ModelFacts(
            entry=entry,
            info=_gguf_info(entry.manifest.layers_of(MediaType.MODEL)[0].digest, paths[0]),
            params=parse_options(self.store.layer_json(entry.manifest, MediaType.PARAMS) or {}, source="params"),
            template=self.store.layer_text(entry.manifest, MediaType.TEMPLATE),
            system=self.store.layer_text(entry.manifest, MediaType.SYSTEM),
            messages=self.store.layer_json(entry.manifest, MediaType.MESSAGES) or [],
            has_vision=entry.manifest.layer(MediaType.PROJECTOR) is not None,
        )

    def _load_config(self, facts: ModelFacts, options: Options, embedding: bool) -> LoadConfig:
        trained = facts.info.context_length or self.default_num_ctx
        # Beyond its trained context a model answers badly, and a KV cache for a million tokens is
        # gigabytes: a request asking for more gets the trained size.
        n_ctx = min(options.get("num_ctx", self.default_num_ctx), trained)
        cores = default_threads()
        return LoadConfig(
            model_path=self._model_path(facts),
            adapters=tuple(self.store.blobs.path(layer.digest)
                           for layer in facts.entry.manifest.layers_of(MediaType.ADAPTER)),
            n_ctx=n_ctx,
            n_batch=options.get("num_batch", 512),
            n_threads=min(options.get("num_thread", 0) or cores, 4 * cores),
            use_mmap=options.get("use_mmap", True),
            use_mlock=options.get("use_mlock", False),
            embedding=embedding,
            mean_pooling=f"{facts.info.architecture}.pooling_type" not in facts.info.metadata,
            n_parallel=1 if embedding else self.num_parallel,
        )

    def _model_path(self, facts: ModelFacts) -> Path:
        """The file llama.cpp opens. Split models need their parts side by side under their own
        names, so they get a folder of links next to the blobs."""
        manifest = facts.entry.manifest
        layers = manifest.layers_of(MediaType.MODEL)
        if len(layers) == 1:
            return self.store.blobs.path(layers[0].digest)
        folder = self.store.root / "links" / facts.entry.digest.split(":", 1)[1][:16]
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, layer in enumerate(layers, start=1):
            name = Path(layer.filename or f"model-{index:05d}-of-{len(layers):05d}.gguf").name
            link = folder / name
            if not link.is_symlink():
                link.symlink_to(self.store.blobs.path(layer.digest))
            paths.append(link)
        return paths[0]

    # --- leases --------------------------------------------------------------
    @asynccontextmanager
    async def lease(
        self, facts: ModelFacts, options: Options, *, keep_alive: float | None, embedding: bool = False
    ) -> AsyncIterator[tuple[RunnerProcess, float]]:
        """A loaded runner for the request, and how long loading took (0 when it was loaded)."""
        config = self._load_config(facts, options, embedding)
        loaded, load_seconds = await self._get_or_load(facts, config)
        loaded.active += 1
        try:
            yield loaded.runner, load_seconds
        finally:
            loaded.active -= 1
            loaded.last_used = time.monotonic()
            self._idle.set()
            self._set_expiry(loaded, self.default_keep_alive if keep_alive is None else keep_alive)
            if loaded.unload_when_idle and loaded.active == 0:
                await self._unload(loaded)

    def _set_expiry(self, loaded: Loaded, keep_alive: float) -> None:
        loaded.unload_when_idle = keep_alive == 0
        loaded.expires_at = FOREVER if keep_alive < 0 else time.monotonic() + keep_alive

    def _serving(self, digest: str, config: LoadConfig) -> Loaded | None:
        """A loaded instance that can serve ``config``: the same, or the same with a larger context."""
        for loaded in self._loaded.values():
            have = loaded.runner.config
            if loaded.runner.alive and loaded.facts.entry.digest == digest and have.n_ctx >= config.n_ctx:
                if replace(have, n_ctx=config.n_ctx) == config:
                    return loaded
        return None

    async def _get_or_load(self, facts: ModelFacts, config: LoadConfig) -> tuple[Loaded, float]:
        key = (facts.entry.digest, config.embedding)
        loading = self._loading.setdefault(key, asyncio.Lock())
        async with loading:  # a request for a model that is loading waits for it
            current = self._serving(facts.entry.digest, config)
            if current is not None:
                current.unload_when_idle = False
                return current, 0.0
            broken = self.broken(facts.entry.digest)
            if broken:
                raise BrokenModel(f"{facts.name.display} is broken: {broken}; create or pull it again",
                                  param="model")
            memory = self._estimate(facts, config)
            await self._make_room(facts, config, memory)
            try:
                runner = await RunnerProcess.start(config, facts.name.display, max_queue=self.max_queue,
                                                   on_token=getattr(self.metrics, "observe_token", None))
            except LocalLLMError as exc:
                self._failed_loads.setdefault(facts.entry.digest, (facts, []))[1].append(exc.message)
                raise
            self._failed_loads.pop(facts.entry.digest, None)
            loaded = Loaded(key=(facts.entry.digest, config), facts=facts, runner=runner, estimate=memory)
            runner.on_exit = lambda _runner: self._runner_died(loaded)
            self._loaded[loaded.key] = loaded
            log.info("loaded %s (n_ctx=%d x %d, ~%s) in %.2fs", facts.name.display, config.n_ctx,
                     config.n_parallel, gib(loaded.memory), runner.load_seconds)
            return loaded, runner.load_seconds

    def broken(self, digest: str) -> str | None:
        """Why a model is broken (its runner failed to load it twice in a row), or None."""
        _facts, failures = self._failed_loads.get(digest, (None, []))
        return failures[-1] if len(failures) >= BROKEN_AFTER else None

    def broken_models(self) -> list[tuple[ModelFacts, str]]:
        """The broken models still in the store under the same manifest."""
        result = []
        for digest, (facts, failures) in list(self._failed_loads.items()):
            if len(failures) >= BROKEN_AFTER and self.store.exists(facts.name) and self.store.get(facts.name).digest == digest:
                result.append((facts, failures[-1]))
        return result

    def forget_failures(self, name: ModelName, digest: str) -> None:
        """A model was created or pulled again: give it a fresh chance."""
        for failed, (facts, _failures) in list(self._failed_loads.items()):
            if failed == digest or facts.name == name:
                self._failed_loads.pop(failed, None)

    def _runner_died(self, loaded: Loaded) -> None:
        """A runner ended unasked: its requests failed already; the next request loads a fresh one."""
        if self._loaded.get(loaded.key) is loaded:
            del self._loaded[loaded.key]
        self._idle.set()

    def _estimate(self, facts: ModelFacts, config: LoadConfig) -> int:
        manifest = facts.entry.manifest
        files = manifest.layers_of(MediaType.MODEL) + manifest.layers_of(MediaType.ADAPTER)
        weights = sum(layer.size for layer in files)
        return estimate(facts.info, weights, config.n_ctx, config.n_parallel, config.n_batch)

    def _fits(self, memory: int) -> bool:
        used = sum(item.memory for item in self._loaded.values()) + sum(t.resident_memory() for t in self.tenants)
        within_budget = self.memory_budget is None or used + memory <= self.memory_budget
        return within_budget and len(self._loaded) + sum(t.resident_count() for t in self.tenants) < self.max_loaded

    async def reserve(self, label: str, memory: int) -> None:
        """Make room for a tenant's new resident (an image worker) of ``memory`` bytes, as for a model load."""
        if self.memory_budget is not None and memory > self.memory_budget:
            raise InsufficientMemory(f"{label} needs about {gib(memory)}, more than the memory budget of "
                                     f"{gib(self.memory_budget)} (LOCALLLM_MAX_MEMORY)")
        deadline = time.monotonic() + WAIT_FOR_ROOM
        while not self._fits(memory):
            if await self._evict_one():
                continue
            if time.monotonic() >= deadline:
                raise ServerBusy(f"every loaded model is busy and {label} does not fit beside them; try again "
                                 "shortly", retry_after=5)
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=1.0)

    async def _evict_one(self) -> bool:
        """Unload the least recently used idle model, else an idle tenant resident."""
        idle = [item for item in self._loaded.values() if item.active == 0]
        if idle:
            await self._unload(min(idle, key=lambda item: item.last_used))
            return True
        for tenant in self.tenants:
            if await tenant.evict_idle():
                return True
        return False

    def notify_idle(self) -> None:
        """A tenant's resident became idle: a waiting load looks again."""
        self._idle.set()

    async def _make_room(self, facts: ModelFacts, config: LoadConfig, memory: int) -> None:
        if self.memory_budget is not None and memory > self.memory_budget:
            raise InsufficientMemory(
                f"{facts.name.display} needs about {gib(memory)} with num_ctx {config.n_ctx} x "
                f"{config.n_parallel} sequences, more than the memory budget of {gib(self.memory_budget)} "
                "(LOCALLLM_MAX_MEMORY); lower num_ctx or LOCALLLM_NUM_PARALLEL"
            )
        # The same model loaded with other load-time options (a smaller num_ctx, say): replace it when idle.
        # Its embedding instance is kept beside a chat instance: a RAG client alternates the two.
        for loaded in list(self._loaded.values()):
            same_kind = loaded.runner.config.embedding == config.embedding
            if loaded.facts.entry.digest == facts.entry.digest and same_kind and loaded.active == 0:
                await self._unload(loaded)
        deadline = time.monotonic() + WAIT_FOR_ROOM
        while not self._fits(memory):
            if await self._evict_one():
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerBusy(f"every loaded model is busy and {facts.name.display} does not fit beside them; "
                                 "try again shortly", retry_after=5)
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=min(remaining, 1.0))

    async def _unload(self, loaded: Loaded) -> None:
        if self._loaded.get(loaded.key) is loaded:
            del self._loaded[loaded.key]
            await loaded.runner.close()
            log.info("unloaded %s", loaded.facts.name.display)

    async def unload(self, facts: ModelFacts) -> None:
        """Unload every idle instance of a model now (an empty request with ``keep_alive: 0``)."""
        for loaded in list(self._loaded.values()):
            if loaded.facts.entry.digest == facts.entry.digest:
                if loaded.active == 0:
                    await self._unload(loaded)
                else:
                    loaded.unload_when_idle = True

    # --- housekeeping --------------------------------------------------------
    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def stop(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for loaded in list(self._loaded.values()):
            await self._unload(loaded)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for loaded in list(self._loaded.values()):
                if loaded.active == 0 and loaded.expires_at <= now:
                    await self._unload(loaded)

    def running(self) -> list[Loaded]:
        return sorted(self._loaded.values(), key=lambda item: item.last_used, reverse=True)

    def queued(self) -> int:
        return sum(item.runner.queued for item in self._loaded.values())

    def active_sequences(self) -> int:
        return sum(item.runner.active for item in self._loaded.values())
