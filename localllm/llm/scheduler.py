"""Which models are loaded, for how long, and which instance serves a request.

A request names a model and options; the scheduler finds (or loads) the
llama.cpp instance whose load-time settings match, hands it out as a lease,
and when the lease ends keeps the instance for the request's ``keep_alive``
(default 5 minutes, ``LOCALLLM_KEEP_ALIVE``; negative: forever; 0: unload
now). Idle instances past their time are unloaded by a reaper task; when
more than ``LOCALLLM_MAX_LOADED_MODELS`` are loaded, the least recently used
idle one goes first. A busy instance is never unloaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import InvalidModelFile
from ..gguf_info import GGUFInfo, read_gguf
from ..names import ModelName
from ..store.manifests import ManifestEntry, MediaType
from ..store.models import ModelStore
from .options import DEFAULT_NUM_CTX, Options, parse_options
from .runner import LlamaRunner, LoadConfig, default_threads

log = logging.getLogger(__name__)
FOREVER = float("inf")


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
    runner: LlamaRunner
    active: int = 0
    expires_at: float = FOREVER  # monotonic seconds
    last_used: float = field(default_factory=time.monotonic)
    unload_when_idle: bool = False

    def expires_wallclock(self) -> datetime:
        if self.expires_at == FOREVER:
            return datetime(2318, 1, 1, tzinfo=UTC)  # far future, as Ollama shows "forever"
        return datetime.now(UTC) + timedelta(seconds=max(0.0, self.expires_at - time.monotonic()))


@lru_cache(maxsize=64)
def _gguf_info(digest: str, path: Path) -> GGUFInfo:
    """Blobs never change under their digest, so their header is read once (it costs tens of ms)."""
    return read_gguf(path)


class Scheduler:
    def __init__(
        self, store: ModelStore, *, max_loaded: int = 3, default_keep_alive: float = 300.0, max_queue: int = 512
    ) -> None:
        self.store = store
        self.max_queue = max_queue
        self.max_loaded = max(1, max_loaded)
        self.default_keep_alive = default_keep_alive
        self._loaded: dict[tuple, Loaded] = {}
        self._loading: dict[tuple, asyncio.Lock] = {}
        self._reaper: asyncio.Task | None = None

    # --- facts ---------------------------------------------------------------
    def facts(self, name: ModelName) -> ModelFacts:
        entry = self.store.get(name)
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
        trained = facts.info.context_length or DEFAULT_NUM_CTX
        # Beyond its trained context a model answers badly, and a KV cache for a million tokens is
        # gigabytes: a request asking for more gets the trained size.
        n_ctx = min(options.get("num_ctx", DEFAULT_NUM_CTX), trained)
        cores = default_threads()
        return LoadConfig(
            model_path=self._model_path(facts),
            n_ctx=n_ctx,
            n_batch=options.get("num_batch", 512),
            n_threads=min(options.get("num_thread", 0) or cores, 4 * cores),
            use_mmap=options.get("use_mmap", True),
            use_mlock=options.get("use_mlock", False),
            embedding=embedding,
            mean_pooling=f"{facts.info.architecture}.pooling_type" not in facts.info.metadata,
            last_n_tokens=max(options.get("repeat_last_n", 64), 0),
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
    ) -> AsyncIterator[tuple[LlamaRunner, float]]:
        """A loaded runner for the request, and how long loading took (0 when it was loaded)."""
        config = self._load_config(facts, options, embedding)
        key = (facts.entry.digest, config)
        loaded, load_seconds = await self._get_or_load(key, facts, config)
        loaded.active += 1
        try:
            yield loaded.runner, load_seconds
        finally:
            loaded.active -= 1
            loaded.last_used = time.monotonic()
            self._set_expiry(loaded, self.default_keep_alive if keep_alive is None else keep_alive)
            if loaded.unload_when_idle and loaded.active == 0:
                await self._unload(loaded)

    def _set_expiry(self, loaded: Loaded, keep_alive: float) -> None:
        loaded.unload_when_idle = keep_alive == 0
        loaded.expires_at = FOREVER if keep_alive < 0 else time.monotonic() + keep_alive

    async def _get_or_load(self, key: tuple, facts: ModelFacts, config: LoadConfig) -> tuple[Loaded, float]:
        loading = self._loading.setdefault(key, asyncio.Lock())
        async with loading:  # a request for a model that is loading waits for it
            current = self._loaded.get(key)
            if current is not None:
                current.unload_when_idle = False
                return current, 0.0
            await self._make_room(facts, config)
            runner = await asyncio.to_thread(LlamaRunner, config, max_queue=self.max_queue)
            loaded = Loaded(key=key, facts=facts, runner=runner)
            self._loaded[key] = loaded
            log.info("loaded %s (n_ctx=%d) in %.2fs", facts.name.display, config.n_ctx, runner.load_seconds)
            return loaded, runner.load_seconds

    async def _make_room(self, facts: ModelFacts, config: LoadConfig) -> None:
        # The same model loaded with other load-time options (num_ctx, say): replace it when idle.
        # Its embedding instance is kept beside a chat instance: a RAG client alternates the two.
        for loaded in list(self._loaded.values()):
            same_kind = loaded.runner.config.embedding == config.embedding
            if loaded.facts.entry.digest == facts.entry.digest and same_kind and loaded.active == 0:
                await self._unload(loaded)
        while len(self._loaded) >= self.max_loaded:
            idle = [item for item in self._loaded.values() if item.active == 0]
            if not idle:
                break  # everything is busy: load anyway rather than fail the request
            await self._unload(min(idle, key=lambda item: item.last_used))

    async def _unload(self, loaded: Loaded) -> None:
        if self._loaded.get(loaded.key) is loaded:
            del self._loaded[loaded.key]
            await asyncio.to_thread(loaded.runner.close)
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
