"""Optimization jobs in the front: validated, deduplicated, queued by priority, run on optimizer workers.

    StartOptimization ──> check (catalog, program, dataset) ──> dedup key ──> an identical job? return it
                     ──> JobRecord(queued) in the state store ──> the priority queue (bounded)
    runner loop (one per optimizer worker): claim the job's lease ──> running ──> Pool.optimize(task)
                     progress ──> the record (throttled) and watchers
                     result   ──> a new program version (saved state + ProgramMeta) ──> auto promotion? ──> succeeded
                     error    ──> failed (the reason); cancel ──> cancelled; budget ──> succeeded, budget_limited
    start-up: jobs left running by a previous process are marked interrupted; queued ones are queued again.

A finished job (succeeded, failed, cancelled, interrupted) is final: the store keeps it as it is (put_job),
so a runner that outlived its lease (a stalled store, a front whose jobs were swept) cannot revive it; what it
produced stays a registered version, and the job says to start it again.

Every state change is committed to the store before the RPC that caused it
answers; watchers get each change as it is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import heapq
import itertools
import json
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import structlog
from google.protobuf import json_format

from dspy_pool import errors, structs
from dspy_pool.optimize import catalog, triggers
from dspy_pool.optimize.promotion import Outcome, should_promote
from dspy_pool.optimize.task import Budget, Example, MetricSpec, OptimizeResult, OptimizeTask, Progress
from dspy_pool.optimize.triggers import Observation, TriggerConfig, TriggerState, decide
from dspy_pool.state import ExampleRecord, JobRecord, StateStore, StateUnavailable
from dspy_pool.v1 import dspy_pool_pb2 as pb

log = structlog.get_logger("dspy_pool.optimize")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = "queued", "running", "succeeded", "failed", "cancelled", "interrupted"
_PENDING_POLL_S = 0.5  # a call waiting for a job another front or replica runs looks at the store this often
_ADOPT_EVERY_S = 5.0  # a shared store's queued jobs are looked for this often (they may be a dead replica's)
FINISHED = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
_WATCH_POLL_S = 1.0  # a watcher with no local news re-reads the store this often
_PROGRESS_WRITE_S = 0.5  # progress reaches watchers at once, the store at most this often
_PRUNE_EVERY = 100  # new jobs between two prunes of the finished ones
_OVERTIME_GRACE_S = 10.0  # past budget.max_seconds (or a tenth of it, if longer): the job's last calls may end
_CANCEL_POLL_S = 1.0  # a running job asks the store this often whether another process asked to cancel it


@dataclass(frozen=True, slots=True)
class Cancelled:
    """What CancelOptimization answers, and whether the job runs elsewhere (its owner must be asked)."""

    job: pb.OptimizationJob
    elsewhere: bool


@dataclass(frozen=True, slots=True)
class JobSettings:
    max_queue: int = 100
    lease_s: float = 30.0
    owner: str = ""  # this replica's id (leases)
    # Shared by this process and the ones it replaces (front i of one group): a RUNNING job another owner with this
    # prefix holds was left by a predecessor, dead with its optimizer worker, and is interrupted at start-up.
    owner_prefix: str = ""
    allowed_lms: tuple[str, ...] = ()  # models a judge or reflection LM may name
    num_threads: int = 4
    lm: str = ""  # the serving LM, recorded in each optimized version's provenance
    trigger_tick_s: float = 5.0  # how often automatic optimization checks its thresholds
    jobs_kept: int = 10_000  # finished jobs the store keeps (the newest); older ones are pruned


def dedup_key(base_key: str, dataset_hash: str, request: pb.StartOptimizationRequest) -> str:
    """Equal for identical jobs: same program content, dataset content, optimizer, options, metric, budget, seed."""
    canonical = json.dumps({
        "program": base_key, "dataset": dataset_hash, "optimizer": request.optimizer,
        "options": structs.struct_to_dict(request.options), "metric": json_format.MessageToDict(request.metric),
        "budget": json_format.MessageToDict(request.budget), "seed": request.seed,
    }, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def reusable(record: JobRecord, now: float) -> bool:
    """An identical job worth handing out instead of a new one: done, waiting, or running under a live lease
    (a lease that ran out is a runner that died: the sweep marks it interrupted soon)."""
    if record.state == RUNNING:
        return record.lease_expires_at >= now
    return record.state in (QUEUED, SUCCEEDED)


def to_message(record: JobRecord, reused: bool = False) -> pb.OptimizationJob:
    job = pb.OptimizationJob(job_id=record.job_id, state=record.state, error=record.error, reused=reused)
    if record.request:
        job.request.ParseFromString(record.request)
    if record.progress:
        job.progress.ParseFromString(record.progress)
    if record.result:
        job.result.ParseFromString(record.result)
    job.base_version = job.request.base_version  # stored resolved: 0 ("the latest a client registered") became a number
    job.created_at.FromNanoseconds(int(record.created_at * 1e9))
    job.updated_at.FromNanoseconds(int(record.updated_at * 1e9))
    return job


def _examples(records: list[ExampleRecord]) -> tuple[Example, ...]:
    return tuple(Example(json.loads(r.inputs_json), json.loads(r.outputs_json)) for r in records)


class _Latest:
    """The newest change of a job for one watcher: a slow reader skips the ones between (a queue of every change grew
    without bound behind it); the job's final state, being the last, is never skipped."""

    def __init__(self, closed: bool = False) -> None:
        self._record: JobRecord | None = None
        self._changed = asyncio.Event()
        self._closed = closed
        if closed:
            self._changed.set()

    def put(self, record: JobRecord) -> None:
        self._record = record
        self._changed.set()

    def close(self) -> None:
        """The server is stopping: get() answers None once the newest change is read."""
        self._closed = True
        self._changed.set()

    async def get(self) -> JobRecord | None:
        await self._changed.wait()
        record, self._record = self._record, None
        if not self._closed:
            self._changed.clear()
        return record


class JobManager:
    def __init__(self, store: StateStore, registry, pool, settings: JobSettings,
                 register_version: Callable[[pb.ProgramSpec, pb.ProgramMeta], Awaitable[pb.Program]],
                 observe: Callable[[str], Observation] | None = None) -> None:
        self.store = store
        self.registry = registry
        self.pool = pool
        self.settings = settings
        self._register_version = register_version
        self._observe = observe  # what the triggers see of a program (the service's statistics)
        self._triggers: dict[str, TriggerState] = {}
        self._started_since_prune = 0
        self._queue: list[tuple[int, int, str]] = []  # (-priority, order, job_id)
        self._order = itertools.count()
        self._wakeup = asyncio.Event()
        self._runs: dict[str, object] = {}  # job id -> its OptimizationRun, while running
        self._watchers: dict[str, list[_Latest]] = {}
        self._stopped = False  # watches end (cleanly, at the job's last state) once the server stops
        self._active: dict[str, int] = {}  # program -> its jobs queued or running here
        self._finished: dict[str, asyncio.Event] = {}  # program -> set when one of its jobs finishes
        self._tasks: list[asyncio.Task] = []

    # -- life ----------------------------------------------------------------------
    async def start(self, runners: int) -> None:
        """Mark jobs a previous process left running as interrupted, queue the queued ones, start `runners` loops."""
        # A store only this process writes (SQLite, held exclusively; memory): whatever is "running" was left by a
        # dead process. A shared one (Redis, a front group's file): jobs whose lease ran out and jobs this front's
        # predecessor ran (owner_prefix); the sweep catches the rest as their leases expire.
        await self._interrupt_abandoned(everything=not self.store.shared)
        for record in reversed(await self.store.list_jobs(states=(QUEUED,), limit=10_000)):
            self._enqueue(record)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run_forever()) for _ in range(max(0, runners))]
        if self.store.shared:
            self._tasks += [loop.create_task(self._sweep_abandoned()), loop.create_task(self._adopt_forever())]
        if self._observe is not None:
            self._tasks.append(loop.create_task(self._watch_triggers()))

    async def _interrupt_abandoned(self, everything: bool) -> None:
        now = time.time()
        for record in await self.store.list_jobs(states=(RUNNING,), limit=10_000):
            if record.job_id in self._runs:
                continue
            if everything or record.lease_expires_at < now or self._left_by_predecessor(record.owner):
                await self._update(record, state=INTERRUPTED,
                                   error="the server running this job restarted or stopped; start it again")

    def _left_by_predecessor(self, owner: str) -> bool:
        prefix = self.settings.owner_prefix
        return bool(prefix) and owner.startswith(prefix) and owner != self.settings.owner

    async def _sweep_abandoned(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 2)
            try:
                await self._interrupt_abandoned(everything=False)
            except StateUnavailable:
                pass

    async def _adopt_forever(self) -> None:
        while True:
            await asyncio.sleep(_ADOPT_EVERY_S)
            with contextlib.suppress(StateUnavailable):
                await self._adopt_queued()

    async def _adopt_queued(self) -> None:
        """A shared store's queued jobs, wherever they were started, join this queue too: the replica that queued one
        may have died (its jobs waited for ever, and an identical start got the dead job back) or be busy. Whichever
        runner claims a job first runs it; the others find it taken and pass."""
        here = {job_id for _, _, job_id in self._queue} | set(self._runs)
        for record in reversed(await self.store.list_jobs(states=(QUEUED,), limit=10_000)):
            if record.job_id not in here:
                self._enqueue(record)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for run in list(self._runs.values()):
            run.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Ended here, each watch closes with OK while the server can still write it; left open, gRPC cancels it
        # once the grace runs out, and the client reads CANCELLED or a reset connection, not that the server stopped.
        self._stopped = True
        for watchers in self._watchers.values():
            for latest in watchers:
                latest.close()

    # -- RPCs ----------------------------------------------------------------------
    async def start_job(self, request: pb.StartOptimizationRequest) -> pb.OptimizationJob:
        base = self.check_request(request)
        dataset = await self._dataset(request.dataset)
        dev = dict(dataset.counts).get("dev", 0)
        if request.budget.max_lm_calls and request.budget.max_lm_calls < 2 * dev:
            # Scoring the base and the result on dev takes that many calls before any optimizing.
            raise errors.InvalidArgument(f"budget.max_lm_calls {request.budget.max_lm_calls} cannot score the {dev} dev examples "
                                         f"twice (the base and the result): give at least {2 * dev}")
        key = dedup_key(base.key, dataset.content_hash, request)
        existing = await self.store.find_job(key)
        if existing is not None and reusable(existing, time.time()) and self._result_kept(existing):
            return to_message(existing, reused=True)  # the optimization cache: identical work is done once
        if len(self._queue) >= self.settings.max_queue:
            raise errors.ResourceExhausted(f"{len(self._queue)} optimization jobs are queued (limit {self.settings.max_queue})",
                                           metadata={"retry_after_ms": "5000"})
        stored = pb.StartOptimizationRequest()
        stored.CopyFrom(request)
        stored.base_version = base.program.version
        now = time.time()
        record = JobRecord(job_id=uuid.uuid4().hex, dedup_key=key, program=request.program, state=QUEUED,
                           priority=request.priority, created_at=now, updated_at=now, request=stored.SerializeToString())
        await self.store.put_job(record)
        self._enqueue(record)
        log.info("optimization_queued", job_id=record.job_id, program=request.program, optimizer=request.optimizer,
                 dataset=request.dataset, base_version=base.program.version)
        await self._prune_now_and_then()
        return to_message(record)

    async def _prune_now_and_then(self) -> None:
        """Keep the newest jobs_kept finished jobs, every _PRUNE_EVERY new jobs (a loop of starts and cancels made rows
        without end); the store being down only delays it."""
        self._started_since_prune += 1
        if self._started_since_prune < _PRUNE_EVERY:
            return
        self._started_since_prune = 0
        with contextlib.suppress(StateUnavailable):
            pruned = await self.store.prune_jobs(self.settings.jobs_kept)
            if pruned:
                log.info("optimization_jobs_pruned", jobs=pruned, kept=self.settings.jobs_kept)

    async def get(self, job_id: str) -> pb.OptimizationJob:
        return to_message(await self._record(job_id))

    async def list(self, program: str, limit: int = 100) -> list[pb.OptimizationJob]:
        """The newest `limit` jobs (of `program`, or of every program), newest first."""
        return [to_message(record) for record in await self.store.list_jobs(program=program, limit=limit)]

    async def cancel(self, job_id: str) -> Cancelled:
        record = await self._record(job_id)
        if record.state == QUEUED:
            record = await self._update(record, state=CANCELLED, error="cancelled before it started")
            self._unqueue(job_id, record.program)
        elif record.state == RUNNING:
            run = self._runs.get(job_id)
            if run is None:  # another front (or replica) runs it: only it can stop its optimizer worker
                # It polls the store for this (every replica sees it); a front group's peers are also asked at once.
                try:
                    await self.store.request_job_cancel(job_id, time.time())
                except StateUnavailable as exc:
                    raise errors.Unavailable(f"the state store is unreachable, so the cancel could not be passed on: {exc}") from None
                return Cancelled(to_message(record), elsewhere=True)
            run.cancel()  # the runner marks it cancelled when the worker confirms (within ~2 s)
        return Cancelled(to_message(record), elsewhere=False)

    def _unqueue(self, job_id: str, program: str) -> None:
        """A cancelled job leaves this front's queue at once: it must not hold a place toward max_queue."""
        kept = [entry for entry in self._queue if entry[2] != job_id]
        if len(kept) != len(self._queue):  # queued here (not on another front or replica)
            heapq.heapify(kept)
            self._queue = kept
            self._done(program)

    async def watch(self, job_id: str) -> AsyncIterator[pb.OptimizationJob]:
        """The job now, then its changes (the newest one whenever the reader is ready for it), until it finishes
        or the server stops (the stream then ends at the last state sent: the job is not finished)."""
        latest = _Latest(closed=self._stopped)
        self._watchers.setdefault(job_id, []).append(latest)
        try:
            record = await self._record(job_id)
            yield to_message(record)
            while record.state not in FINISHED:
                try:
                    change = await asyncio.wait_for(latest.get(), _WATCH_POLL_S)
                except asyncio.TimeoutError:  # no news here: another front or replica may be running it
                    change = await self._record(job_id)
                    if change == record:
                        continue
                if change is None:
                    return
                record = change
                yield to_message(record)
        finally:
            self._watchers[job_id].remove(latest)
            if not self._watchers[job_id]:
                del self._watchers[job_id]

    def active(self, program: str) -> bool:
        """A job for this program is queued or running here."""
        return bool(self._active.get(program))

    async def _watch_triggers(self) -> None:
        while True:
            await asyncio.sleep(self.settings.trigger_tick_s)
            for name, policy in list(self.registry.policies.items()):
                if policy.HasField("auto_optimize") and policy.auto_optimize.job.optimizer:
                    try:
                        await self._tick_trigger(name, policy.auto_optimize)
                    except (errors.PoolError, StateUnavailable) as error:
                        log.warning("auto_optimize_failed", program=name, error=str(getattr(error, "message", error))[:300])

    async def _tick_trigger(self, name: str, auto: pb.AutoOptimize) -> None:
        config = TriggerConfig(auto.after_feedback_examples, auto.on_score_drop, auto.on_error_rate, auto.min_interval_s or 3600.0)
        seen = self._observe(name)
        state = self._triggers.get(name) or await self._trigger_state_from_store(name, seen)
        if state.last_job_id:
            last = await self.store.get_job(state.last_job_id)
            if last is None or last.state in FINISHED:
                state = triggers.after_job(state, failed=last is not None and last.state == FAILED)
        reason, state = decide(config, state, seen, time.time())
        self._triggers[name] = state
        if not reason:
            return
        request = pb.StartOptimizationRequest()
        request.CopyFrom(auto.job)
        request.program = name
        job = await self.start_job(request)
        self._triggers[name] = triggers.started(state, job.job_id)
        log.info("auto_optimize_started", program=name, reason=reason, job_id=job.job_id, reused=job.reused,
                 failed_in_a_row=state.failures or None)

    async def _trigger_state_from_store(self, name: str, seen: Observation) -> TriggerState:
        """A program's trigger state when this process has none (it restarted, or another replica started its jobs):
        its newest job's start stands for the last one, so min_interval_s holds across restarts and replicas; the
        examples counted toward the next job are those since then (unknown: counted from now), or all (no job yet)."""
        newest = await self.store.list_jobs(name, limit=1)
        if not newest:
            return TriggerState()
        return TriggerState(last_started_at=newest[0].created_at, examples_at_last_start=seen.feedback_examples)

    async def wait_for_job(self, program: str, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for this program's queued or running jobs to finish, here or (a shared store) on
        another front or replica; True if one was pending and none is any more, False if none was or it ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        waited = False
        while await self._job_pending(program):
            left = deadline - loop.time()
            if left <= 0:
                return False
            waited = True
            event = self._finished.setdefault(program, asyncio.Event())
            # A job here says when it ends; one elsewhere is looked for again now and then.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, _PENDING_POLL_S) if self.store.shared else left)
        return waited

    async def _job_pending(self, program: str) -> bool:
        """A job of the program queued or running: here (this process's store), or anywhere (a shared one; while it
        cannot be read, as far as this process knows)."""
        if not self.store.shared:
            return bool(self._active.get(program))
        with contextlib.suppress(StateUnavailable):
            now = time.time()
            return any(record.state == QUEUED or record.lease_expires_at >= now
                       for record in await self.store.list_jobs(program, states=(QUEUED, RUNNING), limit=8))
        return bool(self._active.get(program))

    # -- helpers -------------------------------------------------------------------
    def check_request(self, request: pb.StartOptimizationRequest):
        """What can be checked of a job before its dataset is read (also a policy's auto_optimize job, when it is set);
        returns the base version it would optimize."""
        base = self._base(request)
        catalog.check_budget(request.budget.max_lm_calls, request.budget.max_seconds)
        try:
            allowed = tuple(entry.partition("@")[0] for entry in self.settings.allowed_lms)
            catalog.check_optimizer(request.optimizer, structs.struct_to_dict(request.options), allowed)
            catalog.check_metric(request.metric.kind, tuple(request.metric.fields), structs.struct_to_dict(request.metric.options),
                                 tuple(self.pool.metric_kinds), allowed, output_fields=tuple(base.program.output_names))
        except ValueError as exc:
            raise errors.InvalidArgument(str(exc)) from None
        return base

    def _base(self, request: pb.StartOptimizationRequest):
        if not request.program:
            raise errors.InvalidArgument("program is required")
        return (self.registry.get(request.program, request.base_version) if request.base_version
                else self.registry.base_version(request.program))

    async def _dataset(self, name: str):
        if not name:
            raise errors.InvalidArgument("dataset is required")
        dataset = await self.store.get_dataset(name)
        if dataset is None:
            raise errors.NotFound(f"no dataset named {name!r}")
        counts = dict(dataset.counts)
        if not counts.get("train") or not counts.get("dev"):
            raise errors.InvalidArgument(f"dataset {name!r} needs train and dev examples; it has {counts or 'none'}")
        return dataset

    async def _record(self, job_id: str) -> JobRecord:
        record = await self.store.get_job(job_id)
        if record is None:
            raise errors.NotFound(f"no optimization job {job_id!r}")
        return record

    def _enqueue(self, record: JobRecord) -> None:
        heapq.heappush(self._queue, (-record.priority, next(self._order), record.job_id))
        self._active[record.program] = self._active.get(record.program, 0) + 1
        self._wakeup.set()

    def _done(self, program: str) -> None:
        left = self._active.get(program, 0) - 1
        if left > 0:
            self._active[program] = left
        else:  # not kept at 0: every program that ever had a job stayed here
            self._active.pop(program, None)
        event = self._finished.pop(program, None)
        if event is not None:
            event.set()

    async def _update(self, record: JobRecord, **changes) -> JobRecord:
        """The job with `changes`, committed; or, if it finished meanwhile (final), the job as it is stored."""
        changed = dataclasses.replace(record, **changes, updated_at=time.time())
        if not await self.store.put_job(changed):
            stored = await self.store.get_job(record.job_id)
            log.info("optimization_update_refused", job_id=record.job_id, state=stored.state, wanted=changed.state,
                     reason="the job had finished: a finished job is final")
            changed = stored
        self._notify(changed)
        return changed

    def _notify(self, record: JobRecord) -> None:
        for latest in self._watchers.get(record.job_id, ()):
            latest.put(record)

    # -- running ----------------------------------------------------------------------
    async def _run_forever(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            _, _, job_id = heapq.heappop(self._queue)
            program = ""
            try:
                program = await self._run_one(job_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one job's bug must not stop the queue, nor leave the job "running"
                log.exception("optimization_runner_failed", job_id=job_id, error=f"{type(exc).__name__}: {exc}")
                await self._fail_if_running(job_id, f"the job stopped on an internal error: {type(exc).__name__}: {exc}")
            finally:
                record = await self.store.get_job(job_id)
                self._done(record.program if record is not None else program)

    async def _run_one(self, job_id: str) -> str:
        record = await self.store.get_job(job_id)
        if record is None or record.state != QUEUED:
            return ""  # cancelled (or taken by another replica) while it waited
        if not await self.store.claim_job(job_id, self.settings.owner, time.time(), self.settings.lease_s):
            return record.program
        request = pb.StartOptimizationRequest.FromString(record.request)
        record = await self._update(record, state=RUNNING, owner=self.settings.owner,
                                    lease_expires_at=time.time() + self.settings.lease_s)
        if record.state != RUNNING:  # cancelled between the read and the claim
            return record.program
        log.info("optimization_started", job_id=job_id, program=request.program, optimizer=request.optimizer)
        try:
            # The dataset's hash as the job reads it: rows added while it runs are not what the version learned from.
            dataset = await self.store.get_dataset(request.dataset)
            task = await self._task(request)
        except errors.PoolError as error:
            await self._update(record, state=FAILED, error=error.message)
            return record.program
        progress_state = {"record": record, "written_at": 0.0}
        run = self.pool.optimization(lambda progress: self._on_progress(progress_state, progress))
        self._runs[job_id] = run
        overtime: list[float] = []  # set by _while_running when it stopped the job past its time budget
        heartbeat = asyncio.get_running_loop().create_task(self._while_running(job_id, run, request.budget.max_seconds, overtime))
        try:
            result = await self.pool.optimize(task, run)
        except errors.PoolError as error:
            state = CANCELLED if error.kind is errors.ErrorKind.CANCELLED and not overtime else FAILED
            message = error.message if not overtime else (
                f"stopped {overtime[0]:.0f} s in, past budget.max_seconds ({request.budget.max_seconds:g} s): an LM call did not "
                "answer in time (set --lm-timeout-s to bound each call)")
            await self._update(progress_state["record"], state=state, error=message, owner="")
            log.info("optimization_ended", job_id=job_id, state=state, error=message[:300])
            return record.program
        finally:
            heartbeat.cancel()
            self._runs.pop(job_id, None)
        await self._finish(progress_state["record"], request, dataset.content_hash if dataset is not None else "", result)
        return record.program

    async def _task(self, request: pb.StartOptimizationRequest) -> OptimizeTask:
        base = self.registry.get(request.program, request.base_version)
        train = _examples(await self.store.load_examples(request.dataset, "train"))
        dev = _examples(await self.store.load_examples(request.dataset, "dev"))
        if not train or not dev:
            raise errors.InvalidArgument(f"dataset {request.dataset!r} has no train or no dev examples any more")
        return OptimizeTask(
            spec=base.ref.spec, train=train, dev=dev, optimizer=request.optimizer,
            options=structs.struct_to_dict(request.options),
            metric=MetricSpec(request.metric.kind, tuple(request.metric.fields), structs.struct_to_dict(request.metric.options)),
            budget=Budget(request.budget.max_lm_calls, request.budget.max_seconds), seed=request.seed,
            num_threads=self.settings.num_threads, allowed_lms=self.settings.allowed_lms,
        )

    async def _while_running(self, job_id: str, run, max_seconds: float, overtime: list[float]) -> None:
        """While the job runs: renew its lease, so no other replica takes it for abandoned; stop it when another
        front or replica was asked to cancel it (CancelOptimization there records the wish in the store), and when it
        runs well past its time budget (the runner checks the budget before each LM call: one that hangs is never
        done, and the job would run, renewing its lease, for ever)."""
        started = renewed = time.monotonic()
        while True:
            await asyncio.sleep(_CANCEL_POLL_S)
            elapsed = time.monotonic() - started
            if max_seconds > 0 and elapsed > max_seconds + max(_OVERTIME_GRACE_S, max_seconds * 0.1):
                log.warning("optimization_over_time", job_id=job_id, elapsed_s=round(elapsed, 1), max_seconds=max_seconds)
                overtime.append(elapsed)
                run.cancel()  # an optimizer worker that does not stop within the cancel grace is killed
                return
            try:
                if await self.store.job_cancel_requested(job_id):
                    log.info("optimization_cancel_requested_elsewhere", job_id=job_id)
                    run.cancel()  # the runner marks it cancelled when the worker confirms
                    return
                if time.monotonic() - renewed >= self.settings.lease_s / 3:
                    renewed = time.monotonic()
                    await self.store.claim_job(job_id, self.settings.owner, time.time(), self.settings.lease_s)
            except StateUnavailable:
                pass

    def _on_progress(self, state: dict, progress: Progress) -> None:
        message = pb.OptimizationProgress(
            phase=progress.phase, trials_done=progress.trials_done, trials_planned=progress.trials_planned,
            best_score=progress.best_score or 0.0, has_best_score=progress.best_score is not None,
            lm_calls=progress.lm_calls, elapsed_s=progress.elapsed_s,
        )
        record = state["record"]
        now = time.time()
        record = dataclasses.replace(record, progress=message.SerializeToString(), updated_at=now,
                                     lease_expires_at=now + self.settings.lease_s)
        state["record"] = record
        self._notify(record)
        if time.monotonic() - state["written_at"] >= _PROGRESS_WRITE_S:
            state["written_at"] = time.monotonic()
            asyncio.get_running_loop().create_task(self._write_progress(record))

    async def _write_progress(self, record: JobRecord) -> None:
        try:
            await self.store.put_job(record)
        except StateUnavailable:
            pass  # progress is advisory; the final state is written (and retried by its RPC) at the end

    async def _fail_if_running(self, job_id: str, message: str) -> None:
        with contextlib.suppress(StateUnavailable):  # the store down: its lease runs out, and it is marked interrupted
            record = await self.store.get_job(job_id)
            if record is not None and record.state == RUNNING:
                await self._update(record, state=FAILED, error=message, owner="")

    async def _finish(self, record: JobRecord, request: pb.StartOptimizationRequest, dataset_hash: str,
                      result: OptimizeResult) -> None:
        try:
            base = self.registry.get(request.program, request.base_version)
        except errors.NotFound:
            await self._update(record, state=FAILED, error=f"program {request.program!r} version {request.base_version} was "
                                                           "deleted while the job ran; its result was not registered", owner="")
            return
        spec = pb.ProgramSpec()
        spec.CopyFrom(base.program.spec)
        spec.ClearField("demos")  # the optimized state carries its demos
        spec.state_json = result.state_json
        meta = pb.ProgramMeta(
            job_id=record.job_id, optimizer=request.optimizer, dataset=request.dataset, lm=self.settings.lm,
            base_version=base.program.version, baseline_score=result.baseline_score, optimized_score=result.optimized_score,
            dev_examples=result.dev_examples, budget_limited=result.budget_limited,
        )
        meta.options.CopyFrom(request.options)
        meta.metric.CopyFrom(request.metric)
        meta.dataset_hash = dataset_hash
        try:
            program = await self._register_version(spec, meta)
        except errors.PoolError as error:
            await self._update(record, state=FAILED, error=f"the optimized program could not be registered: {error.message}")
            return
        promoted = await self._maybe_promote(request.program, program, result)
        outcome = pb.OptimizationResult(
            version=program.version, baseline_score=result.baseline_score, optimized_score=result.optimized_score,
            dev_examples=result.dev_examples, lm_calls=result.lm_calls, budget_limited=result.budget_limited,
            elapsed_s=result.elapsed_s, promoted=promoted,
        )
        if (await self._update(record, state=SUCCEEDED, result=outcome.SerializeToString(), owner="")).state != SUCCEEDED:
            return  # interrupted meanwhile (its lease ran out): final, though the version it produced stays
        log.info("optimization_succeeded", job_id=record.job_id, program=request.program, version=program.version,
                 baseline=round(result.baseline_score, 4), optimized=round(result.optimized_score, 4), promoted=promoted,
                 budget_limited=result.budget_limited, lm_calls=result.lm_calls)

    def _result_kept(self, record: JobRecord) -> bool:
        """A finished job is handed out again only while the version it made is there (a deleted one: run it again)."""
        if record.state != SUCCEEDED or not record.result:
            return True
        version = pb.OptimizationResult.FromString(record.result).version
        return not version or self.registry.holds(record.program, version)

    def _served_score(self, name: str, version: int, dataset: str) -> float | None:
        """The promoted version's dev score, if it was measured on the same dataset's dev split. By name, not content:
        feedback adds train examples (the content changes) while the dev split, what both were scored on, stays."""
        if not version or not self.registry.holds(name, version):
            return None
        meta = self.registry.get(name, version).program.meta
        return meta.optimized_score if meta.job_id and meta.dataset == dataset else None

    async def _maybe_promote(self, name: str, program: pb.Program, result: OptimizeResult) -> bool:
        policy = self.registry.policy(name)
        served = self._served_score(name, policy.optimized_version, program.meta.dataset)
        if not should_promote(policy.promotion, policy.min_improvement, policy.min_dev_examples,
                              Outcome(result.baseline_score, result.optimized_score, result.dev_examples, served)):
            return False
        promoted = pb.ExecutionPolicy()
        promoted.CopyFrom(policy)
        promoted.optimized_version = program.version
        await self.registry.set_policy(promoted)
        log.info("version_promoted", program=name, version=program.version)
        return True
