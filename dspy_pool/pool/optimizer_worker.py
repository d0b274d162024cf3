"""The child side of an optimization job: an OPTIMIZE frame in, PROGRESS frames and one OPTIMIZED frame out.

    front --OPTIMIZE(OptimizeWork)--> Worker.start_optimize -> a thread: optimize.runner.run(task)
    front <--PROGRESS(OptimizeProgress)-- on_progress (handed to the loop: the thread never writes the socket)
    front <--OPTIMIZED(OptimizeReply) | ERROR(WorkError)-----------------+
    front --CANCEL--> the job's cancel flag: runner.run polls it before every LM call

Only optimizer workers (spawned with role "optimizer", niced) get OPTIMIZE
frames; the job runs on a thread of its own so the worker's loop keeps
answering pings and the cancel.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

from dspy_pool import structs
from dspy_pool.errors import ErrorKind, PoolError
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.optimize.task import Budget, Cancelled, Example, MetricSpec, OptimizeResult, OptimizeTask, Progress
from dspy_pool.pool.protocol import FrameType

ROLE = "optimizer"
NICE_INCREMENT = 10  # serving keeps the CPU first: optimization is background work


def task_from_wire(work: wire.OptimizeWork) -> OptimizeTask:
    def examples(items) -> tuple[Example, ...]:
        return tuple(Example(structs.struct_to_dict(item.inputs), structs.struct_to_dict(item.outputs)) for item in items)

    return OptimizeTask(
        spec=work.spec, train=examples(work.train), dev=examples(work.dev), optimizer=work.optimizer,
        options=structs.struct_to_dict(work.options),
        metric=MetricSpec(work.metric_kind, tuple(work.metric_fields), structs.struct_to_dict(work.metric_options)),
        budget=Budget(work.max_lm_calls, work.max_seconds), seed=work.seed, num_threads=work.num_threads or 4,
        allowed_lms=tuple(work.allowed_lms),
    )


def lm_resolver(worker: Any, allowed_lms: tuple[str, ...]):
    """model name -> the LM to call for it: only the operator's allow-listed models (or the serving LM itself)."""
    endpoints = {entry.partition("@")[0]: entry.partition("@")[2] for entry in allowed_lms}

    def lm_for(model: str):
        own = worker.lm is not None and getattr(worker.lm, "model", None) == model
        if own and not endpoints.get(model):
            return worker.lm  # the serving LM itself, at its own endpoint (not the provider's default one)
        if model in endpoints:
            return worker.extra_lms.get(model, endpoints[model])
        if own:
            return worker.lm
        raise PoolError(f"LM {model!r} is not on the operator's allow-list (--optimizer-lms)", kind=ErrorKind.INVALID_ARGUMENT)

    return lm_for


def progress_to_wire(progress: Progress) -> wire.OptimizeProgress:
    return wire.OptimizeProgress(
        phase=progress.phase, trials_done=progress.trials_done, trials_planned=progress.trials_planned,
        best_score=progress.best_score or 0.0, has_best_score=progress.best_score is not None,
        lm_calls=progress.lm_calls, elapsed_s=progress.elapsed_s,
    )


def reply_to_wire(result: OptimizeResult) -> wire.OptimizeReply:
    return wire.OptimizeReply(
        state_json=result.state_json, baseline_score=result.baseline_score, optimized_score=result.optimized_score,
        dev_examples=result.dev_examples, lm_calls=result.lm_calls, budget_limited=result.budget_limited,
        elapsed_s=result.elapsed_s,
    )


async def run_job(worker: Any, request_id: int, payload: bytes, cancel: threading.Event) -> None:
    """Run one job on a thread; send its progress and its result (or error) on the worker's channel."""
    loop = asyncio.get_running_loop()

    def on_progress(progress: Progress) -> None:
        message = progress_to_wire(progress).SerializeToString()
        loop.call_soon_threadsafe(worker.send, FrameType.PROGRESS, request_id, message)

    try:
        task = task_from_wire(wire.OptimizeWork.FromString(payload))
        from dspy_pool.optimize import runner  # imports DSPy's optimizers: only optimizer workers pay for it

        call = functools.partial(runner.run, task, on_progress, cancel.is_set, lm_for=lm_resolver(worker, task.allowed_lms),
                                 rules=worker.rules)
        result = await loop.run_in_executor(None, call)
        worker.send(FrameType.OPTIMIZED, request_id, reply_to_wire(result).SerializeToString())
    except Cancelled:
        worker.send_error(request_id, PoolError("the optimization was cancelled", kind=ErrorKind.CANCELLED))
    except Exception as exc:  # every failure travels back as kind, type, message and traceback
        worker.send_error(request_id, exc)
