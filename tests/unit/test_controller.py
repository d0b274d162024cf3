"""Controller ticks on a fake pool and a fake clock: decisions applied, fixed size, recycling order."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from dspy_pool.pool.controller import Controller, RecycleConfig
from dspy_pool.pool.metrics import PoolMetrics
from dspy_pool.pool.scaler import ScalerConfig

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(10)]


class FakeHandle(SimpleNamespace):
    def drain(self) -> None:
        self.state = "draining"

    def uptime_s(self, now: float) -> float:
        return now


class FakeDispatcher(SimpleNamespace):
    def oldest_queued(self):
        return None


class FakePool:
    def __init__(self, workers: int, in_flight: int = 0, queue_depth: int = 0) -> None:
        self.handles_ = [FakeHandle(worker_id=i + 1, pid=100 + i, state="ready", in_flight=dict.fromkeys(range(in_flight)),
                                    rss_bytes=0, served=0, failed=0) for i in range(workers)]
        self.dispatcher = FakeDispatcher(worker_concurrency=4, queue_depth=queue_depth)
        self.target_workers = workers
        self.resizes: list[int] = []
        self.spawn_fails = False
        self.stopping = self.crash_looping = False

    def handles(self):
        return [h for h in self.handles_ if h.state != "stopped"]

    def resize(self, target: int) -> None:
        self.resizes.append(target)
        self.target_workers = target

    async def spawn(self, delay_s=0.0, *, extra=False):
        if self.spawn_fails:
            return None
        handle = FakeHandle(worker_id=len(self.handles_) + 1, pid=200 + len(self.handles_), state="ready", in_flight={},
                            rss_bytes=0, served=0, failed=0)
        self.handles_.append(handle)
        return handle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def tick_and_recycle(controller: Controller) -> None:
    """One tick, then the recycle it started (recycles run beside the ticks)."""
    await controller.tick()
    await controller.recycle_settled()


async def test_scaler_keeps_running_while_a_replacement_boots():
    """A slow replacement (say, warm-up calls) does not hold up scaling, and is not counted as capacity."""
    pool = FakePool(workers=2, in_flight=4, queue_depth=4)
    pool.handles_[0].served = 10
    booting = asyncio.Event()
    fast_spawn = pool.spawn

    async def slow_spawn(delay_s=0.0, *, extra=False):
        replacement = await fast_spawn(delay_s, extra=extra)
        replacement.state = "warming"
        await booting.wait()
        replacement.state = "ready"
        return replacement

    pool.spawn = slow_spawn
    config = ScalerConfig(min_workers=1, max_workers=8, worker_concurrency=4, upscale_cooldown_s=0.0)
    controller = Controller(pool, PoolMetrics(), config, recycle=RecycleConfig(max_requests=10), clock=Clock())
    await controller.tick()  # 12 calls on 2 workers of 4: grow to 5; worker 1 is due, its replacement boots
    await asyncio.sleep(0)
    assert controller.recycling and pool.resizes == [5]
    pool.dispatcher.queue_depth = 20  # 28 calls: 10 workers' worth at 0.7 x 4 (the fake pool never spawns them)
    await controller.tick()
    # The booting replacement is not counted: from 2 ready workers up by the step cap of 4 (3 + 4 if counted).
    assert pool.resizes == [5, 6] and controller.recycling
    booting.set()
    await controller.recycle_settled()
    assert controller.recycled == 1 and pool.handles_[0].state == "draining"


async def test_overload_tick_resizes_and_logs_pool_scaled():
    """A saturated pool is resized up on the first tick, with from, to and reason in the log."""
    pool = FakePool(workers=1, in_flight=4, queue_depth=8)
    controller = Controller(pool, PoolMetrics(), ScalerConfig(min_workers=1, max_workers=4, worker_concurrency=4), clock=Clock())
    with capture_logs() as logs:
        await controller.tick()
    assert pool.resizes == [4]
    event = next(e for e in logs if e["event"] == "pool_scaled")
    assert (event["from_workers"], event["to_workers"]) == (1, 4) and event["reason"]
    assert controller.scale_events == {"up": 1, "down": 0}


async def test_fixed_size_never_follows_the_load():
    """With fixed_size the controller sets the size once and then ignores the load."""
    pool = FakePool(workers=1, in_flight=4, queue_depth=50)
    clock = Clock()
    controller = Controller(pool, PoolMetrics(), ScalerConfig(max_workers=8, worker_concurrency=4), fixed_size=2, clock=clock)
    for _ in range(5):
        await controller.tick()
        clock.now += 10
    assert pool.resizes == [2]


async def test_observers_get_every_snapshot():
    """Each tick publishes its snapshot to the observers and as last_snapshot."""
    pool = FakePool(workers=2)
    seen = []
    controller = Controller(pool, PoolMetrics(), ScalerConfig(min_workers=2, max_workers=2), observers=(seen.append,), clock=Clock())
    await controller.tick()
    assert seen == [controller.last_snapshot] and seen[0].workers_ready == 2


async def test_recycle_spawns_first_then_drains_one_at_a_time():
    """A due worker is drained only after its replacement is ready; the next waits until it has stopped."""
    pool = FakePool(workers=2)
    for handle in pool.handles_:
        handle.served = 10
    controller = Controller(pool, PoolMetrics(), ScalerConfig(min_workers=2, max_workers=2), fixed_size=2,
                            recycle=RecycleConfig(max_requests=10), clock=Clock(), rng=random.Random(1))
    await tick_and_recycle(controller)
    assert [h.state for h in pool.handles_] == ["draining", "ready", "ready"]
    await tick_and_recycle(controller)
    assert controller.recycled == 1  # worker 2 waits while worker 1 is still draining
    pool.handles_[0].state = "stopped"
    await tick_and_recycle(controller)
    assert controller.recycled == 2 and pool.handles_[1].state == "draining"
    assert sum(h.state == "ready" for h in pool.handles_) == 2


async def test_failed_replacement_keeps_the_old_worker_and_backs_off():
    """If the replacement cannot boot the old worker keeps serving, and recycling waits retry_after_s."""
    pool = FakePool(workers=1)
    pool.handles_[0].served = 5
    pool.spawn_fails = True
    clock = Clock()
    controller = Controller(pool, PoolMetrics(), ScalerConfig(min_workers=1, max_workers=1), fixed_size=1,
                            recycle=RecycleConfig(max_requests=5, retry_after_s=5.0), clock=clock)
    with capture_logs() as logs:
        await tick_and_recycle(controller)
        await tick_and_recycle(controller)
    assert pool.handles_[0].state == "ready" and controller.recycle_failures == 1
    assert [e["event"] for e in logs].count("worker_recycle_failed") == 1
    pool.spawn_fails = False
    clock.now += 5.0
    await tick_and_recycle(controller)
    assert controller.recycled == 1


async def test_start_and_stop_run_the_loop():
    """start() ticks in the background; stop() ends it promptly and is idempotent."""
    pool = FakePool(workers=1)
    ticked = []
    controller = Controller(pool, PoolMetrics(), ScalerConfig(min_workers=1, max_workers=1), interval_s=0.01, observers=(ticked.append,))
    task = controller.start()
    while len(ticked) < 3:
        await asyncio.sleep(0.01)
    await controller.stop()
    await controller.stop()
    assert task.done()
