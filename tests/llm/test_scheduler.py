"""The scheduler's rules, driven through its runner-factory seam with fake runners: no llama.cpp, no daemon.

The store and the GGUF headers are real (tiny files written with ``gguf``); only the runner process is
stood in for, by an object that records whether it was closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ggufs import write_tiny_llama
from localllm.errors import BrokenModel, InsufficientMemory, InvalidModelFile, ServerBusy
from localllm.llm import scheduler as scheduler_module
from localllm.llm.facts import ModelFacts
from localllm.llm.options import Options
from localllm.llm.protocol import LoadConfig, PromptBuilt, PromptSpec
from localllm.llm.requests import CompletionRequest, Finished, Piece, TokenLogprob
from localllm.llm.residency import Residency
from localllm.llm.runner_client import Stats
from localllm.llm.scheduler import Scheduler
from localllm.names import ModelName
from localllm.store.manifests import Layer, Manifest, MediaType
from localllm.store.models import ModelStore


class FakeRunner:
    """What the scheduler needs of a runner process, and a record of what was done to it."""

    def __init__(self, config: LoadConfig, label: str) -> None:
        self.config = config
        self.label = label
        self.stats = Stats()
        self.load_seconds = 0.25
        self.on_exit: Callable[[Any], None] | None = None
        self.closed = False

    @property
    def alive(self) -> bool:
        return not self.closed

    @property
    def n_ctx(self) -> int:
        return self.config.n_ctx

    queued = 0
    active = 0

    async def complete(self, spec: PromptSpec, request: CompletionRequest
                       ) -> AsyncIterator[PromptBuilt | Piece | Finished]:
        yield Piece("hi")

    async def score(self, spec: PromptSpec, top: int) -> tuple[list[TokenLogprob], str | None]:
        return [], None

    async def embed(self, inputs: list[str | list[int]], *, truncate: bool) -> tuple[list[list[float]], int]:
        return [[0.0] for _ in inputs], len(inputs)

    async def close(self) -> None:
        self.closed = True

    def die(self) -> None:
        """The process ended unasked."""
        self.closed = True
        assert self.on_exit is not None
        self.on_exit(self)


class Factory:
    """A runner factory that hands out fake runners (or fails, ``failures`` times)."""

    def __init__(self) -> None:
        self.started: list[FakeRunner] = []
        self.failures = 0

    async def __call__(self, config: LoadConfig, label: str) -> FakeRunner:
        if self.failures:
            self.failures -= 1
            raise InvalidModelFile(f"{label}: the runner could not load the model")
        runner = FakeRunner(config, label)
        self.started.append(runner)
        return runner

    def closed(self) -> list[bool]:
        return [runner.closed for runner in self.started]

    def of(self, label: str) -> list[FakeRunner]:
        return [runner for runner in self.started if runner.label.split(":")[0] == label]


def store_model(store: ModelStore, tmp_path: Path, name: str, seed: int) -> ModelName:
    """Put a tiny llama into the store under ``name``, as a pull or a create would."""
    path = write_tiny_llama(tmp_path / "src" / f"{name}.gguf", seed=seed, context_length=256)
    size = path.stat().st_size
    digest = store.adopt_file(path)
    model = ModelName.parse(name)
    layer = Layer(mediaType=MediaType.MODEL, digest=digest, size=size)
    store.commit(model, Manifest(config=store.add_config({"model_format": "gguf"}), layers=[layer]))
    return model


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def models(store: ModelStore, tmp_path: Path) -> dict[str, ModelName]:
    return {label: store_model(store, tmp_path, label, seed) for seed, label in enumerate(["a", "b", "c"])}


def run(scheduler: Scheduler, work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    async def main() -> Any:
        try:
            return await work()
        finally:
            await scheduler.stop()

    return asyncio.run(main())


def make(store: ModelStore, factory: Factory, **kwargs: Any) -> Scheduler:
    return Scheduler(store, start_runner=factory, **kwargs)


async def use(scheduler: Scheduler, facts: ModelFacts, keep_alive: float | None = None, **options: Any) -> float:
    async with scheduler.lease(facts, Options(**options), keep_alive=keep_alive) as (_runner, load_seconds):
        return load_seconds


def test_a_loaded_model_serves_the_next_request_without_loading_again(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory)
    facts = scheduler.facts(models["a"])

    async def work() -> list[float]:
        return [await use(scheduler, facts), await use(scheduler, facts)]

    assert run(scheduler, work) == [0.25, 0.0]  # the first lease waited for the load, the second did not
    assert len(factory.started) == 1


def test_a_larger_context_serves_a_smaller_one_but_not_the_reverse(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory)
    facts = scheduler.facts(models["a"])

    async def work() -> None:
        await use(scheduler, facts, num_ctx=256)
        await use(scheduler, facts, num_ctx=128)  # served by the 256 instance
        assert len(factory.started) == 1
        await use(scheduler, facts, num_ctx=64)
        assert len(factory.started) == 1

    run(scheduler, work)
    assert factory.started[0].config.n_ctx == 256


def test_context_beyond_the_trained_size_is_capped(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory)
    run(scheduler, lambda: use(scheduler, scheduler.facts(models["a"]), num_ctx=100_000))
    assert factory.started[0].config.n_ctx == 256  # the tiny model's trained context


def test_keep_alive_zero_unloads_when_the_request_ends(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory)

    async def work() -> None:
        await use(scheduler, scheduler.facts(models["a"]), keep_alive=0)
        assert scheduler.residents() == []

    run(scheduler, work)
    assert factory.started[0].closed


def test_the_reaper_retires_idle_models_whose_time_is_up_and_keeps_forever_ones(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory)

    async def work() -> list[str]:
        await use(scheduler, scheduler.facts(models["a"]), keep_alive=0.05)
        await use(scheduler, scheduler.facts(models["b"]), keep_alive=-1)  # negative: forever
        await use(scheduler, scheduler.facts(models["c"]))  # the default, 300 s
        await asyncio.sleep(0.1)
        await scheduler.reap()
        return sorted(resident.facts.name.model for resident in scheduler.residents())

    assert run(scheduler, work) == ["b", "c"]
    assert [runner.closed for runner in factory.of("a") + factory.of("b")] == [True, True]  # b: by stop()


def test_a_busy_model_is_not_reaped_however_late(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory)
    facts = scheduler.facts(models["a"])

    async def work() -> None:
        await use(scheduler, facts, keep_alive=0.01)
        async with scheduler.lease(facts, Options(), keep_alive=0.01):
            await asyncio.sleep(0.05)
            await scheduler.reap()
            assert len(scheduler.residents()) == 1  # in use: the expired keep_alive does not count
        await asyncio.sleep(0.05)
        await scheduler.reap()
        assert scheduler.residents() == []

    run(scheduler, work)


def test_room_is_made_least_recently_used_first(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory, max_loaded=2)
    a, b, c = (scheduler.facts(models[label]) for label in "abc")

    async def work() -> None:
        await use(scheduler, a)
        await use(scheduler, b)
        await use(scheduler, a)  # a is now the most recently used
        await use(scheduler, c)
        assert factory.closed() == [False, True, False]  # b went

    run(scheduler, work)


def test_a_busy_model_is_never_evicted_and_the_waiting_load_gives_up_with_503(store, models, monkeypatch) -> None:
    monkeypatch.setattr(scheduler_module, "WAIT_FOR_ROOM", 0.3)
    factory = Factory()
    scheduler = make(store, factory, max_loaded=1)
    a, b = scheduler.facts(models["a"]), scheduler.facts(models["b"])

    async def work() -> None:
        async with scheduler.lease(a, Options(), keep_alive=None):
            with pytest.raises(ServerBusy) as caught:
                await use(scheduler, b)
            assert caught.value.status_code == 503
            assert caught.value.retry_after == 5
            assert not factory.started[0].closed

    run(scheduler, work)
    assert factory.of("b") == []


def test_a_waiting_load_proceeds_as_soon_as_the_busy_model_is_idle(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory, max_loaded=1)
    a, b = scheduler.facts(models["a"]), scheduler.facts(models["b"])

    async def work() -> None:
        release = asyncio.Event()

        async def hold_a() -> None:
            async with scheduler.lease(a, Options(), keep_alive=None):
                await release.wait()

        holder = asyncio.create_task(hold_a())
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(use(scheduler, b))
        await asyncio.sleep(0.1)
        assert not waiting.done() and factory.of("b") == []
        release.set()
        await asyncio.wait_for(waiting, timeout=5)
        await holder
        assert factory.of("a")[0].closed and not factory.of("b")[0].closed

    run(scheduler, work)


def test_a_model_larger_than_the_budget_is_refused_at_once(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory, memory_budget=1024)
    with pytest.raises(InsufficientMemory) as caught:
        run(scheduler, lambda: use(scheduler, scheduler.facts(models["a"])))
    assert caught.value.status_code == 507
    assert "LOCALLLM_MAX_MEMORY" in caught.value.message
    assert factory.started == []


def test_the_memory_budget_counts_the_runners_measured_memory(store, models) -> None:
    """Two models fit the count limit but not the budget once the first runner reports its resident set."""
    factory = Factory()
    probe = make(store, Factory())
    a, b = probe.facts(models["a"]), probe.facts(models["b"])

    async def measure() -> int:
        async with probe.lease(a, Options(), keep_alive=None):
            return probe.resident_memory()

    one = run(probe, measure)
    scheduler = make(store, factory, memory_budget=3 * one, max_loaded=3)

    async def work() -> None:
        await use(scheduler, a)
        factory.started[0].stats.rss = 2 * one + 1  # it grew: now b does not fit beside it
        await use(scheduler, b)
        assert factory.of("a")[0].closed and not factory.of("b")[0].closed

    run(scheduler, work)


def test_two_failed_loads_mark_a_model_broken_until_it_is_stored_again(store, models, tmp_path) -> None:
    factory = Factory()
    factory.failures = 2
    scheduler = make(store, factory)
    facts = scheduler.facts(models["a"])

    async def work() -> None:
        for _ in range(2):
            with pytest.raises(InvalidModelFile):
                await use(scheduler, facts)
        with pytest.raises(BrokenModel) as caught:
            await use(scheduler, facts)
        assert "create or pull it again" in caught.value.message
        assert [f.name.model for f, _why in scheduler.broken_models()] == ["a"]
        store_model(store, tmp_path / "again", "a", seed=7)  # a commit gives it a fresh chance
        await use(scheduler, scheduler.facts(models["a"]))

    run(scheduler, work)
    assert len(factory.started) == 1


def test_a_runner_that_dies_is_replaced_by_the_next_request(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory)
    facts = scheduler.facts(models["a"])

    async def work() -> None:
        await use(scheduler, facts)
        factory.started[0].die()
        assert scheduler.residents() == []
        await use(scheduler, facts)

    run(scheduler, work)
    assert len(factory.started) == 2


def test_unloading_a_busy_model_waits_for_its_request(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory)
    facts = scheduler.facts(models["a"])

    async def work() -> None:
        async with scheduler.lease(facts, Options(), keep_alive=None):
            await scheduler.unload(facts)
            assert not factory.started[0].closed
        assert factory.started[0].closed and scheduler.residents() == []

    run(scheduler, work)


def test_a_request_that_arrives_after_an_unload_keeps_the_model(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory)
    facts = scheduler.facts(models["a"])

    async def work() -> None:
        async with scheduler.lease(facts, Options(), keep_alive=None):
            await scheduler.unload(facts)
            await use(scheduler, facts)  # wanted again: the pending unload is off
        assert factory.closed() == [False]

    run(scheduler, work)


def test_the_last_request_to_end_sets_the_keep_alive(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory)
    facts = scheduler.facts(models["a"])

    async def work() -> None:
        async with scheduler.lease(facts, Options(), keep_alive=None):
            await use(scheduler, facts, keep_alive=0)  # ends first, while the other is busy
        assert factory.closed() == [False]
        async with scheduler.lease(facts, Options(), keep_alive=0):
            await use(scheduler, facts)
        assert factory.closed() == [True]

    run(scheduler, work)


def test_chat_and_embedding_instances_of_one_model_live_side_by_side(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory, num_parallel=3)
    facts = scheduler.facts(models["a"])

    async def work() -> None:
        await use(scheduler, facts)
        async with scheduler.lease(facts, Options(), keep_alive=None, embedding=True):
            pass
        assert [(r.config.embedding, r.config.n_parallel, r.closed) for r in factory.started] == [
            (False, 3, False), (True, 1, False)]

    run(scheduler, work)


class Tenant:
    """Another user of the budget (as the image workers are): one idle resident of ``memory`` bytes."""

    def __init__(self, memory: int) -> None:
        self.memory = memory
        self.evicted = False

    def resident_memory(self) -> int:
        return 0 if self.evicted else self.memory

    def resident_count(self) -> int:
        return 0 if self.evicted else 1

    async def evict_idle(self) -> bool:
        if self.evicted:
            return False
        self.evicted = True
        return True


def test_a_tenants_idle_resident_makes_room_after_idle_models(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory, max_loaded=2)
    tenant = Tenant(memory=1)
    scheduler.tenants.append(tenant)
    a, b = scheduler.facts(models["a"]), scheduler.facts(models["b"])

    async def work() -> None:
        await use(scheduler, a)  # a and the tenant: the count limit is reached
        async with scheduler.lease(a, Options(), keep_alive=None):  # a busy: the tenant must go
            await use(scheduler, b)
        assert tenant.evicted and not factory.of("a")[0].closed

    run(scheduler, work)


def test_ps_lists_most_recently_used_first_with_a_wallclock_expiry(store, models) -> None:
    factory = Factory()
    scheduler = make(store, factory)

    async def work() -> list[tuple[str, float]]:
        await use(scheduler, scheduler.facts(models["a"]), keep_alive=60)
        await use(scheduler, scheduler.facts(models["b"]), keep_alive=-1)
        now = datetime.now(UTC)
        return [(r.facts.name.model, (r.residency.expires_wallclock() - now).total_seconds())
                for r in scheduler.running()]

    (first, forever), (second, minute) = run(scheduler, work)
    assert (first, second) == ("b", "a")
    assert forever > 100 * 365 * 86400 and 55 < minute <= 60


def test_residency_counts_from_the_end_of_each_use() -> None:
    residency = Residency()
    assert not residency.used(10)
    first = residency.expires_at
    assert not residency.expired(first - 1) and residency.expired(first)
    assert residency.used(0)  # keep_alive 0: retire once idle
    assert not residency.used(-1) and not residency.expired(float("1e300"))
