"""PoolMetrics: per-call recording and per-tick snapshots, on fake clocks and a fake pool."""

from __future__ import annotations

import math
import os
import random
import time
from types import SimpleNamespace

import pytest

from dspy_pool import errors
from dspy_pool.pool.controller import RecycleConfig, due_for_recycle
from dspy_pool.pool.metrics import PoolMetrics, health_score, to_scaler_metrics

pytestmark = pytest.mark.timeout(10)


class FakeHandle(SimpleNamespace):
    def uptime_s(self, now: float) -> float:
        return now - self.started_at


def handle(worker_id: int, state: str = "ready", in_flight: int = 0, rss: int = 0, served: int = 0,
           failed: int = 0, started_at: float = 0.0) -> FakeHandle:
    return FakeHandle(worker_id=worker_id, pid=1000 + worker_id, state=state, in_flight=dict.fromkeys(range(in_flight)),
                      rss_bytes=rss, served=served, failed=failed, started_at=started_at)


class FakeDispatcher(SimpleNamespace):
    def oldest_queued(self):
        return self.oldest


def pool(handles, queue_depth: int = 0, oldest=None, concurrency: int = 4, target: int | None = None, **counters):
    dispatcher = FakeDispatcher(worker_concurrency=concurrency, queue_depth=queue_depth, oldest=oldest,
                                completed=counters.get("completed", 0), failed=counters.get("failed", 0),
                                rejected=counters.get("rejected", 0), expired_in_queue=0)
    return SimpleNamespace(dispatcher=dispatcher, handles=lambda: list(handles),
                           target_workers=len(handles) if target is None else target, crash_looping=False)


def test_empty_pool_snapshot_is_all_zero_and_unhealthy():
    """No worker and nothing recorded: zeros everywhere, health 0."""
    snap = PoolMetrics().snapshot(pool([]), now=100.0)
    assert snap.workers_ready == 0 and snap.queue_depth == 0 and snap.throughput_per_s == 0.0
    assert snap.queue_wait_p95_s == 0.0 and snap.error_rate == 0.0 and snap.health == 0.0


def test_workers_counted_by_state_and_utilisation_uses_ready_ones():
    """Draining workers' calls count as in flight but not toward ready utilisation."""
    handles = [handle(1, in_flight=2), handle(2, in_flight=4), handle(3, "starting"), handle(4, "draining", in_flight=3)]
    snap = PoolMetrics().snapshot(pool(handles, concurrency=4), now=1.0)
    assert (snap.workers_ready, snap.workers_starting, snap.workers_draining) == (2, 1, 1)
    assert snap.in_flight == 9 and snap.in_flight_ready == 6
    assert snap.utilisation == pytest.approx(6 / 8)


def test_warming_workers_count_as_starting_capacity_not_ready():
    """A worker warming up is capacity on its way: the scaler sees it as starting, not as taking calls."""
    handles = [handle(1, in_flight=2), handle(2, "warming", in_flight=1), handle(3, "starting")]
    snap = PoolMetrics().snapshot(pool(handles, concurrency=4), now=1.0)
    assert (snap.workers_ready, snap.workers_starting, snap.workers_warming) == (1, 2, 1)
    assert snap.in_flight_ready == 2 and snap.utilisation == pytest.approx(2 / 4)
    assert to_scaler_metrics(snap).starting_workers == 2


def test_worker_cpu_is_sampled_from_the_live_processes():
    """With sampling on, a busy process reads as CPU percent (here this test's own process)."""
    metrics = PoolMetrics(cpu_interval_s=0.5)
    busy = [handle(1)]
    busy[0].pid = os.getpid()
    assert metrics.snapshot(pool(busy), now=1.0).cpu_percent == 0.0  # the first reading primes the counter
    spin_until = time.process_time() + 0.2
    while time.process_time() < spin_until:
        pass
    assert metrics.snapshot(pool(busy), now=1.2).cpu_percent == 0.0  # within the interval: not read again
    assert metrics.snapshot(pool(busy), now=2.0).cpu_percent > 10.0


def test_queue_wait_percentiles_over_short_window():
    """p50/p95/p99 come from recorded waits and age out after the short window."""
    metrics = PoolMetrics(short_window_s=2.0, bucket_s=0.5)
    for i in range(100):
        metrics.record_queue_wait(10.0, (i + 1) / 1000)
    snap = metrics.snapshot(pool([handle(1)]), now=10.1)
    assert snap.queue_wait_p50_s == pytest.approx(0.050)
    assert snap.queue_wait_p95_s == pytest.approx(0.095)
    assert snap.queue_wait_p99_s == pytest.approx(0.099)
    assert metrics.snapshot(pool([handle(1)]), now=13.0).queue_wait_p95_s == 0.0


def test_throughput_and_error_rate_over_window():
    """Finished calls per second and the failed share, over the long window."""
    metrics = PoolMetrics(window_s=10.0, bucket_s=1.0)
    for second in range(10):
        for n in range(5):
            metrics.record_outcome(100.0 + second + 0.1 * n, ok=n != 0)
    snap = metrics.snapshot(pool([handle(1)]), now=109.99)
    assert snap.throughput_per_s == pytest.approx(50 / 10, rel=0.05)
    assert snap.error_rate == pytest.approx(0.2)


def test_job_finished_records_execution_and_ignores_caller_faults():
    """Execution time comes from the job's start; invalid input is finished, not failed."""
    metrics = PoolMetrics()
    metrics.job_finished(SimpleNamespace(started_at=10.0), 10.5)
    metrics.job_finished(SimpleNamespace(started_at=10.0), 10.2, errors.InvalidArgument("bad"))
    metrics.job_finished(SimpleNamespace(started_at=0.0), 10.3, errors.DeadlineExceeded("late"))
    assert metrics.execution(10.6).count == 2  # the never-started job has no execution time
    assert metrics.execution(10.6).max == pytest.approx(0.5)
    assert metrics.error_rate(10.6) == pytest.approx(1 / 3)


def test_recorded_calls_are_seen_by_every_read_at_once():
    """Calls are recorded cheaply and folded into the windows when read: any read sees all of them, in order."""
    metrics = PoolMetrics(window_s=10.0, short_window_s=2.0, bucket_s=0.5)
    for n in range(10):
        metrics.record_queue_wait(20.0 + n / 10, 0.001 * (n + 1))
        metrics.record_done(20.05 + n / 10, 0.010 * (n + 1))
    assert metrics.queue_wait(21.0).count == 10
    assert metrics.queue_wait(21.0).max == pytest.approx(0.010)
    assert metrics.execution(21.0).max == pytest.approx(0.100)
    assert metrics.wait_histogram().count == 10
    metrics.record_done(21.0, 0.5)
    assert metrics.throughput(21.0) > 0 and metrics.execution(21.0).count == 11
    assert metrics.error_rate(21.0) == 0.0
    metrics.record_queue_wait(21.0, -0.5)  # a clock step backwards is a wait of 0, as before
    assert metrics.wait_histogram().sum_s == pytest.approx(sum(0.001 * (n + 1) for n in range(10)))


def test_pending_records_stay_bounded_without_reads():
    """Nothing reads for a long time (no controller): the pending records are folded as they pile up, not kept."""
    from dspy_pool.pool import metrics as metrics_module

    metrics = PoolMetrics(window_s=10.0, bucket_s=1.0)
    for n in range(3 * metrics_module._PENDING_MAX + 5):
        metrics.record_queue_wait(50.0, 0.0)
        metrics.record_done(50.0, 0.01)
    pending = (metrics._waits, metrics._executions, metrics._finished_at)
    assert all(len(records) < metrics_module._PENDING_MAX for records in pending)
    assert metrics.execution(50.5).count == 3 * metrics_module._PENDING_MAX + 5


@pytest.mark.parametrize("kind", list(errors.ErrorKind))
def test_job_outcome_follows_the_error_tables_caller_fault(kind):
    """A failure counts against the error rate exactly when the error table says it is not the caller's fault."""
    metrics = PoolMetrics()
    metrics.job_finished(SimpleNamespace(started_at=10.0), 10.1, errors.PoolError("x", kind=kind))
    assert metrics.error_rate(10.2) == (0.0 if errors.MEANINGS[kind].caller_fault else 1.0)


def test_job_that_expired_in_the_queue_records_its_wait():
    """A job that never reached a worker waited its whole life: that is recorded as queue wait."""
    metrics = PoolMetrics()
    metrics.job_finished(SimpleNamespace(started_at=0.0, enqueued_at=9.0), 10.0, errors.DeadlineExceeded("late"))
    assert metrics.queue_wait(10.0).max == pytest.approx(1.0)
    assert metrics.execution(10.0).count == 0


def test_oldest_queued_age_and_deadline_fraction():
    """The oldest queued call's age and the share of its deadline used, on the loop's clock."""
    oldest = SimpleNamespace(enqueued_at=10.0, deadline=1010.0)  # deadline on a loop clock offset by 1000
    snap = PoolMetrics().snapshot(pool([handle(1)], queue_depth=3, oldest=oldest), now=13.0, loop_now=1003.0)
    assert snap.oldest_queued_age_s == pytest.approx(3.0)
    assert snap.oldest_queued_deadline_fraction == pytest.approx(0.3)
    expired = PoolMetrics().snapshot(pool([handle(1)], queue_depth=1, oldest=oldest), now=21.0, loop_now=1011.0)
    assert expired.oldest_queued_deadline_fraction == 1.0


def test_rss_per_worker_averages_measured_ready_workers():
    """Unmeasured (0) and draining workers do not dilute the per-worker RSS."""
    handles = [handle(1, rss=100), handle(2, rss=300), handle(3, rss=0), handle(4, "draining", rss=900)]
    snap = PoolMetrics().snapshot(pool(handles), now=1.0)
    assert snap.rss_total_bytes == 400 and snap.rss_per_worker_bytes == 200.0


def test_wait_histogram_is_cumulative_with_inf():
    """The wait histogram puts each wait in the first bucket that holds it, cumulative for Prometheus."""
    metrics = PoolMetrics(wait_buckets_s=(0.1, 1.0))
    for wait in (0.05, 0.1, 0.5, 3.0):
        metrics.record_queue_wait(1.0, wait)
    histogram = metrics.wait_histogram()
    assert histogram.counts == (2, 1, 1) and histogram.count == 4
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.sum_s == pytest.approx(3.65)


def test_scaler_metrics_maps_the_snapshot():
    """ScalerMetrics gets ready/starting counts, ready in-flight load, p95 wait and RSS."""
    metrics = PoolMetrics()
    metrics.record_queue_wait(5.0, 0.4)
    handles = [handle(1, in_flight=4, rss=100), handle(2, "starting"), handle(3, "draining", in_flight=2)]
    scaler = metrics.scaler_metrics(pool(handles, queue_depth=7, concurrency=4), now=5.1)
    assert (scaler.current_workers, scaler.starting_workers, scaler.queue_depth, scaler.in_flight) == (1, 1, 7, 4)
    assert scaler.queue_wait_p95_s == pytest.approx(0.4)
    assert scaler.utilisation == pytest.approx(1.0)
    assert scaler.rss_per_worker_bytes == 100 and scaler.total_rss_bytes == 100


def test_cold_pool_reports_full_utilisation_only_to_status():
    """With calls queued and no ready worker, status shows 1.0; the scaler reads 0 (it has its cold path)."""
    snap = PoolMetrics().snapshot(pool([handle(1, "starting")], queue_depth=2), now=1.0)
    assert snap.utilisation == 1.0
    assert to_scaler_metrics(snap).utilisation == 0.0


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(ready=2, target=2, error_rate=0.0, queue_wait_p95_s=0.0, deadline_fraction=0.0), 1.0),
        (dict(ready=1, target=2, error_rate=0.0, queue_wait_p95_s=0.0, deadline_fraction=0.0), 0.5),
        (dict(ready=2, target=2, error_rate=0.25, queue_wait_p95_s=0.0, deadline_fraction=0.0), 0.75),
        (dict(ready=2, target=2, error_rate=0.0, queue_wait_p95_s=0.4, deadline_fraction=0.0), 0.25),
        (dict(ready=2, target=2, error_rate=0.0, queue_wait_p95_s=0.0, deadline_fraction=0.9), 0.1),
        (dict(ready=0, target=2, error_rate=0.0, queue_wait_p95_s=0.0, deadline_fraction=0.0), 0.0),
        (dict(ready=2, target=2, error_rate=math.nan, queue_wait_p95_s=0.0, deadline_fraction=0.0), 1.0),
    ],
)
def test_health_score_factors(kwargs, expected):
    """Health is availability x success x wait x deadline, within 0..1."""
    assert health_score(target_queue_wait_s=0.1, **kwargs) == pytest.approx(expected)


def test_crash_looping_pool_has_zero_health():
    """A crash-looping pool is unhealthy whatever its other numbers say."""
    fake = pool([handle(1)])
    fake.crash_looping = True
    assert PoolMetrics().snapshot(fake, now=1.0).health == 0.0


# -- recycling choice (pure part of the controller) ------------------------------------


def test_recycle_by_requests_uses_a_jittered_limit_per_worker():
    """Each worker gets max_requests + randint(0, jitter), assigned once and dropped when it is gone."""
    config = RecycleConfig(max_requests=10, max_requests_jitter=5)
    limits: dict[int, int] = {}
    rng = random.Random(7)
    handles = [handle(1, served=9), handle(2, served=3)]
    assert due_for_recycle(handles, config, limits, now=1.0, rng=rng) is None
    assert all(10 <= limit <= 15 for limit in limits.values())
    handles[0].served = limits[1]
    due, reason = due_for_recycle(handles, config, limits, now=1.0, rng=rng)
    assert due.worker_id == 1 and reason == "max_requests"
    due_for_recycle(handles[1:], config, limits, now=1.0, rng=rng)
    assert set(limits) == {2}


def test_recycle_by_rss_and_age_skips_non_ready_workers():
    """RSS above the limit or age past max_age make a ready worker due; draining ones never are."""
    config = RecycleConfig(max_rss_bytes=500, max_age_s=60.0)
    assert due_for_recycle([handle(1, "draining", rss=900)], config, {}, now=1.0) is None
    assert due_for_recycle([handle(1, rss=900)], config, {}, now=1.0)[1] == "max_rss"
    assert due_for_recycle([handle(1, started_at=0.0)], config, {}, now=61.0)[1] == "max_age"
    assert due_for_recycle([handle(1)], RecycleConfig(), {}, now=1e9) is None


def test_recycle_config_rejects_negative_values():
    """A negative limit is a configuration error, not a disabled rule."""
    with pytest.raises(ValueError):
        RecycleConfig(max_requests=-1)
