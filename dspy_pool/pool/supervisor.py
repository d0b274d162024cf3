"""The worker pool: spawn, watch, replace and stop workers (the arbiter).

Verbs per responsibility, after gunicorn's arbiter: `spawn` asks the zygote
for a worker and waits for its HELLO; `_on_worker_dead` reaps it from the
dispatcher and schedules a replacement; `_watch` pings workers and poisons
hung ones; `stop` is the shutdown staircase. A run of boot failures (a crash
loop) stops respawning and turns the pool unhealthy with a clear log line.
`resize` is the seam the autoscaling controller drives.

The zygote is supervised too:

    zygote dies ──> _on_zygote_lost: no worker can exist now; queued calls fail UNAVAILABLE,
                    new calls are refused at once (dispatcher.refuse), health NOT_SERVING
                ──> _relaunch_zygote: exec a fresh one after a backoff (restarts.after_failure),
                    hand it the config over its socketpair, wait for its imports
                ──> respawn the workers; health SERVING once min_ready serve
    relaunches that never get ready (RestartPolicy.max_attempts in a row) ──> crash_loop_detected
    (one that was ready and is then killed, however often, is relaunched every time, at the backoff)

Once shutdown begins (`drain` or `stop`) nothing is spawned or relaunched.

Programs are supervised through warm-up: a worker that dies or hangs while
building or warming up one program, or a build that fails, is a fault of that
program (warmup.py names it); after `quarantine_after` in a row it is
quarantined (quarantine.py): left out of warm-up, its calls refused with
PROGRAM_QUARANTINED.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any, Callable

import structlog

from dspy_pool import errors, logs, restarts
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool import quarantine
from dspy_pool.pool.dispatcher import Dispatcher
from dspy_pool.pool.handle import WorkerHandle, WorkerState
from dspy_pool.pool.spawner import ZygoteClient, ZygoteFailed
from dspy_pool.pool.warmup import WarmupProgram, WarmupReport, WarmupSettings, warm_worker

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
    # Relaunching a zygote that died: one that was ready is relaunched however often it is killed (at the backoff);
    # a crash loop is max_attempts relaunches in a row that never get ready.
    zygote_restarts: restarts.RestartPolicy = restarts.RestartPolicy(deaths_count=False)
    quarantine_after: int = quarantine.DEFAULT_THRESHOLD  # warm-up faults in a row before a program is quarantined


_LIVE = (WorkerState.STARTING, WorkerState.WARMING, WorkerState.READY)  # draining workers are leaving: not capacity
_WORKER_BACKOFF_BASE_S = 0.1
_WORKER_BACKOFF_MAX_S = 2.0


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
        self.dispatcher.refuse = self._refusal
        self.zygote = ZygoteClient(self._on_worker_exit, self._on_zygote_lost)
        self.target_workers = settings.workers
        self.crash_looping = False
        self.stopping = False
        self.shutting_down = False  # set by drain() or stop(): nothing is spawned or relaunched after it
        self.zygote_down = False  # the zygote died and a new one is not ready yet: no worker can exist
        self._supervising_zygote = False  # from its first READY; a zygote lost before that fails start-up
        self._zygote_restarts = restarts.RestartState()
        self._relaunch_task: asyncio.Task | None = None
        self._module_kinds: list[str] = []
        self.metric_kinds: list[str] = []  # operator metric kinds the zygote loaded
        self._quarantine = quarantine.QuarantineState()
        self.restarts = 0
        self.started_at = time.monotonic()
        self._ids = itertools.count(1)
        self._handles: dict[int, WorkerHandle] = {}  # every live handle, starting ones included
        # Optimizer workers: forked from the same zygote, never routed calls, not counted in the pool's size.
        self._optimizer_handles: dict[int, WorkerHandle] = {}
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
        self._zygote_ready(await self.zygote.wait_ready(self.settings.zygote_timeout_s))
        self._supervising_zygote = True
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
        return list(self._module_kinds)  # the last zygote's: a relaunched one loads the same modules

    @property
    def healthy(self) -> bool:
        return (not self.crash_looping and not self.stopping and not self.zygote_down
                and len(self.dispatcher.ready_workers()) >= min(self.settings.min_ready, self.target_workers))

    @property
    def quarantined(self) -> dict[str, str]:
        """Program keys set aside because their build or warm-up kept breaking workers -> why."""
        return dict(self._quarantine.quarantined)

    def handles(self) -> list[WorkerHandle]:
        return sorted(self._handles.values(), key=lambda h: h.worker_id)

    # -- spawn / replace ----------------------------------------------------
    def _spawn_in_background(self, delay_s: float = 0.0) -> None:
        # A worker dies inside whatever ran at that moment, a call's work included: its replacement is nobody's call.
        task = asyncio.get_running_loop().create_task(self.spawn(delay_s), context=logs.without_call())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def spawn(self, delay_s: float = 0.0, *, extra: bool = False) -> WorkerHandle | None:
        """Start one worker; beyond the target only when `extra` (a recycle's replacement comes first)."""
        if delay_s:
            await asyncio.sleep(delay_s)
        if not self._may_spawn(extra):
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

    async def spawn_optimizer(self, on_dead: Callable[[WorkerHandle, str], None]) -> WorkerHandle | None:
        """One optimizer worker (niced; runs optimization jobs, never calls) from the same zygote, or None
        while none can be started (shutting down, zygote down, boot failed): the caller retries."""
        if self.stopping or self.shutting_down or self.crash_looping or self.zygote_down:
            return None
        worker_id = next(self._ids)

        def dead(handle: WorkerHandle, reason: str) -> None:
            self._optimizer_handles.pop(handle.worker_id, None)
            on_dead(handle, reason)

        handle = WorkerHandle(worker_id, max_frame_bytes=self.settings.max_frame_bytes, cancel_grace_s=self.settings.cancel_grace_s,
                              on_dead=dead, on_slot_free=lambda _handle: None)
        self._optimizer_handles[worker_id] = handle
        try:
            spawned = await self.zygote.spawn(worker_id, role="optimizer")
            await handle.attach(spawned.pid, spawned.channel, spawned.stdout_fd, spawned.stderr_fd)
            hello = await asyncio.wait_for(asyncio.shield(handle.hello), self.settings.boot_timeout_s)
        except (ZygoteFailed, errors.PoolError, asyncio.TimeoutError, OSError) as exc:
            if handle.state is not WorkerState.STOPPED:
                handle.kill(f"boot failed: {type(exc).__name__}: {exc}")
            return None
        log.info("optimizer_worker_spawned", worker_id=worker_id, pid=hello.pid, boot_ms=round(hello.boot_ms, 1))
        return handle

    def optimizer_handles(self) -> list[WorkerHandle]:
        return sorted(self._optimizer_handles.values(), key=lambda h: h.worker_id)

    def _may_spawn(self, extra: bool) -> bool:
        if self.stopping or self.shutting_down or self.crash_looping or self.zygote_down:
            return False
        return extra or self._live_count() < self.target_workers

    def _live_count(self) -> int:
        return sum(1 for handle in self._handles.values() if handle.state in _LIVE)

    async def _warm_up(self, handle: WorkerHandle) -> None:
        """Build the registered programs (and run their warm-up calls) before the worker takes traffic."""
        settings = self.settings.warmup
        programs = self.warmup_source() if self.warmup_source is not None and settings.mode != "off" else []
        programs = [program for program in programs if program.key not in self._quarantine.quarantined]
        if not programs or handle.state is not WorkerState.READY:
            return
        handle.begin_warmup()
        report = await warm_worker(handle, programs, settings, self.settings.worker_concurrency, self._on_program_fault)
        handle.end_warmup()
        for key in report.clean:
            self._quarantine = quarantine.record_success(self._quarantine, key)
        self.warmup_calls += report.calls
        self.warmup_failures += report.failures
        self._log_warmup(handle, report)
        if report.hung:
            handle.kill("hung")  # its loop is stuck in the operator's factory (hard rule 3: a timeout poisons)

    @staticmethod
    def _log_warmup(handle: WorkerHandle, report: WarmupReport) -> None:
        log_method = log.warning if report.failures else log.info
        log_method("worker_warmed", worker_id=handle.worker_id, pid=handle.pid, programs=report.programs,
                   calls=report.calls, failures=report.failures, timed_out=report.timed_out,
                   duration_ms=round(report.duration_ms, 1), errors=report.errors or None)

    def _on_program_fault(self, key: str, why: str) -> None:
        """Warm-up says `key` broke a worker (or failed to build): count it; quarantine it past the threshold."""
        if self.stopping or self.shutting_down or self.zygote_down:
            return  # workers killed by the shutdown or by their zygote's death say nothing about the program
        before = self._quarantine
        self._quarantine = quarantine.record_fault(before, key, why, self.settings.quarantine_after)
        reason = self._quarantine.quarantined.get(key)
        if reason is None:
            log.warning("program_fault", program_key=key, why=why, faults_in_a_row=self._quarantine.strikes.get(key, 0))
        elif key not in before.quarantined:
            log.error("program_quarantined", program_key=key, reason=reason,
                      hint="left out of warm-up; its calls fail FAILED_PRECONDITION until a fixed version is registered")
            self.dispatcher.fail_queued(quarantine.refusal(key, reason), program_key=key)

    def _refusal(self, program_key: str) -> errors.PoolError | None:
        """Why a call cannot run at all right now (the dispatcher refuses it at once), or None."""
        if not (self.crash_looping or self.zygote_down or self._quarantine.quarantined):  # the usual answer, asked per call
            return None
        if self.crash_looping:
            return errors.Unavailable("no worker can start (crash loop; see crash_loop_detected in the server log)")
        if self.zygote_down:
            return errors.Unavailable("the worker zygote died and is being relaunched: no worker can run this call yet",
                                      metadata={"retry_after_ms": "1000"})
        why = self._quarantine.quarantined.get(program_key)
        return quarantine.refusal(program_key, why) if why is not None else None

    def _on_worker_exit(self, worker_id: int, pid: int, exit_code: int) -> None:
        handle = self._handles.get(worker_id) or self._optimizer_handles.get(worker_id)
        if handle is not None and handle.pid == pid:
            handle.kill("exited", exit_code=exit_code)

    def _on_worker_dead(self, handle: WorkerHandle, reason: str) -> None:
        self._handles.pop(handle.worker_id, None)
        if not self._handles:
            self._all_stopped.set()
        self.dispatcher.remove_worker(handle)
        if self._is_boot_failure(handle):
            self._boot_failures_in_a_row += 1
            if self._boot_failures_in_a_row >= self.settings.crash_loop_threshold:
                self._declare_crash_loop(failures_in_a_row=self._boot_failures_in_a_row, last_reason=reason,
                                         hint="workers die before they are ready; respawning stopped. Check --programs modules and the LM settings.")
        self._update_ready()
        if self.shutting_down and not self.dispatcher.ready_workers():
            # Draining with no worker left: what is queued can never run, so say so now.
            self.dispatcher.fail_queued(errors.Unavailable("the server is shutting down and no worker is left to run this call"))
        if self.stopping or self.shutting_down or self.crash_looping or self.zygote_down or handle.drained:
            return  # a drained worker was asked to leave: its exit is no restart, and resize() keeps the count
        if self._live_count() < self.target_workers:
            self.restarts += 1
            self._spawn_in_background(restarts.backoff_s(self._boot_failures_in_a_row, _WORKER_BACKOFF_BASE_S, _WORKER_BACKOFF_MAX_S))

    def _is_boot_failure(self, handle: WorkerHandle) -> bool:
        # No pid: the zygote never forked it (the zygote's failure, handled as such), and
        # while the zygote is down or shutdown runs, deaths are theirs, not the worker's.
        unready = handle.ready_at is None and handle.pid != 0
        return unready and not (self.stopping or self.shutting_down or self.zygote_down or self.crash_looping)

    def _declare_crash_loop(self, **fields) -> None:
        if self.crash_looping:
            return
        self.crash_looping = True
        log.error("crash_loop_detected", **fields)
        self.dispatcher.fail_queued(errors.Unavailable("no worker can start (crash loop; see crash_loop_detected in the server log)"))
        self._update_ready()

    # -- the zygote -----------------------------------------------------------
    def _zygote_ready(self, ready: wire.ZygoteReady) -> None:
        self._module_kinds = list(ready.module_kinds)
        self.metric_kinds = list(ready.metric_kinds)
        self._zygote_restarts = restarts.after_start(self._zygote_restarts, time.monotonic())

    def _on_zygote_lost(self, reason: str) -> None:
        if self.stopping or self.shutting_down:
            return
        if not self._supervising_zygote:
            self._declare_crash_loop(reason=f"zygote lost before it was ready: {reason}")
            return
        if self._relaunch_task is not None and not self._relaunch_task.done():
            return  # the relaunch in progress sees its own zygote fail
        # Its workers die with it (PR_SET_PDEATHSIG): until a new one is ready no call can run.
        self.zygote_down = True
        self._boot_failures_in_a_row = 0  # workers it took down while booting were not at fault
        self.dispatcher.fail_queued(errors.Unavailable("the worker zygote died; no worker can run this call until it is relaunched"))
        self._update_ready()
        self._relaunch_task = asyncio.get_running_loop().create_task(self._relaunch_zygote(reason), name="zygote-relaunch",
                                                                     context=logs.without_call())
        self._tasks.add(self._relaunch_task)
        self._relaunch_task.add_done_callback(self._tasks.discard)

    async def _relaunch_zygote(self, reason: str) -> None:
        """Exec a fresh zygote after a backoff until one is ready or the policy gives up; then respawn the workers."""
        while True:
            await self.zygote.stop(1.0)  # reap the one that failed (SIGKILL if it lingers: its workers go with it)
            if self.stopping or self.shutting_down:
                return
            delay, self._zygote_restarts = restarts.after_failure(self.settings.zygote_restarts, self._zygote_restarts, time.monotonic())
            if delay is None:
                self._declare_crash_loop(reason=f"the zygote keeps dying: {reason}", failures_in_a_row=self._zygote_restarts.failures,
                                         hint="relaunching stopped. Check the zygote's output above (zygote_output) and --programs modules.")
                return
            log.warning("zygote_relaunching", reason=reason, attempt=self._zygote_restarts.failures, delay_s=round(delay, 3))
            await asyncio.sleep(delay)
            if self.stopping or self.shutting_down:
                return
            try:
                ready = await self._launch_zygote()
            except (ZygoteFailed, OSError) as exc:
                reason = f"relaunch failed: {type(exc).__name__}: {exc}"
                continue
            self._zygote_ready(ready)
            self.zygote_down = False
            log.info("zygote_relaunched", pid=ready.pid, import_s=round(ready.import_s, 3), attempt=self._zygote_restarts.failures)
            self._update_ready()
            replacing = self.target_workers - self._live_count()
            self.restarts += max(0, replacing)  # the zygote's workers died with it: replacing them is a restart each
            for _ in range(replacing):
                self._spawn_in_background()
            return

    async def _launch_zygote(self) -> wire.ZygoteReady:
        # A fresh client per zygote: the old one's channel, pending spawns and output readers died with it.
        self.zygote = ZygoteClient(self._on_worker_exit, self._on_zygote_lost)
        await self.zygote.launch(self.zygote_config)  # the config (and the key) travels only over the socketpair
        return await self.zygote.wait_ready(self.settings.zygote_timeout_s)

    def _update_ready(self) -> None:
        healthy = self.healthy
        if healthy or self.crash_looping:
            self._settled.set()
        self._on_health_change(healthy)

    # -- resize (the autoscaler's seam) -------------------------------------
    def resize(self, target: int) -> None:
        """Grow by spawning, shrink by draining the least busy workers; draining ones are leaving and do not count."""
        self.target_workers = max(0, target)
        live = [h for h in self._handles.values() if h.state in _LIVE]
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
            for handle in [*self._handles.values(), *self._optimizer_handles.values()]:
                if handle.state in (WorkerState.WARMING, WorkerState.READY, WorkerState.DRAINING):
                    handle.ping(now, self.settings.hang_timeout_s)

    # -- stop ---------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """From now on no call is taken and nothing is spawned or relaunched (the first step of stopping)."""
        self.shutting_down = True
        self.dispatcher.closed = True

    async def drain(self, grace_s: float) -> bool:
        """Stop taking calls and wait up to `grace_s` for queued and running ones to finish; nothing is respawned from here on."""
        self.begin_shutdown()
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
        self.stopping = self.shutting_down = True
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
        for handle in [*self._handles.values(), *self._optimizer_handles.values()]:
            handle.kill("shutdown")
        await self.zygote.stop(self.settings.stop_timeout_s)
        log.info("pool_stopped", restarts=self.restarts)
