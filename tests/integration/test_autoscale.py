"""The controller on a real pool: grows under a load step, shrinks after it, recycles without losing a call."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.controller import Controller, RecycleConfig
from dspy_pool.pool.dispatcher import Job
from dspy_pool.pool.metrics import PoolMetrics
from dspy_pool.pool.scaler import ScalerConfig
from dspy_pool.pool.supervisor import PoolSettings, WorkerPool
from dspy_pool.v1 import dspy_pool_pb2 as pb

from .harness import eventually

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

CONCURRENCY = 4
SPEC = pb.ProgramSpec(name="sleepy", signature="seconds -> slept", module="sleepy")
SPEC_BYTES = SPEC.SerializeToString()
KEY = "sleepy@1"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    settings = PoolSettings(workers=1, min_ready=1, worker_concurrency=CONCURRENCY, max_queue=1000,
                            boot_timeout_s=30.0, ping_interval_s=0.5, stop_timeout_s=3.0)
    config = wire.ZygoteConfig(lm="dummy", worker_concurrency=CONCURRENCY, program_modules=["tests.fixtures.chaos_kinds"])
    worker_pool = WorkerPool(settings, config)
    try:
        await asyncio.wait_for(worker_pool.start(), 60)
        yield worker_pool
    finally:
        await worker_pool.stop()


async def call(pool: WorkerPool, metrics: PoolMetrics, seconds: float) -> None:
    """One sleepy call through the dispatcher, fed to the metrics as the dispatcher wiring would."""
    request = wire.WorkRequest(program_key=KEY)
    request.inputs.update({"seconds": seconds})
    job = Job(KEY, SPEC_BYTES, request, asyncio.get_running_loop().time() + 20.0)
    try:
        await pool.dispatcher.run(job)
    except BaseException as error:
        metrics.job_finished(job, time.monotonic(), error)
        raise
    finally:
        if job.started_at:
            metrics.record_queue_wait(job.started_at, job.started_at - job.enqueued_at)
    metrics.job_finished(job, time.monotonic())


async def drive(pool: WorkerPool, metrics: PoolMetrics, clients: int, seconds: float, *, duration_s: float = 0.0,
                calls_each: int = 0) -> list[BaseException | None]:
    """`clients` loops of calls, for `duration_s` or `calls_each` calls each; returns one entry per call."""
    results: list[BaseException | None] = []
    stop_at = time.monotonic() + duration_s

    async def client() -> None:
        done = 0
        while (calls_each and done < calls_each) or (duration_s and time.monotonic() < stop_at):
            try:
                await call(pool, metrics, seconds)
                results.append(None)
            except Exception as exc:  # every call must succeed; collected so the assert shows them
                results.append(exc)
            done += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


def ready(pool: WorkerPool) -> list:
    return [h for h in pool.handles() if h.state.value == "ready"]


@contextlib.asynccontextmanager
async def running(controller: Controller):
    controller.start()
    try:
        yield controller
    finally:
        await controller.stop()


@contextlib.asynccontextmanager
async def sampling(pool: WorkerPool, interval_s: float = 0.02):
    """Record the number of ready workers while the block runs."""
    samples: list[int] = []

    async def sample() -> None:
        while True:
            samples.append(len(ready(pool)))
            await asyncio.sleep(interval_s)

    task = asyncio.get_running_loop().create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_load_step_grows_the_pool_then_it_shrinks(pool):
    """A load step grows the pool to the bound; after it the pool shrinks to min, and every call succeeds."""
    await eventually(lambda: len(ready(pool)) == 1 and not pool.dispatcher.in_flight, timeout_s=10)
    config = ScalerConfig(min_workers=1, max_workers=4, worker_concurrency=CONCURRENCY, target_queue_wait_s=0.05,
                          upscale_cooldown_s=0.3, downscale_window_s=0.6, downscale_utilisation=0.3,
                          flap_window_s=1.0, flap_penalty_s=0.1, max_flap_penalty_s=0.3)
    metrics = PoolMetrics(short_window_s=1.0, bucket_s=0.25, target_queue_wait_s=0.05)
    controller = Controller(pool, metrics, config, interval_s=0.1)
    failed_before = pool.dispatcher.failed
    with capture_logs() as logs:
        async with running(controller), sampling(pool) as samples:
            results = await drive(pool, metrics, clients=12, seconds=0.2, duration_s=2.0)
            peak = max(samples)
            await eventually(lambda: len(ready(pool)) == 1 and pool.target_workers == 1, timeout_s=15)
    assert results and all(r is None for r in results), [r for r in results if r is not None][:3]
    assert pool.dispatcher.failed == failed_before
    assert peak >= 3, samples
    scaled = [e for e in logs if e["event"] == "pool_scaled"]
    ups = [e for e in scaled if e["to_workers"] > e["from_workers"]]
    downs = [e for e in scaled if e["to_workers"] < e["from_workers"]]
    assert ups and ups[0]["reason"] in ("queue_wait", "load_per_worker", "emergency", "cold_start", "max_bound")
    # Each idle step sheds at most half the workers beyond min_workers (rounded up).
    assert downs and all(e["reason"] == "idle" for e in downs)
    assert all(0 < e["from_workers"] - e["to_workers"] <= math.ceil((e["from_workers"] - 1) / 2) for e in downs), downs
    assert controller.scale_ups == len(ups) and controller.scale_downs == len(downs)


async def test_queueing_wakes_the_controller_before_its_next_tick(pool):
    """Calls that start to queue make the controller tick at once, not at its (here 30 s) interval."""
    await eventually(lambda: len(ready(pool)) == 1 and not pool.dispatcher.in_flight and pool.target_workers == 1,
                     timeout_s=15)
    config = ScalerConfig(min_workers=1, max_workers=4, worker_concurrency=CONCURRENCY, downscale_window_s=60.0)
    metrics = PoolMetrics(target_queue_wait_s=0.05)
    controller = Controller(pool, metrics, config, interval_s=30.0)
    pool.dispatcher.on_backlog = controller.wake
    try:
        async with running(controller):
            await eventually(lambda: controller.last_snapshot is not None, timeout_s=5)  # the first tick, before load
            load = asyncio.ensure_future(drive(pool, metrics, clients=12, seconds=0.5, calls_each=1))
            # Well inside the 30 s interval: only the wake can have made it tick.
            await eventually(lambda: pool.target_workers >= 3, timeout_s=5)
            results = await load
    finally:
        pool.dispatcher.on_backlog = None
        pool.resize(1)
    assert all(r is None for r in results), results
    assert controller.scale_ups == 1


async def test_recycling_by_request_count_loses_no_call(pool):
    """Workers past max_requests are replaced one at a time, capacity never dips, no call fails."""
    metrics = PoolMetrics()
    controller = Controller(pool, metrics, ScalerConfig(min_workers=1, max_workers=4, worker_concurrency=CONCURRENCY),
                            interval_s=0.05, fixed_size=2, recycle=RecycleConfig(max_requests=8, max_requests_jitter=2))
    failed_before = pool.dispatcher.failed
    with capture_logs() as logs:
        async with running(controller):
            await eventually(lambda: len(ready(pool)) == 2, timeout_s=15)
            original = {h.worker_id for h in ready(pool)}
            async with sampling(pool) as samples:
                results = await drive(pool, metrics, clients=6, seconds=0.02, calls_each=12)
                await eventually(lambda: controller.recycled >= 2 and not any(h.state.value == "draining" for h in pool.handles()),
                                 timeout_s=15)
    assert len(results) == 72 and all(r is None for r in results), [r for r in results if r is not None][:3]
    assert pool.dispatcher.failed == failed_before
    assert min(samples) >= 2, samples  # the replacement is ready before the old worker stops taking calls
    recycled = [e for e in logs if e["event"] == "worker_recycled"]
    assert len(recycled) == controller.recycled == controller.recycled_by_reason["max_requests"]
    assert all(e["reason"] == "max_requests" and e["served"] >= 8 for e in recycled)
    assert {e["worker_id"] for e in recycled} & original
    stopped = [e for e in logs if e["event"] == "worker_stopped" and e["worker_id"] in {r["worker_id"] for r in recycled}]
    assert stopped and all(e["failed_in_flight"] == 0 for e in stopped)
    assert len(ready(pool)) == 2 and pool.target_workers == 2
