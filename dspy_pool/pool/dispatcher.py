"""The dispatcher: a bounded queue in front of the workers, with deadlines.

    submit(job) --> a ready worker with a free slot? --yes--> handle.send_request
                        | no                                        |
                        v                                           v
                  queue (bounded; full -> QueueFull)     reply/error -> job.complete
                        ^                                           |
                        +------------- slot freed: pump() ----------+

A job's deadline covers queue wait plus execution. Expired or cancelled jobs
in the queue are skipped lazily when popped. Deadlines live in one heap with
one loop timer armed for the earliest (not a timer per call: arming and
cancelling a loop timer per call costs more than the rest of dispatching);
finished jobs leave the heap lazily, and it is compacted before they
outweigh the live ones. A job that reached a worker is
never run twice: if its worker dies, it fails with WorkerCrashed. Jobs still
queued are untouched by a crash. Session affinity is a hint: the preferred
worker is used when it has a free slot, otherwise the least loaded one.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import heapq
import itertools
import time
from typing import Any, Callable, Iterable

from dspy_pool import errors, logs
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.handle import WorkerHandle, WorkerState


class JobState(enum.Enum):
    QUEUED = 1
    RUNNING = 2
    DONE = 3


# Module constants: an enum member read off its class costs a lookup (~60 ns), and these are read several times a call.
_QUEUED, _RUNNING, _DONE = JobState.QUEUED, JobState.RUNNING, JobState.DONE
_READY = WorkerState.READY


class Job:
    """One call on its way through the pool."""

    __slots__ = (
        "program_key", "spec", "request", "deadline", "affinity", "future", "state",
        "enqueued_at", "started_at", "handle", "request_id", "_dispatcher", "resent", "counted",
    )

    def __init__(self, program_key: str, spec: bytes, request: wire.WorkRequest, deadline: float, affinity: int = -1,
                 counted: bool = True) -> None:
        self.program_key = program_key
        self.counted = counted  # a call, in the counts and metrics; False: the pool's own work (a program's validation build)
        self.spec = spec
        self.request = request
        self.deadline = deadline
        self.affinity = affinity
        self.future: asyncio.Future[tuple[wire.WorkReply, WorkerHandle]] | None = None  # made by Dispatcher.run
        self.state = _QUEUED
        self.enqueued_at = time.monotonic()
        self.started_at = 0.0
        self.handle: WorkerHandle | None = None
        self.request_id = 0
        self._dispatcher: Dispatcher | None = None
        self.resent = False

    def complete(self, handle: WorkerHandle, reply: wire.WorkReply | None, error: errors.PoolError | None) -> None:
        """Called by the handle with the worker's answer, or a crash."""
        if self.state is _DONE:
            return  # the caller already gave up (deadline, cancel); the slot is free now
        if error is not None and error.kind is errors.ErrorKind.PROGRAM_NOT_LOADED and not self.resent and self._dispatcher:
            # The worker evicted the program; nothing ran. Send it again with the spec.
            handle.loaded_programs.discard(self.program_key)
            self.resent = True
            self.state = _QUEUED
            self._dispatcher._requeue_front(self)
            return
        self._finish((reply, handle) if reply is not None else None, error)

    def _finish(self, reply=None, error: BaseException | None = None) -> None:
        self.state = _DONE
        if self.future is not None and not self.future.done():
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(reply)


class Dispatcher:
    def __init__(self, max_queue: int, worker_concurrency: int, *, metrics: Any = None, on_backlog: Callable[[], None] | None = None) -> None:
        self.max_queue = max_queue
        self.worker_concurrency = worker_concurrency
        self.workers: dict[int, WorkerHandle] = {}
        self._queue: collections.deque[Job] = collections.deque()
        self._queued = 0
        self.closed = False
        self.completed = 0
        self.failed = 0
        self.rejected = 0
        self.expired_in_queue = 0
        self.metrics = metrics  # PoolMetrics; fed here because every call passes here
        # Called when a call queues behind busy workers with the queue empty
        # before: the controller wakes now instead of at its next tick.
        self.on_backlog = on_backlog
        # Set by the pool: the error a call fails with at once because it cannot run
        # (no worker can exist while the zygote is down, a quarantined program), or None.
        self.refuse: Callable[[str], errors.PoolError | None] | None = None
        self._activity = asyncio.Event()  # set whenever a call finishes, a slot frees or a worker leaves...
        self._idle_waiters = 0  # ...while wait_idle waits on it (nobody else does; setting it costs every call)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop run() last ran on (one per pool)
        # (deadline, tie-breaker, job) for every job run() waits on, finished ones included until popped or compacted.
        self._deadlines: list[tuple[float, int, Job]] = []
        self._timed = 0  # jobs run() still waits on: the live entries of _deadlines
        self._sequence = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when _timer fires

    # -- workers ------------------------------------------------------------
    def add_worker(self, handle: WorkerHandle) -> None:
        self.workers[handle.worker_id] = handle
        self.pump()

    def remove_worker(self, handle: WorkerHandle) -> None:
        self.workers.pop(handle.worker_id, None)
        self._activity.set()

    def ready_workers(self) -> list[WorkerHandle]:
        return [h for h in self.workers.values() if h.state is _READY]

    # -- calls --------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self._queued

    @property
    def in_flight(self) -> int:
        return sum(len(h.in_flight) for h in self.workers.values())

    def oldest_queued(self) -> Job | None:
        for job in self._queue:
            if job.state is _QUEUED:
                return job
        return None

    async def run(self, job: Job, convert: Callable[[wire.WorkReply, WorkerHandle], Any] | None = None) -> Any:
        """Queue or start `job` and wait for its result within its deadline: (reply, handle), or convert(reply, handle)."""
        if self.closed:
            raise errors.Unavailable("the server is draining and takes no new calls")
        refuse = self.refuse
        if refuse is not None:
            refusal = refuse(job.program_key)
            if refusal is not None:
                raise refusal
        job._dispatcher = self
        loop = self._loop
        if loop is None or not loop.is_running():  # asking for the running loop costs a getpid syscall on 3.11
            loop = self._on_loop(asyncio.get_running_loop())
        deadline = job.deadline
        if deadline <= loop.time():
            raise errors.DeadlineExceeded("deadline passed before the call was queued", metadata={"phase": errors.PHASE_QUEUED})
        future = job.future = loop.create_future()
        handle = self._pick(job.affinity) if not self._queued else None
        if handle is not None:
            self._start(job, handle)
        elif self._queued >= self.max_queue:
            self.rejected += 1
            raise errors.QueueFull(
                f"queue is full ({self.max_queue} calls waiting); retry later",
                metadata={"retry_after_ms": "100", "queue_depth": str(self._queued)},
            )
        else:
            self._queue.append(job)
            self._queued += 1
            if self._queued == 1 and self.on_backlog is not None:
                self.on_backlog()
        # _watch, inline (every call): one heap entry, the timer re-armed only if this is now the earliest deadline
        heapq.heappush(self._deadlines, (deadline, next(self._sequence), job))
        self._timed += 1
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline, loop)
        try:
            result = await future
        except asyncio.CancelledError:
            self._abandon(job, errors.Cancelled("the caller cancelled"))
            raise
        except errors.PoolError as error:
            if job.counted:
                self.failed += 1
                if self.metrics is not None:
                    self.metrics.job_finished(job, time.monotonic(), error)
            raise
        finally:
            if self._idle_waiters:
                self._activity.set()
            self._unwatch()
        if not job.counted:
            return result if convert is None else convert(result[0], result[1])
        self.completed += 1
        if self.metrics is not None:
            now = time.monotonic()
            self.metrics.record_done(now, now - job.started_at)
        return result if convert is None else convert(result[0], result[1])

    async def wait_idle(self) -> None:
        """Return once nothing is queued and no worker runs a call (abandoned ones included)."""
        self._idle_waiters += 1
        try:
            while self._queued or self.in_flight:
                self._activity.clear()
                await self._activity.wait()
        finally:
            self._idle_waiters -= 1

    def _on_loop(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        """Run on `loop` from now on; a previous loop's deadline timer and entries go (their calls cannot be awaited)."""
        if loop is not self._loop:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._deadlines, self._timed = [], 0
            self._loop = loop
        return loop

    def _arm(self, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        """The deadline timer, for `deadline` (now the earliest of the jobs run() waits on)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        # The timer serves every job, not the call that armed it: its expiries must not log as that call.
        self._timer = loop.call_at(deadline, self._on_deadline, context=logs.without_call())

    def _unwatch(self) -> None:
        """A job run() waited on is done: its heap entry stays until a compaction (or the timer) drops it.

        Compacting once finished entries outnumber the live ones (plus a little) costs each call a fraction
        of popping its own entry, and bounds how long a finished job (its future, request and reply) is held:
        for about as many calls as are in flight, so it does not outlive young-generation collections.
        """
        timed = self._timed - 1
        self._timed = timed if timed > 0 else 0
        if len(self._deadlines) > 2 * timed + 64:
            self._deadlines = [entry for entry in self._deadlines if entry[2].state is not _DONE]
            heapq.heapify(self._deadlines)

    def _on_deadline(self) -> None:
        """The earliest deadline came: expire every job past its deadline, then arm for the next live one."""
        self._timer = None
        loop = self._loop
        heap = self._deadlines
        # As asyncio's own timers: a deadline within the clock's resolution of now is due (the timer may fire a hair early).
        now = loop.time() + 0.001
        try:
            while heap:
                deadline, _, job = heap[0]
                if job.state is _DONE:
                    heapq.heappop(heap)
                elif deadline <= now:
                    heapq.heappop(heap)
                    self._expire(job)
                else:
                    break
        finally:  # even if one expiry raised, the others still get their timer
            heap = self._deadlines
            if heap and self._timer is None:
                self._timer_at = heap[0][0]
                self._timer = loop.call_at(self._timer_at, self._on_deadline)

    def _expire(self, job: Job) -> None:
        queued = job.state is _QUEUED
        if queued:
            self.expired_in_queue += 1
        where = "in the queue" if queued else "while running"
        self._abandon(job, errors.DeadlineExceeded(f"deadline exceeded {where}", metadata={"phase": errors.PHASE_QUEUED if queued else "running"}))

    def _abandon(self, job: Job, error: errors.PoolError) -> None:
        if job.state is _QUEUED:
            self._queued -= 1
        elif job.state is _RUNNING and job.handle is not None:
            job.handle.cancel(job.request_id)  # the slot frees when the worker confirms
        job._finish(error=error)
        self._compact()

    def _compact(self) -> None:
        # Abandoned jobs leave tombstones; drop them before they outweigh live ones.
        if len(self._queue) > 2 * self._queued + 1024:
            self._queue = collections.deque(j for j in self._queue if j.state is _QUEUED)

    def _pick(self, affinity: int) -> WorkerHandle | None:
        limit = self.worker_concurrency
        # An unresponsive worker (a missed ping: stopped, or its loop blocked) gets nothing new.
        if affinity >= 0:  # a session's worker, if it can take the call (calls outside sessions have none: -1)
            preferred = self.workers.get(affinity)
            if preferred is not None and preferred.state is _READY and preferred.responsive and len(preferred.in_flight) < limit:
                return preferred
        best: WorkerHandle | None = None
        best_load = limit
        for handle in self.workers.values():
            load = len(handle.in_flight)
            if load < best_load and handle.state is _READY and handle.responsive:
                best, best_load = handle, load
        return best

    def _start(self, job: Job, handle: WorkerHandle) -> None:
        request = job.request
        with_spec = job.program_key not in handle.loaded_programs
        if with_spec:
            request = wire.WorkRequest()
            request.CopyFrom(job.request)
            request.spec = job.spec
        request.timeout_s = max(0.001, job.deadline - self._loop.time())
        try:
            job.request_id = handle.send_request(job, request)
        except errors.InvalidArgument as too_large:  # nothing was sent: the slot stays free
            job._finish(error=too_large)
            return
        if with_spec:
            handle.loaded_programs.add(job.program_key)
        job.state = _RUNNING
        job.handle = handle
        job.started_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.record_queue_wait(job.started_at, job.started_at - job.enqueued_at)

    def _requeue_front(self, job: Job) -> None:
        self._queue.appendleft(job)
        self._queued += 1
        self.pump()

    def pump(self, _handle: WorkerHandle | None = None) -> None:
        """Start queued jobs while some worker has a free slot."""
        if self._idle_waiters:
            self._activity.set()
        queue = self._queue
        while self._queued:
            job = queue[0]
            if job.state is not _QUEUED:
                queue.popleft()
                continue
            handle = self._pick(job.affinity)
            if handle is None:
                return
            queue.popleft()
            self._queued -= 1
            self._start(job, handle)

    def fail_running(self, error: errors.PoolError) -> int:
        """Fail every call a worker is running with `error` and ask the worker to cancel it (shutdown past its grace)."""
        running = [call for handle in self.workers.values() for call in handle.in_flight.values() if isinstance(call, Job)]
        for job in running:
            self._abandon(job, error)
        return len(running)

    def fail_queued(self, error: errors.PoolError, program_key: str | None = None) -> int:
        """Fail every queued job, or only those of `program_key` (shutdown, no worker can exist, a quarantine)."""
        jobs: Iterable[Job] = [j for j in self._queue if j.state is _QUEUED and program_key in (None, j.program_key)]
        if program_key is None:
            self._queue.clear()
            self._queued = 0
        else:
            self._queued -= len(jobs)  # type: ignore[arg-type]  # their tombstones are skipped when popped
        for job in jobs:
            job._finish(error=error)
        return len(jobs)  # type: ignore[arg-type]
