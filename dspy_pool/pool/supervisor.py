"""The worker pool: spawn, watch, replace and stop workers (the arbiter).

Verbs per responsibility, after gunicorn's arbiter: `spawn` asks the zygote
for a worker and waits for its HELLO; `_on_worker_dead` reaps it from the
dispatcher and schedules a replacement; `_watch` pings workers and poisons
hung ones; `stop` is the shutdown staircase. A run of boot failures (a crash
loop) stops respawning and turns the pool unhealthy with a clear log line.
`resize` is the seam the autoscaling controller drives.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any, Callable

import structlog

from dspy_pool import errors
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.dispatcher import Dispatcher
from dspy_pool.pool.handle import WorkerHandle, WorkerState
from dspy_pool.pool.spawner import ZygoteClient, ZygoteFailed
from dspy_pool.pool.warmup import WarmupProgram, WarmupSettings, warm_worker

log = structlog.get_logger("dspy_pool.pool")


@dataclass(frozen=True)
class PoolSettings:
    workers: int = 2
    min_ready: int = 1
    worker_concurrency: int = 64
    max_queue: int = 1000
    boot_timeout_s: float = 60.0
    zygote_timeout_s: float = 120.0
    crash_loop_threshold: int = 5
    ping_interval_s: float = 2.0
    hang_timeout_s: float = 10.0
    cancel_grace_s: float = 5.0
    max_frame_bytes: int = 64 * 1024 * 1024
    stop_timeout_s: float = 5.0
    warming: str = "parallel"  # "parallel", "sequential", or "staged" (min_ready first, the rest in background)
    warmup: WarmupSettings = WarmupSettings()  # per-worker warm-up before it takes traffic


class WorkerPool:
    def __init__(
        self,
        settings: PoolSettings,
        zygote_config: wire.ZygoteConfig,
        on_health_change: Callable[[bool], None] | None = None,
        *,
        warmup_source: Callable[[], list[WarmupProgram]] | None = None,
        metrics: Any = None,
        on_backlog: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.zygote_config = zygote_config
        self.dispatcher = Dispatcher(settings.max_queue, settings.worker_concurrency, metrics=metrics, on_backlog=on_backlog)
        self.zygote = ZygoteClient(self._on_worker_exit, self._on_zygote_lost)
        self.target_workers = settings.workers
        self.crash_looping = False
        self.stopping = False
        self.restarts = 0
        self.started_at = time.monotonic()
        self._ids = itertools.count(1)
        self._handles: dict[int, WorkerHandle] = {}  # every live handle, starting ones included
        self._boot_failures_in_a_row = 0
        self._tasks: set[asyncio.Task] = set()
        self._watch_task: asyncio.Task | None = None
        self._on_health_change = on_health_change or (lambda healthy: None)
        self._settled = asyncio.Event()  # set once the pool is healthy or crash-looping
        self._all_stopped = asyncio.Event()  # set when the last worker is gone (what stop() waits for)
        # What a new worker warms up with (the registered programs).
        self.warmup_source = warmup_source
        self.warmup_calls = 0
        self.warmup_failures = 0

    # -- start --------------------------------------------------------------
    async def start(self) -> None:
        """Start the zygote, then the workers; return when min_ready are up."""
        await self.launch_zygote()
        await self.start_workers()

    async def launch_zygote(self) -> None:
        """Exec the zygote; its imports go on while the caller sets up other things."""
        await self.zygote.launch(self.zygote_config)

    async def start_workers(self) -> None:
        """Wait for the zygote, start the initial workers by the warming strategy, return when min_ready are up."""
        await self.zygote.wait_ready(self.settings.zygote_timeout_s)
        await self._warm()
        self._watch_task = asyncio.get_running_loop().create_task(self._watch())
        await self.wait_ready()

    async def _warm(self) -> None:
        """Start the initial workers by the configured strategy."""
        warming, target = self.settings.warming, self.target_workers
        if warming == "sequential":
            for _ in range(target):
                if self.crash_looping:
                    return
                await self.spawn()
                log.info("pool_warming", strategy=warming, ready=len(self.dispatcher.ready_workers()), target=target)
            return
        first = min(self.settings.min_ready, target) if warming == "staged" else target
        for _ in range(first):
            self._spawn_in_background()
        if warming == "staged":
            await self.wait_ready()
            log.info("pool_warming", strategy=warming, ready=len(self.dispatcher.ready_workers()), target=target)
            for _ in range(target - first):
                self._spawn_in_background()

    async def wait_ready(self) -> None:
        """Return once min_ready workers serve; raise if the pool crash-loops first."""
        await self._settled.wait()
        if self.crash_looping:
            raise errors.Unavailable("workers crash at boot; see the log (crash_loop_detected)")

    @property
    def module_kinds(self) -> list[str]:
        info = self.zygote.ready_info
        return list(info.module_kinds) if info else []

    @property
    def healthy(self) -> bool:
        return not self.crash_looping and not self.stopping and len(self.dispatcher.ready_workers()) >= min(self.settings.min_ready, self.target_workers)

    def handles(self) -> list[WorkerHandle]:
        return sorted(self._handles.values(), key=lambda h: h.worker_id)

    # -- spawn / replace ----------------------------------------------------
    def _spawn_in_background(self, delay_s: float = 0.0) -> None:
        task = asyncio.get_running_loop().create_task(self.spawn(delay_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def spawn(self, delay_s: float = 0.0, *, extra: bool = False) -> WorkerHandle | None:
        """Start one worker; beyond the target only when `extra` (a recycle's replacement comes first)."""
        if delay_s:
            await asyncio.sleep(delay_s)
        if self.stopping or self.crash_looping or (len(self._handles) >= self.target_workers and not extra):
            return None
        worker_id = next(self._ids)
        handle = WorkerHandle(
            worker_id,
            max_frame_bytes=self.settings.max_frame_bytes,
            cancel_grace_s=self.settings.cancel_grace_s,
            on_dead=self._on_worker_dead,
            on_slot_free=self.dispatcher.pump,
        )
        self._handles[worker_id] = handle
        try:
            spawned = await self.zygote.spawn(worker_id)
            await handle.attach(spawned.pid, spawned.channel, spawned.stdout_fd, spawned.stderr_fd)
            hello = await asyncio.wait_for(asyncio.shield(handle.hello), self.settings.boot_timeout_s)
        except (ZygoteFailed, errors.PoolError, asyncio.TimeoutError, OSError) as exc:
            reason = f"boot failed: {type(exc).__name__}: {exc}"
            if handle.state is not WorkerState.STOPPED:
                handle.kill(reason)
            return None
        self._boot_failures_in_a_row = 0
        log.info("worker_spawned", worker_id=worker_id, pid=hello.pid, boot_ms=round(hello.boot_ms, 1))
        await self._warm_up(handle)
        if handle.state is WorkerState.READY:
            self.dispatcher.add_worker(handle)
            self._update_ready()
        return handle

    async def _warm_up(self, handle: WorkerHandle) -> None:
        """Build the registered programs (and run their warm-up calls) before the worker takes traffic."""
        settings = self.settings.warmup
        programs = self.warmup_source() if self.warmup_source is not None and settings.mode != "off" else []
        if not programs or handle.state is not WorkerState.READY:
            return
        handle.begin_warmup()
        report = await warm_worker(handle, programs, settings, self.settings.worker_concurrency)
        handle.end_warmup()
        self.warmup_calls += report.calls
        self.warmup_failures += report.failures
        log_method = log.warning if report.failures else log.info
        log_method("worker_warmed", worker_id=handle.worker_id, pid=handle.pid, programs=report.programs,
                   calls=report.calls, failures=report.failures, timed_out=report.timed_out,
                   duration_ms=round(report.duration_ms, 1), errors=report.errors or None)

    def _on_worker_exit(self, worker_id: int, pid: int, exit_code: int) -> None:
        handle = self._handles.get(worker_id)
        if handle is not None and handle.pid == pid:
            handle.kill("exited", exit_code=exit_code)

    def _on_worker_dead(self, handle: WorkerHandle, reason: str) -> None:
        self._handles.pop(handle.worker_id, None)
        if not self._handles:
            self._all_stopped.set()
        self.dispatcher.remove_worker(handle)
        booted = handle.ready_at is not None
        if not booted and not self.stopping:
            self._boot_failures_in_a_row += 1
            if self._boot_failures_in_a_row >= self.settings.crash_loop_threshold and not self.crash_looping:
                self.crash_looping = True
                log.error("crash_loop_detected", failures_in_a_row=self._boot_failures_in_a_row, last_reason=reason,
                          hint="workers die before they are ready; respawning stopped. Check --programs modules and the LM settings.")
        self._update_ready()
        if self.stopping or self.crash_looping:
            return
        if len(self._handles) < self.target_workers:
            self.restarts += 1
            backoff = min(2.0, 0.05 * (2 ** min(self._boot_failures_in_a_row, 6))) if self._boot_failures_in_a_row else 0.0
            self._spawn_in_background(backoff)

    def _on_zygote_lost(self, reason: str) -> None:
        if not self.stopping:
            self.crash_looping = True
            log.error("crash_loop_detected", reason=f"zygote lost: {reason}")
            self._update_ready()

    def _update_ready(self) -> None:
        healthy = self.healthy
        if healthy or self.crash_looping:
            self._settled.set()
        self._on_health_change(healthy)

    # -- resize (the autoscaler's seam) -------------------------------------
    def resize(self, target: int) -> None:
        """Grow by spawning, shrink by draining the least busy workers."""
        self.target_workers = max(0, target)
        live = [h for h in self._handles.values() if h.state in (WorkerState.STARTING, WorkerState.WARMING, WorkerState.READY)]
        for _ in range(self.target_workers - len(live)):
            self._spawn_in_background()
        surplus = len(live) - self.target_workers
        for handle in sorted(live, key=lambda h: len(h.in_flight))[: max(0, surplus)]:
            handle.drain()

    # -- watch --------------------------------------------------------------
    async def _watch(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.settings.ping_interval_s)
            now = time.monotonic()
            for handle in list(self._handles.values()):
                if handle.state in (WorkerState.WARMING, WorkerState.READY, WorkerState.DRAINING):
                    handle.ping(now, self.settings.hang_timeout_s)

    # -- stop ---------------------------------------------------------------
    async def drain(self, grace_s: float) -> bool:
        """Stop taking calls and wait up to `grace_s` for queued and running ones to finish."""
        self.dispatcher.closed = True
        try:
            await asyncio.wait_for(self.dispatcher.wait_idle(), grace_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Workers finish (SHUTDOWN), bounded wait, then the zygote kills the rest. Idempotent."""
        if self.stopping and not self._handles:
            await self.zygote.stop(self.settings.stop_timeout_s)
            return
        self.stopping = True
        self._on_health_change(False)
        if self._watch_task:
            self._watch_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        self.dispatcher.fail_queued(errors.Unavailable("the server shut down before this call could run"))
        for handle in list(self._handles.values()):
            handle.drain()
        if self._handles:
            self._all_stopped.clear()
            try:
                await asyncio.wait_for(self._all_stopped.wait(), self.settings.stop_timeout_s)
            except asyncio.TimeoutError:
                pass
        for handle in list(self._handles.values()):
            handle.kill("shutdown")
        await self.zygote.stop(self.settings.stop_timeout_s)
        log.info("pool_stopped", restarts=self.restarts)
