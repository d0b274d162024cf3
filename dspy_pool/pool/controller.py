"""The controller: applies the scaling policy and recycles workers, one tick at a time.

    every interval_s, and wake_settle_s after calls begin to queue (dispatcher.on_backlog -> wake()):
        PoolMetrics.snapshot(pool) ──> PoolSnapshot ──> observers (status stream, Prometheus)
                                          │
                  fixed_size? ── yes ──> resize to it once, never again
                                          │ no
                                          v
                  scaler.decide(metrics, config, state, now) ──> Decision
                                          │ changed
                                          v
                  pool.resize(desired)   (spawn from the zygote / drain the least busy)
                  log pool_scaled(from, to, reason)
                                          │
        recycling: one worker at a time, due by max_requests (+ jitter), max_rss or max_age,
        in a background task so ticks go on while the replacement boots and warms up:
                  replacement = await pool.spawn()   (booted and warmed up: it takes traffic now)
                  old.drain()                        (no new calls; in-flight ones finish; it exits)
                  wait until it has stopped before the next one

Capacity never dips during a recycle: the replacement is ready before the old
worker stops taking calls, and the old one finishes what it is running. The
pool does not respawn a drained worker on exit while the replacement keeps
its live count at the target.

While a replacement boots (and runs warm-up calls, which may take as long as
an LM call), the scaler still runs, but without counting the replacement as
capacity: it is not capacity the scaler asked for, and counting it would make
the pool look one worker larger than its target. Should a scale-down drain
the replacement anyway, the recycle fails cleanly and is retried later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import structlog

from dspy_pool.pool.metrics import PoolMetrics, PoolSnapshot, to_scaler_metrics
from dspy_pool.pool.scaler import Decision, ScalerConfig, ScalerState, decide

__all__ = ["Controller", "RecycleConfig", "RecycleReason", "due_for_recycle"]

log = structlog.get_logger("dspy_pool.pool")


class RecycleReason:
    MAX_REQUESTS = "max_requests"
    MAX_RSS = "max_rss"
    MAX_AGE = "max_age"


@dataclass(frozen=True, slots=True)
class RecycleConfig:
    """When a worker is replaced; 0 turns a rule off."""

    max_requests: int = 0  # calls served (ok or failed) before a worker is replaced
    max_requests_jitter: int = 0  # each worker's limit is max_requests + randint(0, jitter): they do not all go at once
    max_rss_bytes: int = 0  # measured RSS above this
    max_age_s: float = 0.0  # seconds since the worker was spawned
    retry_after_s: float = 5.0  # after a replacement failed to boot

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_requests_jitter", "max_rss_bytes", "max_age_s", "retry_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"RecycleConfig.{name} must be a non-negative number, got {value!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.max_requests or self.max_rss_bytes or self.max_age_s)


def _state_name(handle: Any) -> str:
    return getattr(handle.state, "value", handle.state)


def due_for_recycle(
    handles: Iterable[Any],
    config: RecycleConfig,
    limits: dict[int, int],
    now: float,
    rng: random.Random | None = None,
) -> tuple[Any, str] | None:
    """The first ready worker due for replacement and why, or None. Pure but for `limits`.

    `limits` remembers each worker's jittered request limit (assigned the
    first time the worker is seen, from `rng`); entries for workers no longer
    present are dropped.
    """
    if not config.enabled:
        return None
    rng = rng or random.Random()
    seen: set[int] = set()
    due: tuple[Any, str] | None = None
    for handle in handles:
        seen.add(handle.worker_id)
        if config.max_requests and handle.worker_id not in limits:
            jitter = rng.randint(0, config.max_requests_jitter) if config.max_requests_jitter else 0
            limits[handle.worker_id] = config.max_requests + jitter
        if due is not None or _state_name(handle) != "ready":
            continue
        if config.max_requests and handle.served + handle.failed >= limits[handle.worker_id]:
            due = (handle, RecycleReason.MAX_REQUESTS)
        elif config.max_rss_bytes and handle.rss_bytes > config.max_rss_bytes:
            due = (handle, RecycleReason.MAX_RSS)
        elif config.max_age_s and handle.uptime_s(now) >= config.max_age_s:
            due = (handle, RecycleReason.MAX_AGE)
    for worker_id in [w for w in limits if w not in seen]:
        del limits[worker_id]
    return due


class Controller:
    """Drives `pool` toward the scaler's decision every `interval_s`; recycles workers."""

    def __init__(
        self,
        pool: Any,
        metrics: PoolMetrics,
        scaler_config: ScalerConfig,
        interval_s: float = 0.5,
        *,
        fixed_size: int | None = None,
        recycle: RecycleConfig = RecycleConfig(),
        observers: Iterable[Callable[[PoolSnapshot], None]] = (),
        wake_settle_s: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s!r}")
        if fixed_size is not None and fixed_size < 0:
            raise ValueError(f"fixed_size must not be negative, got {fixed_size!r}")
        self.pool = pool
        self.metrics = metrics
        self.scaler_config = scaler_config
        self.interval_s = interval_s
        self.fixed_size = fixed_size
        self.recycle = recycle
        self.wake_settle_s = wake_settle_s
        self.state = ScalerState()
        self.last_snapshot: PoolSnapshot | None = None
        self.last_decision: Decision | None = None
        self.scale_ups = 0
        self.scale_downs = 0
        self.recycled = 0
        self.recycled_by_reason: dict[str, int] = {}
        self.recycle_failures = 0
        self.observers: tuple[Callable[[PoolSnapshot], None], ...] = tuple(observers)
        self._clock = clock
        self._rng = rng or random.Random()
        self._limits: dict[int, int] = {}
        self._retiring: Any = None  # the worker a recycle drained; the next waits until it stops
        self._recycle_task: asyncio.Task | None = None  # booting a replacement, then draining the old worker
        self._recycle_paused_until = 0.0
        self._fixed_applied = False
        self._stop = asyncio.Event()
        self._woken = asyncio.Event()
        self._task: asyncio.Task | None = None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> asyncio.Task:
        """Run in the background; returns the task (also kept for stop())."""
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(self.run(), name="pool-controller")
        return self._task

    def wake(self) -> None:
        """Tick soon instead of at the next interval: calls began to queue (the dispatcher's on_backlog)."""
        self._woken.set()

    async def run(self) -> None:
        """Tick every interval_s, or soon after wake(), until stop(); a failing tick is logged and the next one runs."""
        while not self._stop.is_set():
            self._woken.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad tick must not stop scaling for good
                log.exception("controller_tick_failed", error=f"{type(exc).__name__}: {exc}")
            await self._wait_for_next_tick()

    async def _wait_for_next_tick(self) -> None:
        stop, woken = asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._woken.wait())
        try:
            await asyncio.wait((stop, woken), timeout=self.interval_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            woken.cancel()
        if self._woken.is_set() and not self._stop.is_set():
            # A load step arrives as a burst of calls over a few milliseconds;
            # ticking on the first one would size the pool for a fraction of it.
            await asyncio.sleep(min(self.wake_settle_s, self.interval_s))

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop ticking; waits for the current tick (a recycle in progress) up to timeout_s. Idempotent."""
        self._stop.set()
        task, self._task = self._task, None
        for pending in (task, self._recycle_task):
            if pending is None or pending.done():
                continue
            try:
                await asyncio.wait_for(asyncio.shield(pending), timeout_s)
            except asyncio.TimeoutError:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    # -- one tick --------------------------------------------------------------
    @property
    def scale_events(self) -> dict[str, int]:
        return {"up": self.scale_ups, "down": self.scale_downs}

    def _pool_busy(self) -> bool:
        # Shutting down, crash-looping, or relaunching its zygote: no worker can be added, and
        # a decision taken on a pool with no workers would only be undone once it is back.
        return any(getattr(self.pool, flag, False) for flag in ("stopping", "shutting_down", "crash_looping", "zygote_down"))

    async def tick(self) -> PoolSnapshot:
        now = self._clock()
        snapshot = self.metrics.snapshot(self.pool, now, _loop_time())
        self.last_snapshot = snapshot
        for observer in list(self.observers):
            try:
                observer(snapshot)
            except Exception as exc:
                log.warning("controller_observer_failed", error=f"{type(exc).__name__}: {exc}")
        if self._pool_busy():
            return snapshot
        self._scale(snapshot, now)
        if self.recycle.enabled:
            self._start_recycle(now)
        return snapshot

    @property
    def recycling(self) -> bool:
        """A recycle's replacement is booting or warming up."""
        return self._recycle_task is not None and not self._recycle_task.done()

    async def recycle_settled(self) -> None:
        """Return once the recycle in progress, if any, has finished."""
        if self._recycle_task is not None:
            await asyncio.gather(self._recycle_task, return_exceptions=True)

    def _scale(self, snapshot: PoolSnapshot, now: float) -> None:
        if self.fixed_size is not None:
            # Manual override: set the size once; the pool itself replaces crashed workers.
            if not self._fixed_applied:
                self._fixed_applied = True
                if self.pool.target_workers != self.fixed_size or snapshot.workers_live != self.fixed_size:
                    self._apply(snapshot.workers_live, self.fixed_size, "fixed_size")
            return
        metrics = to_scaler_metrics(snapshot)
        if self.recycling:
            # The replacement boots beside the worker it replaces: not capacity the scaler asked for.
            metrics = dataclasses.replace(metrics, starting_workers=max(0, metrics.starting_workers - 1))
        decision = decide(metrics, self.scaler_config, self.state, now)
        self.state = decision.state
        self.last_decision = decision
        if decision.changed:
            self._apply(decision.from_workers, decision.desired_workers, str(decision.reason), snapshot)

    def _apply(self, current: int, desired: int, reason: str, snapshot: PoolSnapshot | None = None) -> None:
        if desired > current:
            self.scale_ups += 1
        elif desired < current:
            self.scale_downs += 1
        fields: dict[str, Any] = {"from_workers": current, "to_workers": desired, "reason": reason}
        if snapshot is not None:
            fields.update(
                queue_depth=snapshot.queue_depth,
                in_flight=snapshot.in_flight_ready,
                queue_wait_p95_ms=round(snapshot.queue_wait_p95_s * 1000, 1),
                utilisation=round(snapshot.utilisation, 3),
            )
        log.info("pool_scaled", **fields)
        self.pool.resize(desired)

    # -- recycling -------------------------------------------------------------
    def _start_recycle(self, now: float) -> None:
        if self.recycling:
            return
        if self._retiring is not None:
            if _state_name(self._retiring) != "stopped":
                return  # one at a time: the last one is still finishing its calls
            self._retiring = None
        if now < self._recycle_paused_until:
            return
        due = due_for_recycle(self.pool.handles(), self.recycle, self._limits, now, self._rng)
        if due is None:
            return
        old, reason = due
        self._recycle_task = asyncio.get_running_loop().create_task(self._replace(old, reason, now), name="pool-recycle")

    async def _replace(self, old: Any, reason: str, now: float) -> None:
        try:
            await self._replace_unguarded(old, reason, now)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed recycle must not stop later ones
            self.recycle_failures += 1
            self._recycle_paused_until = now + self.recycle.retry_after_s
            log.exception("worker_recycle_failed", worker_id=old.worker_id, reason=reason,
                          error=f"{type(exc).__name__}: {exc}")

    async def _replace_unguarded(self, old: Any, reason: str, now: float) -> None:
        replacement = await self.pool.spawn(extra=True)
        if replacement is None or _state_name(replacement) != "ready":
            self.recycle_failures += 1
            self._recycle_paused_until = now + self.recycle.retry_after_s
            log.warning("worker_recycle_failed", worker_id=old.worker_id, pid=old.pid, reason=reason,
                        retry_in_s=self.recycle.retry_after_s)
            return
        if _state_name(old) != "ready":
            # It died or was drained by a scale-down while the replacement booted:
            # the replacement is now surplus to what the pool was asked to hold.
            if len([h for h in self.pool.handles() if _state_name(h) in ("ready", "starting")]) > self.pool.target_workers:
                replacement.drain()
            return
        old.drain()
        self._retiring = old
        self.recycled += 1
        self.recycled_by_reason[reason] = self.recycled_by_reason.get(reason, 0) + 1
        log.info("worker_recycled", worker_id=old.worker_id, pid=old.pid, reason=reason,
                 served=old.served + old.failed, rss_bytes=old.rss_bytes,
                 replacement_id=replacement.worker_id, replacement_pid=replacement.pid)


def _loop_time() -> float | None:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return None
