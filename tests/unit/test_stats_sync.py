"""server/stats_sync.py: a batch the store cannot take now is kept and sent again; one it refuses for good is given
up after a few tries, so it never holds back the counts after it."""

from __future__ import annotations

import math

import pytest

from dspy_pool.optimize.stats import ProgramStats
from dspy_pool.server.stats_sync import REFUSED_TRIES, StatsSync
from dspy_pool.state import StateError, StateUnavailable, StatsCount
from dspy_pool.state.memory import MemoryStore


class _FailingStore(MemoryStore):
    """A memory store whose add_stats raises the given errors first, then adds as usual."""

    def __init__(self, failures: list[Exception]) -> None:
        super().__init__()
        self.failures = failures

    async def add_stats(self, counts: list[StatsCount], batch_id: str) -> None:
        if self.failures:
            raise self.failures.pop(0)
        await super().add_stats(counts, batch_id)


@pytest.fixture
async def store():
    store = _FailingStore([])
    await store.open()
    yield store
    await store.close()


async def test_an_unreachable_store_keeps_the_batch_until_it_is_back(store):
    stats = ProgramStats()
    sync = StatsSync(stats, store)
    stats.record("qa", 1, "base", 5.0, False)
    store.failures = [StateUnavailable("redis down")] * (REFUSED_TRIES + 2)
    for _ in range(REFUSED_TRIES + 2):
        assert not await sync.sync()
    assert await sync.sync()
    assert stats.take_pending().counts == []  # added: nothing left to send


async def test_a_refused_batch_is_given_up_after_a_few_tries_and_later_counts_are_added(store):
    stats = ProgramStats()
    sync = StatsSync(stats, store)
    stats.record("qa", 1, "base", 5.0, False)
    store.failures = [StateError("NOT NULL constraint failed")] * REFUSED_TRIES
    for _ in range(REFUSED_TRIES):
        assert not await sync.sync()
    stats.record("qa", 1, "base", 5.0, True)
    batch = stats.take_pending()
    assert batch.counts == [StatsCount("qa", 1, "base", calls=1, errors=1)]  # the refused one is gone, the new one goes


def test_a_score_that_is_not_finite_is_not_counted():
    """The edge refuses them; were one to reach the statistics, a NaN sum would poison every later read."""
    stats = ProgramStats()
    for score in (math.nan, math.inf, -math.inf, 0.5):
        stats.record_feedback("qa", 1, score, example_added=False)
    assert stats.feedback("qa", 1) == (1, 0.5)
