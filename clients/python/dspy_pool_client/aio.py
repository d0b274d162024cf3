"""The asyncio client (grpc.aio): the same helpers as Client, awaited.

Create it inside the running event loop (grpc.aio channels bind to the loop
that first uses them) and close it with `await client.close()` or
`async with AsyncClient(...) as client`.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import convert, optimization
from ._gen import dspy_pool_pb2 as pb
from ._gen import dspy_pool_pb2_grpc as pb_grpc
from .client import DEFAULT_CHANNEL_OPTIONS, new_session_id
from .convert import Fallback, Field, Metric, PoolStatus, ProgramInfo, Result, SessionInfo
from .attempts import CallAttempts, WatchAttempts
from .errors import DSPyPoolError, NotFound, from_rpc_error
from .optimization import (Budget, DatasetInfo, ExecutionPolicy, FeedbackResult, OptimizationJob, ProgramStats, outcome,
                           watch_ended_early)
from .progress import ProgressLine
from .retry import RetryPolicy


def _being_cancelled() -> bool:
    """Whether the current task itself is being cancelled (Task.cancelling is Python 3.11+; before, it cannot tell)."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return bool(cancelling and cancelling())


def _closed_error() -> DSPyPoolError:
    return DSPyPoolError(grpc.StatusCode.CANCELLED, "the client was closed (AsyncClient.close) before the call ended")


class AsyncClient:
    def __init__(self, target: str, *, default_timeout: float = 30.0, retries: RetryPolicy | None = None,
                 metadata: Sequence[tuple[str, str]] = (), options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
                 channel: grpc.aio.Channel | None = None) -> None:
        if default_timeout <= 0:
            raise ValueError("default_timeout must be > 0: every call has a deadline")
        self.target = target
        self.default_timeout = default_timeout
        self.retries = retries if retries is not None else RetryPolicy()
        self._metadata = tuple(metadata)
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else grpc.aio.insecure_channel(target, options=list(options))
        self._stub = pb_grpc.DSPyPoolStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._closed = False

    async def _invoke(self, method, request, timeout: float | None, *, retry: bool = True, idempotent: bool = True):
        loop = asyncio.get_running_loop()
        plan = CallAttempts(self.retries, self.default_timeout if timeout is None else timeout, loop.time(),
                            retry=retry, idempotent=idempotent)
        while True:
            remaining = plan.next_attempt(loop.time())
            if self._closed:
                raise _closed_error()
            try:
                return await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                await asyncio.sleep(plan.after(from_rpc_error(exc), exc, loop.time()))
            except asyncio.CancelledError:
                # close() cancels the calls in flight: for their callers that is an error, as in the sync client, not
                # their own task being cancelled (which would end a gather or a TaskGroup for nothing they asked).
                if self._closed and not _being_cancelled():
                    raise _closed_error() from None
                raise

    async def close(self) -> None:
        self._closed = True
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def register_program(self, name: str, signature: str = "", module: str = "predict", *, instructions: str = "",
                               demos: list[Mapping[str, Any]] | None = None, fallback: Fallback | Mapping[str, Any] | None = None,
                               input_fields: list[Field] | None = None, output_fields: list[Field] | None = None,
                               state_json: str = "", module_options: Mapping[str, Any] | None = None, description: str = "",
                               warmup_inputs: list[Mapping[str, Any]] | None = None, capture: Mapping[str, Any] | None = None,
                               timeout: float | None = None) -> ProgramInfo:
        spec = convert.program_spec(name, signature, module, instructions=instructions, demos=demos, fallback=fallback,
                                    input_fields=input_fields, output_fields=output_fields, state_json=state_json,
                                    module_options=module_options, description=description,
                                    warmup_inputs=warmup_inputs, capture=capture)
        return ProgramInfo.from_proto(await self._invoke(self._stub.RegisterProgram, pb.RegisterProgramRequest(spec=spec), timeout))

    async def get_program(self, name: str, version: int = 0, *, timeout: float | None = None) -> ProgramInfo:
        return ProgramInfo.from_proto(await self._invoke(self._stub.GetProgram, pb.GetProgramRequest(name=name, version=version), timeout))

    async def _all_pages(self, method, request, field: str, timeout: float | None) -> list:
        """Every item of a paged listing: a page stops at 1,000 items or 2 MiB."""
        items = []
        while True:
            reply = await self._invoke(method, request, timeout)
            items.extend(getattr(reply, field))
            if not reply.next_page_token:
                return items
            request.page_token = reply.next_page_token

    async def list_programs(self, all_versions: bool = False, *, timeout: float | None = None) -> list[ProgramInfo]:
        programs = await self._all_pages(self._stub.ListPrograms, pb.ListProgramsRequest(all_versions=all_versions), "programs", timeout)
        return [ProgramInfo.from_proto(p) for p in programs]

    async def delete_program(self, name: str, version: int = 0, *, timeout: float | None = None) -> list[int]:
        reply = await self._invoke(self._stub.DeleteProgram, pb.DeleteProgramRequest(name=name, version=version), timeout)
        return list(reply.deleted_versions)

    async def execute(self, program: str, inputs: Mapping[str, Any] | None = None, *, version: int = 0,
                      session_id: str | None = None, timeout: float | None = None, request_id: str | None = None,
                      mode: str = "", max_optimization_wait_ms: int = 0) -> Result:
        request = convert.execute_request(program, inputs, version, session_id, request_id, mode, max_optimization_wait_ms)
        return Result.from_proto(await self._invoke(self._stub.Execute, request, timeout))

    # -- datasets (see Client for what each does) ------------------------------------------
    async def add_examples(self, dataset: str, split: str, examples: Sequence[Mapping[str, Any]], *,
                           timeout: float | None = None) -> DatasetInfo:
        request = optimization.add_examples_request(dataset, split, examples)
        return DatasetInfo.from_proto(await self._invoke(self._stub.AddExamples, request, timeout, idempotent=False))

    async def get_dataset(self, name: str, *, timeout: float | None = None) -> DatasetInfo:
        return DatasetInfo.from_proto(await self._invoke(self._stub.GetDataset, pb.GetDatasetRequest(name=name), timeout))

    async def list_datasets(self, *, timeout: float | None = None) -> list[DatasetInfo]:
        datasets = await self._all_pages(self._stub.ListDatasets, pb.ListDatasetsRequest(), "datasets", timeout)
        return [DatasetInfo.from_proto(d) for d in datasets]

    async def delete_dataset(self, name: str, *, timeout: float | None = None) -> bool:
        return (await self._invoke(self._stub.DeleteDataset, pb.DeleteDatasetRequest(name=name), timeout)).deleted

    # -- optimization -----------------------------------------------------------------------
    async def start_optimization(self, program: str, dataset: str, optimizer: str, *,
                                 metric: str | Metric | Mapping[str, Any] = "exact_match",
                                 options: Mapping[str, Any] | None = None, budget: Budget | Mapping[str, Any] | None = None,
                                 priority: int = 0, base_version: int = 0, seed: int = 0,
                                 timeout: float | None = None) -> OptimizationJob:
        request = optimization.start_request(program, dataset, optimizer, metric=metric, options=options, budget=budget,
                                             priority=priority, base_version=base_version, seed=seed)
        return OptimizationJob.from_proto(await self._invoke(self._stub.StartOptimization, request, timeout))

    async def optimize(self, program: str, dataset: str, optimizer: str, *,
                       metric: str | Metric | Mapping[str, Any] = "exact_match", options: Mapping[str, Any] | None = None,
                       budget: Budget | Mapping[str, Any] | None = None, priority: int = 0, base_version: int = 0,
                       seed: int = 0, progress: bool = True, timeout: float | None = None) -> OptimizationJob:
        """Start an optimization and wait until it finishes (see Client.optimize)."""
        job = await self.start_optimization(program, dataset, optimizer, metric=metric, options=options, budget=budget,
                                            priority=priority, base_version=base_version, seed=seed)
        if job.finished:
            return outcome(job)
        return await self.wait_for_optimization(job.job_id, progress=progress, timeout=timeout)

    async def get_optimization(self, job_id: str, *, timeout: float | None = None) -> OptimizationJob:
        request = pb.GetOptimizationRequest(job_id=job_id)
        return OptimizationJob.from_proto(await self._invoke(self._stub.GetOptimization, request, timeout))

    async def list_optimizations(self, program: str = "", *, timeout: float | None = None) -> list[OptimizationJob]:
        jobs = await self._all_pages(self._stub.ListOptimizations, pb.ListOptimizationsRequest(program=program), "jobs", timeout)
        return [OptimizationJob.from_proto(j) for j in jobs]

    async def cancel_optimization(self, job_id: str, *, timeout: float | None = None) -> OptimizationJob:
        request = pb.CancelOptimizationRequest(job_id=job_id)
        return OptimizationJob.from_proto(await self._invoke(self._stub.CancelOptimization, request, timeout))

    async def watch_optimization(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[OptimizationJob]:
        """The job now, then on every change, until it finishes (see Client.watch_optimization)."""
        loop = asyncio.get_running_loop()
        plan = WatchAttempts(self.retries, job_id, timeout, loop.time())
        while True:
            remaining = plan.next_attempt(loop.time())
            call = self._stub.WatchOptimization(pb.GetOptimizationRequest(job_id=job_id), timeout=remaining,
                                                metadata=self._metadata)
            try:
                async for message in call:
                    job = OptimizationJob.from_proto(message)
                    plan.seen(job)
                    yield job
                    if job.finished:
                        return
                error, cause = watch_ended_early(job_id), None
            except grpc.aio.AioRpcError as exc:
                error, cause = from_rpc_error(exc), exc
            finally:
                call.cancel()
            await asyncio.sleep(plan.after(error, cause, loop.time()))

    async def wait_for_optimization(self, job_id: str, *, progress: bool = True,
                                    timeout: float | None = None) -> OptimizationJob:
        line, job = ProgressLine.for_stderr(progress), None
        watch = self.watch_optimization(job_id, timeout=timeout)
        try:
            async for job in watch:
                if line is not None:
                    line.update(job)
        finally:
            await watch.aclose()
            if line is not None:
                line.close()
        return outcome(job)

    # -- execution policy and stats ---------------------------------------------------------
    async def get_execution_policy(self, program: str, *, timeout: float | None = None) -> ExecutionPolicy:
        request = pb.GetExecutionPolicyRequest(program=program)
        return ExecutionPolicy.from_proto(await self._invoke(self._stub.GetExecutionPolicy, request, timeout))

    async def set_execution_policy(self, program: str, *, mode: str | None = None, hybrid_percent: float | None = None,
                                   sticky_sessions: bool | None = None, promotion: str | None = None,
                                   min_improvement: float | None = None, min_dev_examples: int | None = None,
                                   optimized_version: int | None = None, base_version: int | None = None,
                                   timeout: float | None = None) -> ExecutionPolicy:
        """Change the named fields of a program's execution policy (read, change, write: see Client)."""
        current = await self._invoke(self._stub.GetExecutionPolicy, pb.GetExecutionPolicyRequest(program=program), timeout)
        changes = dict(mode=mode, hybrid_percent=hybrid_percent, sticky_sessions=sticky_sessions, promotion=promotion,
                       min_improvement=min_improvement, min_dev_examples=min_dev_examples,
                       optimized_version=optimized_version, base_version=base_version)
        policy = optimization.merged_policy(current, program, changes)
        reply = await self._invoke(self._stub.SetExecutionPolicy, pb.SetExecutionPolicyRequest(policy=policy), timeout)
        return ExecutionPolicy.from_proto(reply)

    async def program_stats(self, program: str, *, timeout: float | None = None) -> ProgramStats:
        request = pb.GetProgramStatsRequest(program=program)
        return ProgramStats.from_proto(await self._invoke(self._stub.GetProgramStats, request, timeout))

    async def record_feedback(self, request_id: str, *, score: float | None = None,
                              expected_outputs: Mapping[str, Any] | None = None,
                              timeout: float | None = None) -> FeedbackResult:
        """Feedback on a call its program captured (see Client.record_feedback)."""
        request = optimization.feedback_request(request_id, score, expected_outputs)
        return FeedbackResult.from_proto(await self._invoke(self._stub.RecordFeedback, request, timeout, idempotent=False))

    def session(self, session_id: str | None = None) -> "AsyncSession":
        """`async with client.session() as s: await s.execute(...)`; closed on exit."""
        return AsyncSession(self, session_id or new_session_id())

    async def get_session(self, session_id: str, *, timeout: float | None = None) -> SessionInfo:
        return SessionInfo.from_proto(await self._invoke(self._stub.GetSession, pb.GetSessionRequest(session_id=session_id), timeout))

    async def close_session(self, session_id: str, *, timeout: float | None = None) -> int:
        return (await self._invoke(self._stub.CloseSession, pb.CloseSessionRequest(session_id=session_id), timeout)).turns

    async def pool_status(self, *, timeout: float | None = None) -> PoolStatus:
        return PoolStatus.from_proto(await self._invoke(self._stub.GetPoolStatus, pb.GetPoolStatusRequest(), timeout))

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        reply = await self._invoke(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout, retry=False)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    @property
    def stub(self) -> pb_grpc.DSPyPoolStub:
        return self._stub


class AsyncSession:
    def __init__(self, client: AsyncClient, session_id: str) -> None:
        self.client = client
        self.session_id = session_id
        self.closed = False

    async def execute(self, program: str, inputs: Mapping[str, Any] | None = None, *, version: int = 0,
                      timeout: float | None = None, request_id: str | None = None, mode: str = "",
                      max_optimization_wait_ms: int = 0) -> Result:
        return await self.client.execute(program, inputs, version=version, session_id=self.session_id, timeout=timeout,
                                         request_id=request_id, mode=mode, max_optimization_wait_ms=max_optimization_wait_ms)

    async def history(self, *, timeout: float | None = None) -> SessionInfo:
        return await self.client.get_session(self.session_id, timeout=timeout)

    async def close(self, *, timeout: float | None = None) -> int:
        if self.closed:
            return 0
        self.closed = True
        try:
            return await self.client.close_session(self.session_id, timeout=timeout)
        except NotFound:
            return 0

    async def __aenter__(self) -> "AsyncSession":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            await self.close()
        except DSPyPoolError:
            if exc_type is None:
                raise
