"""How long something stays loaded after its last use, and the reaper that retires it then.

Loaded models (``scheduler.py``) and image workers (``images/service.py``) live by the same rules:
after a use ends, a resident stays for the request's ``keep_alive`` (negative: forever; 0: retire
as soon as it is idle); a reaper retires idle residents whose time is up; to make room, the least
recently used idle resident goes first. ``ResidentPool`` holds those rules once; a pool says which
residents it has and how to retire one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)
FOREVER = float("inf")
REAP_EVERY = 0.5  # seconds between the reaper's looks


@dataclass
class Residency:
    """When a resident was last used and when it expires (monotonic seconds)."""

    expires_at: float = FOREVER
    last_used: float = field(default_factory=time.monotonic)
    unload_asked: bool = False  # an unload came while it was busy; a new use cancels it

    def claimed(self) -> None:
        """A new use began: a pending unload no longer applies (the model is wanted again)."""
        self.unload_asked = False

    def used(self, keep_alive: float) -> bool:
        """A use ended: the resident stays ``keep_alive`` seconds from now. True when it should
        go once idle instead: keep_alive 0, or an unload is pending."""
        now = time.monotonic()
        self.last_used = now
        self.expires_at = FOREVER if keep_alive < 0 else now + keep_alive
        return self.unload_asked or keep_alive == 0

    def expired(self, now: float) -> bool:
        return self.expires_at <= now

    def expires_wallclock(self) -> datetime:
        if self.expires_at == FOREVER:
            return datetime(2318, 1, 1, tzinfo=UTC)  # far future, as Ollama shows "forever"
        return datetime.now(UTC) + timedelta(seconds=max(0.0, self.expires_at - time.monotonic()))


class Resident(Protocol):
    residency: Residency

    @property
    def idle(self) -> bool: ...

    @property
    def memory(self) -> int:
        """Bytes it counts in the memory budget."""
        ...


R = TypeVar("R", bound=Resident)


class ResidentPool(Generic[R]):
    """The keep-alive, eviction and reaper rules over a pool's residents."""

    default_keep_alive: float = 300.0

    def residents(self) -> list[R]:
        raise NotImplementedError

    async def retire(self, resident: R) -> None:
        """Stop the resident and free what it holds."""
        raise NotImplementedError

    # --- what the memory budget sees ---------------------------------------------------------------
    def resident_memory(self) -> int:
        return sum(r.memory for r in self.residents())

    def resident_count(self) -> int:
        return len(self.residents())

    async def evict_idle(self) -> bool:
        """Retire the least recently used idle resident; False when none is idle."""
        idle = [r for r in self.residents() if r.idle]
        if not idle:
            return False
        await self.retire(min(idle, key=lambda r: r.residency.last_used))
        return True

    def running(self) -> list[R]:
        """The residents, most recently used first (``/api/ps``)."""
        return sorted(self.residents(), key=lambda r: r.residency.last_used, reverse=True)

    # --- keep_alive ----------------------------------------------------------------------------------
    def used(self, resident: R, keep_alive: float | None) -> bool:
        """A use of ``resident`` ended; True when it should be retired now (keep_alive 0 and idle)."""
        retire = resident.residency.used(self.default_keep_alive if keep_alive is None else keep_alive)
        return retire and resident.idle

    async def retire_when_idle(self, resident: R) -> None:
        """Retire it now if idle, else as soon as its last use ends."""
        if resident.idle:
            await self.retire(resident)
        else:
            resident.residency.unload_asked = True

    # --- the reaper ----------------------------------------------------------------------------------
    _reaper: asyncio.Task | None = None

    def start_reaper(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def stop_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None

    async def reap(self) -> None:
        """Retire every idle resident whose keep_alive has run out."""
        now = time.monotonic()
        for resident in self.residents():
            if resident.idle and resident.residency.expired(now):
                await self.retire(resident)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY)
            try:
                await self.reap()
            except Exception:  # one failed stop must not end the reaper
                log.exception("the reaper could not retire a resident")
