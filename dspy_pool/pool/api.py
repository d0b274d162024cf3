"""The pool's one narrow API: submit a call, get a result; validate a program; status.

    server/ ──CallRequest──> Pool.call ──Job(WorkRequest)──> Dispatcher ──frame──> worker
    server/ <──CallResult─── Pool.call <──WorkReply──────── WorkerHandle <─frame── worker

Everything the server hands the pool and gets back is one of the small value
classes below. Wire messages (`dspy_pool.internal`), Jobs and WorkerHandles
never leave `pool/`; a fallback that answers without a worker (cache, static)
builds a `CallResult` with no worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, NamedTuple

from google.protobuf import struct_pb2

from dspy_pool.errors import ErrorKind, PoolError
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.controller import Controller, RecycleConfig
from dspy_pool.pool.dispatcher import Job
from dspy_pool.pool.handle import WorkerState
from dspy_pool.optimize.task import OptimizeResult, OptimizeTask, Progress
from dspy_pool.pool.metrics import PoolMetrics, PoolSnapshot
from dspy_pool.pool.optimizers import OptimizationRun, OptimizerPool
from dspy_pool.pool.scaler import ScalerConfig
from dspy_pool.pool.supervisor import PoolSettings, WorkerPool
from dspy_pool.pool.warmup import WARMUP_MODES, WarmupProgram, WarmupSettings

__all__ = [
    "LM_ENGINES", "WARMUP_MODES", "CallRequest", "CallResult", "LMChoice", "OptimizationRun", "OptimizeResult", "OptimizeTask", "Pool", "PoolSettings", "PoolView", "ProgramRef", "ProgramShape",
    "RecycleConfig", "ScalerConfig", "ScalingSettings", "Usage", "WarmupProgram", "WarmupSettings", "WorkerRef",
    "WorkerSettings", "WorkerView",
]


@dataclass(frozen=True, slots=True)
class ProgramRef:
    """A program as the pool knows it: a cache key and the spec a worker builds it from."""

    key: str  # unique per content, so a cached build is always the program the key names
    spec: bytes  # serialized dspy_pool.v1.ProgramSpec


@dataclass(frozen=True, slots=True)
class LMChoice:
    """Run on this LM instead of the configured one (the `lm` fallback step; operator allow-listed only)."""

    model: str
    api_base: str = ""


# The four per-call values below are named tuples, not frozen dataclasses: as immutable, and a frozen
# dataclass's __init__ (object.__setattr__ per field) costs three to four times as much, every call.
class CallRequest(NamedTuple):
    program: ProgramRef
    inputs: struct_pb2.Struct
    deadline: float  # event-loop time by which the result must be back
    request_id: str = ""
    history: tuple[dict[str, Any], ...] | None = None  # the session's turns, for programs with a history input
    affinity: int = -1  # preferred worker id (a hint)
    lm: LMChoice | None = None


class Usage(NamedTuple):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class WorkerRef(NamedTuple):
    id: int
    pid: int


class CallResult(NamedTuple):
    outputs: struct_pb2.Struct
    execution_ms: float = 0.0
    usage: Usage = Usage()
    worker: WorkerRef | None = None  # None when no worker answered (a cache or static fallback)


@dataclass(frozen=True, slots=True)
class ProgramShape:
    """What building a program on a worker told us about it."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    takes_history: bool


@dataclass(frozen=True, slots=True)
class WorkerView:
    id: int
    pid: int
    state: str
    in_flight: int
    served: int
    failed: int
    rss_bytes: int
    uptime_s: float


@dataclass(frozen=True, slots=True)
class PoolView:
    """A consistent copy of the pool's counters, for status and health."""

    serving: bool
    target_workers: int
    queue_depth: int
    in_flight: int
    completed: int
    failed: int
    rejected: int
    restarts: int
    warmup_calls: int
    warmup_failures: int
    recycled: int
    scale_events: int
    module_kinds: tuple[str, ...]
    workers: tuple[WorkerView, ...]
    quarantined: tuple[str, ...] = ()
    snapshot: PoolSnapshot | None = None  # the controller's last tick

    @property
    def workers_warming(self) -> int:
        return sum(1 for worker in self.workers if worker.state == WorkerState.WARMING.value)


# --lm-engine: dspy-pool's OpenAI-compatible client, DSPy's two engines, or lean where it fits (pool/lms.py).
LM_ENGINES = ("lean", "lm15", "litellm", "auto")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What every worker is started with: the operator's LM (endpoint, model, key) and its bounds.

    Travels to the zygote over its private control socket only, never argv or the environment.
    """

    lm: str
    lm_api_base: str = ""
    lm_api_key: str = field(default="", repr=False)
    lm_num_retries: int = 0
    lm_cache_entries: int = 0
    lm_timeout_s: float = 0.0
    lm_max_tokens: int = 0
    lm_temperature: float = 0.0
    lm_call_options: tuple[str, ...] = ()
    lm_engine: str = "auto"  # one of LM_ENGINES (pool/lms.py chooses)
    worker_concurrency: int = 64
    program_modules: tuple[str, ...] = ()
    max_frame_bytes: int = 64 * 1024 * 1024

    def to_wire(self) -> wire.ZygoteConfig:
        return wire.ZygoteConfig(
            lm=self.lm, lm_api_base=self.lm_api_base, lm_api_key=self.lm_api_key, lm_num_retries=self.lm_num_retries,
            lm_cache_entries=self.lm_cache_entries, lm_timeout_s=self.lm_timeout_s, lm_max_tokens=self.lm_max_tokens,
            lm_temperature=self.lm_temperature, lm_call_options=list(self.lm_call_options), lm_engine=self.lm_engine,
            worker_concurrency=self.worker_concurrency, program_modules=list(self.program_modules),
            max_frame_bytes=self.max_frame_bytes,
        )


@dataclass(frozen=True, slots=True)
class ScalingSettings:
    """How the controller sizes the pool; `fixed_size` turns autoscaling off."""

    scaler: ScalerConfig
    interval_s: float = 0.5
    fixed_size: int | None = None
    recycle: RecycleConfig = RecycleConfig()


_WorkRequest = wire.WorkRequest


def _with_session_or_lm(request: wire.WorkRequest, call: CallRequest) -> None:
    """What a call in a session or on a fallback LM adds to its work request (Pool.call builds the rest inline)."""
    if call.history is not None:
        request.has_history = True
        request.history.extend(call.history)
    if call.lm is not None:
        request.lm_model, request.lm_api_base = call.lm.model, call.lm.api_base


_new_tuple = tuple.__new__  # a named tuple's own __new__ is a Python function; the pool builds these per call


def _result(reply: wire.WorkReply, handle: Any) -> CallResult:
    worker = handle.worker_ref
    if worker is None or worker.pid != handle.pid:  # one per worker, not per call
        worker = handle.worker_ref = WorkerRef(handle.worker_id, handle.pid)
    usage = _new_tuple(Usage, (reply.prompt_tokens, reply.completion_tokens, reply.total_tokens))
    return _new_tuple(CallResult, (reply.outputs, reply.execution_ms, usage, worker))


class Pool:
    """Workers behind a bounded queue, sized by the controller: the only pool object the server holds."""

    def __init__(
        self,
        settings: PoolSettings,
        workers: WorkerSettings,
        scaling: ScalingSettings,
        metrics: PoolMetrics,
        *,
        warmup_source: Callable[[], list[WarmupProgram]] | None = None,
        on_health_change: Callable[[bool], None] | None = None,
        observers: Iterable[Callable[[PoolSnapshot], None]] = (),
        optimizer_workers: int = 0,
    ) -> None:
        self.metrics = metrics
        self._workers = WorkerPool(
            settings, workers.to_wire(), on_health_change,
            warmup_source=warmup_source, metrics=metrics, on_backlog=self._on_backlog,
        )
        self._optimizers = OptimizerPool(self._workers.spawn_optimizer, optimizer_workers)
        self._controller = Controller(
            self._workers, metrics, scaling.scaler, scaling.interval_s,
            fixed_size=scaling.fixed_size, recycle=scaling.recycle, observers=tuple(observers),
        )

    # -- lifecycle ------------------------------------------------------------
    async def launch(self) -> None:
        """Exec the zygote; it imports dspy while the caller sets up the rest. Call before any gRPC object exists."""
        await self._workers.launch_zygote()

    async def start(self) -> None:
        """Start the workers (return once the minimum serve), then the controller."""
        await self._workers.start_workers()
        self._controller.start()
        self._optimizers.start()  # in the background: serving never waits for optimizer workers

    async def drain(self, grace_s: float) -> bool:
        """Take no new calls; wait up to `grace_s` for queued and running ones. True when all finished."""
        self._workers.begin_shutdown()  # before anything awaits: no call taken, no worker respawned from here on
        await self._controller.stop()
        return await self._workers.drain(grace_s)

    def abandon(self, error: PoolError) -> int:
        """Fail what is still queued or running with `error` (the drain grace ran out); returns how many."""
        dispatcher = self._workers.dispatcher
        return dispatcher.fail_queued(error) + dispatcher.fail_running(error)

    async def stop(self) -> None:
        self._optimizers.stop()
        await self._controller.stop()
        await self._workers.stop()

    def _on_backlog(self) -> None:
        self._controller.wake()

    # -- calls ----------------------------------------------------------------
    def call(self, call: CallRequest) -> Awaitable[CallResult]:
        """Run one call within its deadline; raises PoolError (errors.py says what each kind means).

        Returns the dispatcher's own coroutine (it applies _result): no coroutine of ours around it, one frame
        less on every suspend and resume of every call.
        """
        program = call.program
        request = _WorkRequest(program_key=program.key, request_id=call.request_id)
        request.inputs.CopyFrom(call.inputs)
        if call.history is not None or call.lm is not None:
            _with_session_or_lm(request, call)
        return self._workers.dispatcher.run(Job(program.key, program.spec, request, call.deadline, call.affinity), _result)

    async def validate(self, program: ProgramRef, deadline: float) -> ProgramShape:
        """Build `program` on a worker and run nothing: DSPy itself says whether the spec is valid."""
        request = wire.WorkRequest(program_key=program.key, validate_only=True)
        reply, _ = await self._workers.dispatcher.run(Job(program.key, program.spec, request, deadline, counted=False))
        return ProgramShape(tuple(reply.input_names), tuple(reply.output_names), reply.takes_history)

    def forget_programs(self, keys: list[str]) -> None:
        """Deleted programs: no worker is taken to hold them any more (each worker's own cache of built programs is
        least-recently-used, so it lets them go by itself; a key noted here for every program a worker ever built grew
        with every program registered)."""
        for handle in self._workers.handles():
            handle.loaded_programs.difference_update(keys)

    @property
    def worker_pool(self) -> WorkerPool:
        """The supervisor behind this API, for tests and benchmarks that look inside; the server never does."""
        return self._workers

    # -- optimization -----------------------------------------------------------
    def optimization(self, on_progress: Callable[[Progress], None]) -> OptimizationRun:
        """A handle for one optimization job: pass it to `optimize`, call `cancel()` on it any time."""
        return OptimizationRun(on_progress)

    async def optimize(self, task: OptimizeTask, run: OptimizationRun) -> OptimizeResult:
        """Run `task` on an optimizer worker (waiting for an idle one); PoolError on failure, Cancelled kind on cancel."""
        if self._optimizers.count == 0:
            raise PoolError("no optimizer workers (--optimizer-workers 0)", kind=ErrorKind.FAILED_PRECONDITION)
        return await self._optimizers.run(task, run._on_progress, run)

    # -- status ---------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self._workers.healthy

    @property
    def ready(self) -> bool:
        """True once the zygote has said which module kinds exist (workers can be asked to build)."""
        return bool(self._workers.module_kinds)

    @property
    def metric_kinds(self) -> list[str]:
        """Metric kinds the operator's --programs modules registered (beside the built-in ones)."""
        return list(self._workers.metric_kinds)

    @property
    def module_kinds(self) -> list[str]:
        return self._workers.module_kinds

    def scale_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(scale events by direction, recycled workers by reason), for Prometheus."""
        return dict(self._controller.scale_events), dict(self._controller.recycled_by_reason)

    def view(self) -> PoolView:
        monotonic = time.monotonic()  # the clock handles keep their start times on
        workers, dispatcher, controller = self._workers, self._workers.dispatcher, self._controller
        quarantined = getattr(workers, "quarantined", ())
        return PoolView(
            serving=workers.healthy, target_workers=workers.target_workers, queue_depth=dispatcher.queue_depth,
            in_flight=dispatcher.in_flight, completed=dispatcher.completed, failed=dispatcher.failed,
            rejected=dispatcher.rejected, restarts=workers.restarts, warmup_calls=workers.warmup_calls,
            warmup_failures=workers.warmup_failures, recycled=controller.recycled,
            scale_events=controller.scale_ups + controller.scale_downs, module_kinds=tuple(workers.module_kinds),
            workers=tuple(
                WorkerView(h.worker_id, h.pid, h.state.value, len(h.in_flight), h.served, h.failed, h.rss_bytes, h.uptime_s(monotonic))
                for h in workers.handles()
            ),
            quarantined=tuple(sorted(quarantined() if callable(quarantined) else quarantined)),
            snapshot=controller.last_snapshot,
        )
