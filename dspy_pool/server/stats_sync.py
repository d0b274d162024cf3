"""Keeps the program statistics (optimize/stats.py) and the state store in step.

Every `interval_s` this front adds the counts it made since the last time to the
store's sums (one batch, atomically) and reads the sums back: what every front
and replica added. Once at start (so a restarted server shows the figures it had)
and once at stop (after the drain, so the last calls count). A store that cannot
be reached keeps the counts here until it can.
"""

from __future__ import annotations

import asyncio

import structlog

from dspy_pool.optimize.stats import ProgramStats
from dspy_pool.state import StateError, StateStore, StateUnavailable

log = structlog.get_logger("dspy_pool.stats")

SYNC_INTERVAL_S = 5.0
# A batch the store refuses (not: cannot be reached) is tried this often, then dropped: one bad batch must not hold
# back every later count for good.
REFUSED_TRIES = 3


class StatsSync:
    def __init__(self, stats: ProgramStats, store: StateStore, interval_s: float = SYNC_INTERVAL_S) -> None:
        self.stats = stats
        self.store = store
        self.interval_s = interval_s
        self._failures = 0
        self._refusals = 0  # of the batch being added
        # One sync or forget at a time: a batch is never taken twice, nor a deleted version's sums read back.
        self._lock = asyncio.Lock()

    async def sync(self) -> bool:
        """Add this front's new counts, then read the sums; False when the store could not be reached."""
        async with self._lock:
            return await self._sync()

    async def _sync(self) -> bool:
        batch = self.stats.take_pending()
        try:
            if batch.counts:
                await self.store.add_stats(batch.counts, batch.id)
        except StateUnavailable as exc:
            self.stats.added(succeeded=False)
            self._failed(exc)
            return False
        except StateError as exc:
            self._refused(exc, len(batch.counts))
            return False
        self._refusals = 0
        self.stats.added(succeeded=True)
        try:
            self.stats.stored(await self.store.load_stats())
        except StateError as exc:
            self._failed(exc)
            return False
        self._failures = 0
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            # Shielded: the shutdown cancels this task, and a batch cut off between taken and added would be lost.
            await asyncio.shield(self.sync())

    async def forget(self, program: str, versions: list[int] | None) -> None:
        """A deleted version's (or program's) figures go here too. The store deleted its sums with it, and drops any
        counts added for it afterwards; this waits for a sync in flight, so none is read back."""
        async with self._lock:
            self.stats.forget(program, versions)

    def _failed(self, exc: StateError) -> None:
        self._failures += 1
        if self._failures == 1 or self._failures % 100 == 0:
            log.warning("stats_sync_failed", store=self.store.description, error=str(exc)[:300], failures=self._failures)

    def _refused(self, exc: StateError, counts: int) -> None:
        self._refusals += 1
        if self._refusals < REFUSED_TRIES:
            self.stats.added(succeeded=False)
            self._failed(exc)
            return
        self._refusals = 0
        self.stats.dropped()
        log.error("stats_batch_dropped", store=self.store.description, error=str(exc)[:300], counts=counts,
                  tries=REFUSED_TRIES, hint="the store refused these program statistics; later ones are added as usual")
