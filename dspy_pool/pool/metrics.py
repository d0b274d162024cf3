"""The pool's metrics collector: a list append per call, folded into windows when read.

    dispatcher hot path (per call: appends to pending lists, nothing else)
        _start:  record_queue_wait(now, s)          ──> pending waits
        run end: record_done(now, s) / job_finished(job, now, error) ──> pending executions, outcomes
    any read (controller tick, status, Prometheus) folds the pending lists first:
        pending waits    ──> LatencyWindow + wait histogram
        pending executions and outcomes ──> execution LatencyWindow, finished and failed RateWindows
    controller tick (every interval_s, on the event loop)
        snapshot(pool, now)   ──> PoolSnapshot (immutable)  ──> GetPoolStatus, WatchPoolStatus,
                                                                Prometheus exporter
        to_scaler_metrics(snapshot) ──> ScalerMetrics ──> scaler.decide

Recording into a window costs a few microseconds per value; appending a tuple costs a
tenth of that, and folding a tick's worth in one pass (windows.record_many) a fraction
of it. The pending lists are folded at every read and whenever one reaches
_PENDING_MAX, so memory stays bounded even if nothing reads for a while. Reads see
every call recorded before them: folding preserves order and times.

Only events are recorded per call; everything that can be read off the pool
(queue depth, in flight, workers by state, RSS from the workers' pongs, the
oldest queued call) is sampled when a snapshot is taken, so a busy front pays
for it once per tick, not once per call.

Nothing here reads a clock: every method takes `now` (time.monotonic seconds).
Job deadlines are on the event loop's clock, so `snapshot` takes the loop's
time separately (`loop_now`) and measures the oldest call's deadline against
that; with the default loop the two clocks are the same.

Thread safety: record_*, reads and snapshot run on the event loop. `PoolSnapshot`
is frozen and `wait_histogram()` returns a copy, so a scrape thread may read
what the loop published without locks.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Iterable

from dspy_pool import errors
from dspy_pool.pool.scaler import ScalerMetrics
from dspy_pool.pool.windows import LatencySnapshot, LatencyWindow, RateWindow

__all__ = [
    "DEFAULT_WAIT_BUCKETS_S",
    "PoolMetrics",
    "PoolSnapshot",
    "WaitHistogram",
    "health_score",
    "to_scaler_metrics",
]

# Upper bounds (seconds) of the queue-wait histogram; +Inf is implicit.
DEFAULT_WAIT_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

# Pending records folded into the windows at once past this many (each list), whatever the reads.
_PENDING_MAX = 4096

# Worker states as strings, so this module does not depend on the handle's enum identity.
_READY, _STARTING, _WARMING, _DRAINING = "ready", "starting", "warming", "draining"


@dataclass(frozen=True, slots=True)
class WaitHistogram:
    """Cumulative queue-wait histogram since start, Prometheus-shaped."""

    bounds: tuple[float, ...]  # upper bounds, ascending; +Inf is implicit
    counts: tuple[int, ...]  # per bucket (not cumulative), len(bounds) + 1, the last one is +Inf
    sum_s: float
    count: int

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs including "+Inf", as Prometheus expects."""
        total = 0
        pairs = []
        for bound, count in zip(self.bounds, self.counts):
            total += count
            pairs.append((_format_bound(bound), total))
        pairs.append(("+Inf", total + self.counts[-1]))
        return pairs


def _format_bound(bound: float) -> str:
    return repr(float(bound))


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """The pool at one instant. Durations in seconds, rates per second, memory in bytes."""

    at: float  # monotonic time the snapshot was taken
    # workers
    workers_ready: int = 0
    workers_starting: int = 0  # warming ones included
    workers_warming: int = 0
    workers_draining: int = 0
    target_workers: int = 0
    worker_concurrency: int = 1
    # load
    queue_depth: int = 0
    in_flight: int = 0  # on every worker, draining ones included
    in_flight_ready: int = 0  # on ready workers: the load the scaler sizes for
    utilisation: float = 0.0  # in_flight_ready / (ready x concurrency); 1.0 when calls wait with no ready worker
    # queue wait over the short window (what the scaler reads)
    queue_wait_p50_s: float = 0.0
    queue_wait_p95_s: float = 0.0
    queue_wait_p99_s: float = 0.0
    queue_wait_max_s: float = 0.0
    oldest_queued_age_s: float = 0.0
    oldest_queued_deadline_fraction: float = 0.0  # 0..1 share of its deadline the oldest queued call used
    # execution over the long window
    execution_p50_s: float = 0.0
    execution_p95_s: float = 0.0
    execution_p99_s: float = 0.0
    throughput_per_s: float = 0.0  # finished calls (ok or not) per second
    error_rate: float = 0.0  # failed / finished over the long window; 0 when nothing finished
    # memory and CPU of ready workers (0: not measured yet)
    rss_total_bytes: int = 0
    rss_per_worker_bytes: float = 0.0
    cpu_percent: float = 0.0  # sum over live workers, 100 = one core; 0 unless sampled
    # cumulative counters (since the pool started)
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    expired_in_queue: int = 0
    # 0..1, 1 = healthy; see health_score()
    health: float = 1.0

    @property
    def workers_live(self) -> int:
        """Ready plus starting: the count the scaler reasons about."""
        return self.workers_ready + self.workers_starting


def health_score(
    *,
    ready: int,
    target: int,
    error_rate: float,
    queue_wait_p95_s: float,
    target_queue_wait_s: float,
    deadline_fraction: float,
    crash_looping: bool = False,
) -> float:
    """0..1: availability x success x wait x deadline, each factor in 0..1.

    - availability: ready / target workers (no ready worker: 0);
    - success: 1 - error rate;
    - wait: 1 while p95 queue wait meets its target, then target / p95;
    - deadline: 1 - the share of its deadline the oldest queued call has used.
    The product drops to 0 when any one is 0, which is what an operator should see:
    a pool with no worker or failing every call is not half healthy.
    """
    if crash_looping or ready <= 0:
        return 0.0
    availability = min(1.0, ready / target) if target > 0 else 1.0
    success = 1.0 - _clamp01(error_rate)
    wait = 1.0
    if queue_wait_p95_s > target_queue_wait_s > 0:
        wait = target_queue_wait_s / queue_wait_p95_s
    deadline = 1.0 - _clamp01(deadline_fraction)
    return _clamp01(availability * success * wait * deadline)


def _clamp01(value: float) -> float:
    if not value > 0:  # NaN too
        return 0.0
    return 1.0 if value > 1.0 else float(value)


class PoolMetrics:
    """Sliding windows fed per call, summarised per tick.

    `short_window_s` covers queue wait (the scaler wants a recent signal);
    `window_s` covers execution latency, throughput and error rate.
    """

    __slots__ = (
        "target_queue_wait_s", "_wait", "_execution", "_finished", "_errors",
        "_bounds", "_wait_counts", "_wait_sum", "_wait_count", "_cpu", "_cpu_interval_s",
        "_cpu_sampled_at", "_cpu_percent", "_waits", "_executions", "_finished_at", "_failed_at",
    )

    def __init__(
        self,
        *,
        window_s: float = 30.0,
        short_window_s: float = 5.0,
        bucket_s: float = 0.5,
        target_queue_wait_s: float = 0.1,
        wait_buckets_s: Iterable[float] = DEFAULT_WAIT_BUCKETS_S,
        cpu_interval_s: float = 0.0,
        samples_per_bucket: int = 256,
    ) -> None:
        self.target_queue_wait_s = target_queue_wait_s
        self._wait = LatencyWindow(short_window_s, bucket_s, samples_per_bucket, seed=1)
        self._execution = LatencyWindow(window_s, bucket_s, samples_per_bucket, seed=2)
        self._finished = RateWindow(window_s, bucket_s)
        self._errors = RateWindow(window_s, bucket_s)
        bounds = tuple(sorted(float(b) for b in wait_buckets_s))
        if not bounds or any(not math.isfinite(b) or b <= 0 for b in bounds):
            raise ValueError(f"wait_buckets_s must be positive finite numbers, got {bounds!r}")
        self._bounds = bounds
        self._wait_counts = [0] * (len(bounds) + 1)
        self._wait_sum = 0.0
        self._wait_count = 0
        # CPU sampling via psutil is off unless cpu_interval_s > 0 (it reads /proc per worker).
        self._cpu: dict[int, Any] = {}
        self._cpu_interval_s = cpu_interval_s
        self._cpu_sampled_at: float | None = None
        self._cpu_percent = 0.0
        # Recorded, not yet in the windows (see the module's docstring), in the order recorded:
        self._waits: list[tuple[float, float]] = []  # (now, queue wait s)
        self._executions: list[tuple[float, float]] = []  # (now, execution s) of calls that reached a worker
        self._finished_at: list[float] = []  # every call that finished, well or not
        self._failed_at: list[float] = []  # those of them that failed (not by the caller's fault)

    # -- hot path -------------------------------------------------------------
    def record_queue_wait(self, now: float, seconds: float) -> None:
        """A call left the queue (or started at once: 0 s) at `now` after waiting `seconds`."""
        waits = self._waits
        waits.append((now, seconds if seconds > 0 else 0.0))
        if len(waits) >= _PENDING_MAX:
            self._fold()

    def record_done(self, now: float, seconds: float) -> None:
        """A call that reached a worker finished well at `now` after running `seconds` (job_finished's usual case)."""
        executions = self._executions
        executions.append((now, seconds if seconds > 0 else 0.0))
        self._finished_at.append(now)
        if len(executions) >= _PENDING_MAX:
            self._fold()

    def record_execution(self, now: float, seconds: float) -> None:
        """A call that reached a worker finished at `now` after running `seconds` (its outcome: record_outcome)."""
        executions = self._executions
        executions.append((now, seconds if seconds > 0 else 0.0))
        if len(executions) >= _PENDING_MAX:
            self._fold()

    def record_outcome(self, now: float, ok: bool) -> None:
        """A call finished at `now`; `ok` False for a system failure (not the caller's fault)."""
        self._finished_at.append(now)
        if not ok:
            self._failed_at.append(now)
        if len(self._finished_at) >= _PENDING_MAX:
            self._fold()

    def job_finished(self, job: Any, now: float, error: BaseException | None = None) -> None:
        """Record a dispatcher Job's outcome and execution time, or its queue wait if it never started.

        The caller's faults (the error table's `caller_fault`: invalid argument,
        not found, cancelled, ...) count as finished, not failed: they say nothing about the pool.
        """
        started_at = getattr(job, "started_at", 0.0)
        if started_at:
            seconds = now - started_at
            self._executions.append((now, seconds if seconds > 0 else 0.0))
        else:
            # It never left the queue (expired there): its whole life was queue wait,
            # the very signal the scaler must not miss.
            enqueued_at = getattr(job, "enqueued_at", None)
            if enqueued_at is not None:
                self.record_queue_wait(now, now - enqueued_at)
        self.record_outcome(now, error is None or (isinstance(error, errors.PoolError) and error.meaning.caller_fault))

    def _fold(self) -> None:
        """Move the pending records into the windows and the histogram, in the order they were recorded."""
        waits = self._waits
        if waits:
            self._wait.record_many(waits)
            counts, bounds = self._wait_counts, self._bounds
            total = 0.0
            for _, seconds in waits:
                counts[bisect_left(bounds, seconds)] += 1
                total += seconds
            self._wait_sum += total
            self._wait_count += len(waits)
            waits.clear()
        for pending, window in ((self._executions, self._execution), (self._finished_at, self._finished),
                                (self._failed_at, self._errors)):
            if pending:
                window.record_many(pending)
                pending.clear()

    # -- reads ----------------------------------------------------------------
    def queue_wait(self, now: float) -> LatencySnapshot:
        self._fold()
        return self._wait.snapshot(now)

    def execution(self, now: float) -> LatencySnapshot:
        self._fold()
        return self._execution.snapshot(now)

    def throughput(self, now: float) -> float:
        self._fold()
        return self._finished.rate(now)

    def error_rate(self, now: float) -> float:
        self._fold()
        finished = self._finished.count(now)
        return self._errors.count(now) / finished if finished else 0.0

    def wait_histogram(self) -> WaitHistogram:
        """A copy of the cumulative queue-wait histogram (safe to hand to another thread)."""
        self._fold()
        return WaitHistogram(self._bounds, tuple(self._wait_counts), self._wait_sum, self._wait_count)

    def snapshot(self, pool: Any, now: float, loop_now: float | None = None) -> PoolSnapshot:
        """Sample `pool` (a WorkerPool, or anything with its handles()/dispatcher shape) at `now`.

        `loop_now` is the event loop's time, the clock job deadlines are on;
        it defaults to `now` (the same clock under the default loop).
        """
        if loop_now is None:
            loop_now = now
        self._fold()
        dispatcher = pool.dispatcher
        concurrency = max(1, int(getattr(dispatcher, "worker_concurrency", 1) or 1))
        ready = starting = warming = draining = 0
        in_flight = in_flight_ready = 0
        rss_total = 0
        rss_measured = 0
        live_pids: list[int] = []
        for handle in pool.handles():
            state = _state_name(handle)
            calls = len(handle.in_flight)
            in_flight += calls
            if state == _READY:
                ready += 1
                in_flight_ready += calls
                if handle.rss_bytes > 0:
                    rss_total += handle.rss_bytes
                    rss_measured += 1
            elif state in (_STARTING, _WARMING):  # capacity that is coming, not yet taking calls
                starting += 1
                warming += state == _WARMING
            elif state == _DRAINING:
                draining += 1
            else:
                continue
            if handle.pid:
                live_pids.append(handle.pid)
        queued = dispatcher.queue_depth
        if ready:
            utilisation = in_flight_ready / (ready * concurrency)
        else:
            utilisation = 1.0 if queued else 0.0
        oldest_age, deadline_fraction = _oldest(dispatcher, now, loop_now)
        wait = self._wait.snapshot(now)
        execution = self._execution.snapshot(now)
        error_rate = self.error_rate(now)
        target = int(getattr(pool, "target_workers", ready) or 0)
        return PoolSnapshot(
            at=now,
            workers_ready=ready,
            workers_starting=starting,
            workers_warming=warming,
            workers_draining=draining,
            target_workers=target,
            worker_concurrency=concurrency,
            queue_depth=queued,
            in_flight=in_flight,
            in_flight_ready=in_flight_ready,
            utilisation=utilisation,
            queue_wait_p50_s=wait.p50,
            queue_wait_p95_s=wait.p95,
            queue_wait_p99_s=wait.p99,
            queue_wait_max_s=wait.max,
            oldest_queued_age_s=oldest_age,
            oldest_queued_deadline_fraction=deadline_fraction,
            execution_p50_s=execution.p50,
            execution_p95_s=execution.p95,
            execution_p99_s=execution.p99,
            throughput_per_s=self._finished.rate(now),
            error_rate=error_rate,
            rss_total_bytes=rss_total,
            rss_per_worker_bytes=rss_total / rss_measured if rss_measured else 0.0,
            cpu_percent=self._sample_cpu(live_pids, now),
            completed=int(getattr(dispatcher, "completed", 0)),
            failed=int(getattr(dispatcher, "failed", 0)),
            rejected=int(getattr(dispatcher, "rejected", 0)),
            expired_in_queue=int(getattr(dispatcher, "expired_in_queue", 0)),
            health=health_score(
                ready=ready,
                target=target,
                error_rate=error_rate,
                queue_wait_p95_s=wait.p95,
                target_queue_wait_s=self.target_queue_wait_s,
                deadline_fraction=deadline_fraction,
                crash_looping=bool(getattr(pool, "crash_looping", False)),
            ),
        )

    def scaler_metrics(self, pool: Any, now: float, loop_now: float | None = None) -> ScalerMetrics:
        return to_scaler_metrics(self.snapshot(pool, now, loop_now))

    def _sample_cpu(self, pids: list[int], now: float) -> float:
        if self._cpu_interval_s <= 0:
            return 0.0
        if self._cpu_sampled_at is not None and now - self._cpu_sampled_at < self._cpu_interval_s:
            return self._cpu_percent
        import psutil  # only when asked for; the hot path never gets here

        self._cpu_sampled_at = now
        total = 0.0
        alive = set(pids)
        for pid in list(self._cpu):
            if pid not in alive:
                del self._cpu[pid]
        for pid in pids:
            process = self._cpu.get(pid)
            try:
                if process is None:
                    process = self._cpu[pid] = psutil.Process(pid)
                    process.cpu_percent(None)  # primes the counter; the first reading is 0
                    continue
                total += process.cpu_percent(None)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._cpu.pop(pid, None)
        self._cpu_percent = total
        return total


def _state_name(handle: Any) -> str:
    state = handle.state
    return getattr(state, "value", state)


def _oldest(dispatcher: Any, now: float, loop_now: float) -> tuple[float, float]:
    job = dispatcher.oldest_queued()
    if job is None:
        return 0.0, 0.0
    age = max(0.0, now - job.enqueued_at)
    remaining = job.deadline - loop_now
    if remaining <= 0:
        return age, 1.0
    budget = age + remaining
    return age, age / budget if budget > 0 else 1.0


def to_scaler_metrics(snapshot: PoolSnapshot) -> ScalerMetrics:
    """What the pure scaling policy reads, from one snapshot."""
    return ScalerMetrics(
        current_workers=snapshot.workers_ready,
        starting_workers=snapshot.workers_starting,
        queue_depth=snapshot.queue_depth,
        in_flight=snapshot.in_flight_ready,
        queue_wait_p95_s=snapshot.queue_wait_p95_s,
        oldest_queued_age_s=snapshot.oldest_queued_age_s,
        oldest_queued_deadline_fraction=snapshot.oldest_queued_deadline_fraction,
        utilisation=snapshot.utilisation if snapshot.workers_ready else 0.0,
        rss_per_worker_bytes=snapshot.rss_per_worker_bytes,
        total_rss_bytes=float(snapshot.rss_total_bytes),
    )
