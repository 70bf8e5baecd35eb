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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..errors import BrokenModel, InsufficientMemory, LocalLLMError, ServerBusy
from ..names import ModelName
from ..store.models import ModelStore
from ..units import usable_cores
from .facts import ModelFacts, adapter_files, model_file, read_facts
from .memory import estimate, gib
from .options import DEFAULT_NUM_CTX, Options
from .protocol import LoadConfig, PromptBuilt, PromptSpec
from .requests import CompletionRequest, Finished, Piece, TokenLogprob
from .residency import Residency, ResidentPool
from .runner_client import RunnerProcess, Stats

log = logging.getLogger(__name__)
WAIT_FOR_ROOM = 60.0  # seconds a load waits for busy models to finish before a 503
BROKEN_AFTER = 2  # failed loads in a row that mark a model broken (until it is created or pulled again)


class Runner(Protocol):
    """A loaded model in its own process (``runner_client.RunnerProcess``; tests pass fakes)."""

    config: LoadConfig
    stats: Stats
    load_seconds: float
    on_exit: Callable[[Any], None] | None

    @property
    def alive(self) -> bool: ...

    @property
    def n_ctx(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def active(self) -> int: ...

    def complete(self, spec: PromptSpec, request: CompletionRequest
                 ) -> AsyncIterator[PromptBuilt | Piece | Finished]: ...

    async def score(self, spec: PromptSpec, top: int) -> tuple[list[TokenLogprob], str | None]: ...

    async def embed(self, inputs: list[str | list[int]], *, truncate: bool) -> tuple[list[list[float]], int]: ...

    async def close(self) -> None: ...


RunnerFactory = Callable[[LoadConfig, str], Awaitable[Runner]]  # (load config, model's display name) -> a runner


@dataclass
class Loaded:
    key: tuple
    facts: ModelFacts
    runner: Runner
    estimate: int = 0  # bytes, from the model's facts
    active: int = 0
    residency: Residency = field(default_factory=Residency)

    @property
    def idle(self) -> bool:
        return self.active == 0

    @property
    def memory(self) -> int:
        """What the instance counts in the budget: its runner's measured resident set, or the estimate
        when that is larger (the KV cache and buffers fill as requests come)."""
        return max(self.estimate, self.runner.stats.rss)


class Tenant(Protocol):
    """Something else that lives in the memory budget (the image workers)."""

    def resident_memory(self) -> int: ...

    def resident_count(self) -> int: ...

    async def evict_idle(self) -> bool:
        """Stop the least recently used idle resident; False when none is idle."""
        ...


class Scheduler(ResidentPool[Loaded]):
    def __init__(
        self, store: ModelStore, *, max_loaded: int = 3, default_keep_alive: float = 300.0, max_queue: int = 512,
        num_parallel: int = 4, memory_budget: int | None = None, metrics: Any = None,
        default_num_ctx: int = DEFAULT_NUM_CTX, start_runner: RunnerFactory | None = None,
    ) -> None:
        self.store = store
        self.max_queue = max_queue
        self.num_parallel = max(1, num_parallel)
        self.default_num_ctx = default_num_ctx
        self.memory_budget = memory_budget
        self.metrics = metrics
        self.start_runner: RunnerFactory = start_runner or self._start_runner_process
        self._idle = asyncio.Event()  # set whenever a lease ends: a waiting load looks again
        self.max_loaded = max(1, max_loaded)
        self.default_keep_alive = default_keep_alive
        self._loaded: dict[tuple, Loaded] = {}
        self._loading: dict[tuple, asyncio.Lock] = {}
        self.tenants: list[Tenant] = []
        self._failed_loads: dict[str, tuple[ModelFacts, list[str]]] = {}  # manifest digest -> failed loads in a row
        store.on_commit.append(self.forget_failures)  # created or pulled again: a fresh chance

    async def _start_runner_process(self, config: LoadConfig, label: str) -> Runner:
        return await RunnerProcess.start(config, label, max_queue=self.max_queue,
                                         on_token=getattr(self.metrics, "observe_token", None))

    def facts(self, name: ModelName) -> ModelFacts:
        return read_facts(self.store, name)

    def _load_config(self, facts: ModelFacts, options: Options, embedding: bool) -> LoadConfig:
        trained = facts.info.context_length or self.default_num_ctx
        # Beyond its trained context a model answers badly, and a KV cache for a million tokens is
        # gigabytes: a request asking for more gets the trained size.
        n_ctx = min(options.get("num_ctx", self.default_num_ctx), trained)
        cores = usable_cores()
        return LoadConfig(
            model_path=model_file(self.store, facts),
            adapters=adapter_files(self.store, facts),
            n_ctx=n_ctx,
            n_batch=options.get("num_batch", 512),
            n_threads=min(options.get("num_thread", 0) or cores, 4 * cores),
            use_mmap=options.get("use_mmap", True),
            use_mlock=options.get("use_mlock", False),
            embedding=embedding,
            mean_pooling=f"{facts.info.architecture}.pooling_type" not in facts.info.metadata,
            n_parallel=1 if embedding else self.num_parallel,
        )

    # --- leases --------------------------------------------------------------
    @asynccontextmanager
    async def lease(
        self, facts: ModelFacts, options: Options, *, keep_alive: float | None, embedding: bool = False
    ) -> AsyncIterator[tuple[Runner, float]]:
        """A loaded runner for the request, and how long loading took (0 when it was loaded)."""
        config = self._load_config(facts, options, embedding)
        loaded, load_seconds = await self._get_or_load(facts, config)
        loaded.active += 1
        try:
            yield loaded.runner, load_seconds
        finally:
            loaded.active -= 1
            self._idle.set()
            if self.used(loaded, keep_alive):
                await self.retire(loaded)

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
                current.residency.claimed()
                return current, 0.0
            broken = self.broken(facts.entry.digest)
            if broken:
                raise BrokenModel(f"{facts.name.display} is broken: {broken}; create or pull it again",
                                  param="model")
            memory = estimate(facts.info, facts.weights_size, config.n_ctx, config.n_parallel, config.n_batch)
            await self._make_room(facts, config, memory)
            try:
                runner = await self.start_runner(config, facts.name.display)
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

    # --- broken models ---------------------------------------------------------
    def broken(self, digest: str) -> str | None:
        """Why a model is broken (its runner failed to load it twice in a row), or None."""
        _facts, failures = self._failed_loads.get(digest, (None, []))
        return failures[-1] if len(failures) >= BROKEN_AFTER else None

    def broken_models(self) -> list[tuple[ModelFacts, str]]:
        """The broken models still in the store under the same manifest."""
        result = []
        for digest, (facts, failures) in list(self._failed_loads.items()):
            still_stored = self.store.exists(facts.name) and self.store.get(facts.name).digest == digest
            if len(failures) >= BROKEN_AFTER and still_stored:
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

    # --- the memory budget -------------------------------------------------------
    def _fits(self, memory: int) -> bool:
        used = self.resident_memory() + sum(t.resident_memory() for t in self.tenants)
        within_budget = self.memory_budget is None or used + memory <= self.memory_budget
        return within_budget and self.resident_count() + sum(t.resident_count() for t in self.tenants) < self.max_loaded

    async def reserve(self, label: str, memory: int) -> None:
        """Make room for a tenant's new resident (an image worker) of ``memory`` bytes, as for a model load."""
        if self.memory_budget is not None and memory > self.memory_budget:
            raise InsufficientMemory(f"{label} needs about {gib(memory)}, more than the memory budget of "
                                     f"{gib(self.memory_budget)} (LOCALLLM_MAX_MEMORY)")
        await self._wait_for_room(label, memory)

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
            if loaded.facts.entry.digest == facts.entry.digest and same_kind and loaded.idle:
                await self.retire(loaded)
        await self._wait_for_room(facts.name.display, memory)

    async def _wait_for_room(self, label: str, memory: int) -> None:
        """Evict idle residents, least recently used first, until ``memory`` fits; a busy one is never
        evicted, so this waits for one to become idle, and gives up with a 503 after WAIT_FOR_ROOM."""
        deadline = time.monotonic() + WAIT_FOR_ROOM
        while not self._fits(memory):
            if await self._evict_one():
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerBusy(f"every loaded model is busy and {label} does not fit beside them; try again "
                                 "shortly", retry_after=5)
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=min(remaining, 1.0))

    async def _evict_one(self) -> bool:
        """Unload the least recently used idle model, else an idle tenant resident."""
        if await self.evict_idle():
            return True
        for tenant in self.tenants:
            if await tenant.evict_idle():
                return True
        return False

    def notify_idle(self) -> None:
        """A tenant's resident became idle: a waiting load looks again."""
        self._idle.set()

    # --- residents (ResidentPool) ------------------------------------------------
    def residents(self) -> list[Loaded]:
        return list(self._loaded.values())

    async def retire(self, loaded: Loaded) -> None:
        if self._loaded.get(loaded.key) is loaded:
            del self._loaded[loaded.key]
            await loaded.runner.close()
            self._idle.set()
            log.info("unloaded %s", loaded.facts.name.display)

    async def unload(self, facts: ModelFacts) -> None:
        """Unload every instance of a model now, or when its requests end (an empty request with
        ``keep_alive: 0``)."""
        for loaded in list(self._loaded.values()):
            if loaded.facts.entry.digest == facts.entry.digest:
                await self.retire_when_idle(loaded)

    # --- housekeeping --------------------------------------------------------
    def start(self) -> None:
        self.start_reaper()

    async def stop(self) -> None:
        await self.stop_reaper()
        for loaded in list(self._loaded.values()):
            await self.retire(loaded)

    def queued(self) -> int:
        return sum(item.runner.queued for item in self._loaded.values())

    def active_sequences(self) -> int:
        return sum(item.runner.active for item in self._loaded.values())
