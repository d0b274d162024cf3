"""Optimizer workers: processes forked from the same zygote that run optimization jobs, one at a time each.

    Pool.optimize(task) ──> an idle optimizer worker ──OPTIMIZE──> runner.run (a thread, niced)
         OptimizationRun <──PROGRESS──  on_progress(Progress)
         result()        <──OPTIMIZED / ERROR── OptimizeResult, or PoolError

They are never routed serving calls and do not count in the pool's size. A
worker that dies fails only its own job (WORKER_CRASHED, "optimizer worker
died") and is replaced; serving is not affected. Cancel sends CANCEL: the job
stops at its next LM call.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import structlog

from dspy_pool import errors, structs
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.optimize.task import OptimizeResult, OptimizeTask, Progress
from dspy_pool.pool.handle import WorkerHandle, WorkerState

log = structlog.get_logger("dspy_pool.optimizers")

_RESPAWN_DELAY_S = (0.2, 0.5, 1.0, 2.0, 5.0)


def task_to_wire(task: OptimizeTask) -> wire.OptimizeWork:
    work = wire.OptimizeWork(
        spec=task.spec, optimizer=task.optimizer, metric_kind=task.metric.kind, metric_fields=list(task.metric.fields),
        max_lm_calls=task.budget.max_lm_calls, max_seconds=task.budget.max_seconds, seed=task.seed,
        num_threads=task.num_threads, allowed_lms=list(task.allowed_lms),
    )
    for examples, target in ((task.train, work.train), (task.dev, work.dev)):
        for example in examples:
            item = target.add()
            structs.dict_to_struct(dict(example.inputs), item.inputs)
            structs.dict_to_struct(dict(example.outputs), item.outputs)
    structs.dict_to_struct(dict(task.options), work.options)
    structs.dict_to_struct(dict(task.metric.options), work.metric_options)
    return work


def _progress(message: wire.OptimizeProgress) -> Progress:
    return Progress(message.phase, message.trials_done, message.trials_planned,
                    message.best_score if message.has_best_score else None, message.lm_calls, message.elapsed_s)


def _result(reply: wire.OptimizeReply) -> OptimizeResult:
    return OptimizeResult(reply.state_json, reply.baseline_score, reply.optimized_score, reply.dev_examples,
                          reply.lm_calls, reply.budget_limited, reply.elapsed_s)


class OptimizationRun:
    """One job on one optimizer worker: its progress callback, its result, its cancel."""

    counted = True  # served by its optimizer worker

    def __init__(self, on_progress: Callable[[Progress], None]) -> None:
        self._on_progress = on_progress
        self._future: asyncio.Future[OptimizeResult] = asyncio.get_running_loop().create_future()
        self._handle: WorkerHandle | None = None
        self._request_id = 0
        self._cancelled = False

    # -- what the handle calls --------------------------------------------------
    def progress(self, message: wire.OptimizeProgress) -> None:
        self._on_progress(_progress(message))

    def complete(self, handle, reply, error: errors.PoolError | None) -> None:
        if self._future.done():
            return
        if error is not None:
            if error.kind in (errors.ErrorKind.WORKER_CRASHED, errors.ErrorKind.WORKER_HUNG):
                error = errors.PoolError(f"the optimizer worker died while running this job ({error.message})", kind=error.kind,
                                         metadata=error.metadata)
            self._future.set_exception(error)
        else:
            self._future.set_result(_result(reply))

    # -- what the job manager calls -----------------------------------------------
    async def result(self) -> OptimizeResult:
        return await self._future

    def cancel(self) -> None:
        """Ask the worker to stop the job at its next LM call (it then fails with CANCELLED)."""
        self._cancelled = True
        if self._handle is not None and self._handle.state is not WorkerState.STOPPED:
            self._handle.cancel(self._request_id)

    def _start(self, handle: WorkerHandle, task: OptimizeTask) -> None:
        self._handle = handle
        self._request_id = handle.send_optimize(self, task_to_wire(task))
        if self._cancelled:
            handle.cancel(self._request_id)


class OptimizerPool:
    """`count` optimizer workers kept alive; `run` takes an idle one for the length of a job."""

    def __init__(self, spawn: Callable, count: int) -> None:
        self._spawn = spawn  # WorkerPool.spawn_optimizer
        self.count = count
        self._idle: asyncio.Queue[WorkerHandle] = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()
        self._stopped = False
        self.restarts = 0

    def start(self) -> None:
        for _ in range(self.count):
            self._replace(first=True)

    def _replace(self, first: bool = False) -> None:
        if self._stopped:
            return
        if not first:
            self.restarts += 1
        task = asyncio.get_running_loop().create_task(self._keep_one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep_one(self) -> None:
        for attempt in range(10_000):
            if self._stopped:
                return
            handle = await self._spawn(self._on_dead)
            if handle is not None:
                await self._idle.put(handle)
                return
            await asyncio.sleep(_RESPAWN_DELAY_S[min(attempt, len(_RESPAWN_DELAY_S) - 1)])

    def _on_dead(self, handle: WorkerHandle, reason: str) -> None:
        if not self._stopped:
            log.warning("optimizer_worker_stopped", worker_id=handle.worker_id, pid=handle.pid, reason=reason)
            self._replace()

    async def run(self, task: OptimizeTask, on_progress: Callable[[Progress], None], run: OptimizationRun | None = None) -> OptimizeResult:
        """Run `task` on the next idle optimizer worker; the worker is idle again after (if it lived)."""
        run = run or OptimizationRun(on_progress)
        while True:
            handle = await self._idle.get()
            if handle.state is WorkerState.READY:
                break  # a dead one in the queue is skipped: its replacement is on the way
        try:
            if run._cancelled:
                raise errors.Cancelled("the optimization was cancelled before it started")
            run._start(handle, task)
            return await run.result()
        finally:
            if handle.state is WorkerState.READY and not self._stopped:
                self._idle.put_nowait(handle)

    def idle_workers(self) -> int:
        return self._idle.qsize()

    def stop(self) -> None:
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
