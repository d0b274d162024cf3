"""The synchronous client: typed helpers over the generated stub, deadlines, retries, typed errors.

Every call has a deadline: `timeout=` on the call, else the client's
`default_timeout`. The deadline covers all attempts together; a retry is only
made when its backoff still fits before the deadline.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterator, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import convert, optimization
from ._gen import dspy_pool_pb2 as pb
from ._gen import dspy_pool_pb2_grpc as pb_grpc
from .convert import Fallback, Field, Metric, PoolStatus, ProgramInfo, Result, SessionInfo
from .attempts import CallAttempts, WatchAttempts
from .errors import DSPyPoolError, NotFound, from_rpc_error
from .optimization import (Budget, DatasetInfo, ExecutionPolicy, FeedbackResult, OptimizationJob, ProgramStats, outcome,
                           watch_ended_early)
from .progress import ProgressLine
from .retry import RetryPolicy

SERVICE_NAME = "dspy_pool.v1.DSPyPool"
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
)


def new_session_id() -> str:
    return f"py-{uuid.uuid4().hex}"


class Client:
    """Blocking client for a dspy-pool server.

    >>> with Client("127.0.0.1:50051") as client:
    ...     client.register_program("qa", "question -> answer")
    ...     client.execute("qa", {"question": "What is DSPy?"}).outputs["answer"]
    """

    def __init__(self, target: str, *, default_timeout: float = 30.0, retries: RetryPolicy | None = None,
                 metadata: Sequence[tuple[str, str]] = (), options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
                 channel: grpc.Channel | None = None) -> None:
        if default_timeout <= 0:
            raise ValueError("default_timeout must be > 0: every call has a deadline")
        self.target = target
        self.default_timeout = default_timeout
        self.retries = retries if retries is not None else RetryPolicy()
        self._metadata = tuple(metadata)
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else grpc.insecure_channel(target, options=list(options))
        self._stub = pb_grpc.DSPyPoolStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._closed = False

    # -- plumbing -----------------------------------------------------------
    def _invoke(self, method, request, timeout: float | None, *, retry: bool = True, idempotent: bool = True):
        plan = CallAttempts(self.retries, self.default_timeout if timeout is None else timeout, time.monotonic(),
                            retry=retry, idempotent=idempotent)
        while True:
            remaining = plan.next_attempt(time.monotonic())
            if self._closed:  # grpc would raise a bare ValueError
                raise DSPyPoolError(grpc.StatusCode.CANCELLED, "the client was closed (Client.close) before this call")
            try:
                return method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                time.sleep(plan.after(from_rpc_error(exc), exc, time.monotonic()))

    def close(self) -> None:
        self._closed = True
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- programs -----------------------------------------------------------
    def register_program(self, name: str, signature: str = "", module: str = "predict", *, instructions: str = "",
                         demos: list[Mapping[str, Any]] | None = None, fallback: Fallback | Mapping[str, Any] | None = None,
                         input_fields: list[Field] | None = None, output_fields: list[Field] | None = None,
                         state_json: str = "", module_options: Mapping[str, Any] | None = None, description: str = "",
                         warmup_inputs: list[Mapping[str, Any]] | None = None, capture: Mapping[str, Any] | None = None,
                         timeout: float | None = None) -> ProgramInfo:
        spec = convert.program_spec(name, signature, module, instructions=instructions, demos=demos, fallback=fallback,
                                    input_fields=input_fields, output_fields=output_fields, state_json=state_json,
                                    module_options=module_options, description=description,
                                    warmup_inputs=warmup_inputs, capture=capture)
        return ProgramInfo.from_proto(self._invoke(self._stub.RegisterProgram, pb.RegisterProgramRequest(spec=spec), timeout))

    def get_program(self, name: str, version: int = 0, *, timeout: float | None = None) -> ProgramInfo:
        return ProgramInfo.from_proto(self._invoke(self._stub.GetProgram, pb.GetProgramRequest(name=name, version=version), timeout))

    def _all_pages(self, method, request, field: str, timeout: float | None) -> list:
        """Every item of a paged listing: a page stops at 1,000 items or 2 MiB."""
        items = []
        while True:
            reply = self._invoke(method, request, timeout)
            items.extend(getattr(reply, field))
            if not reply.next_page_token:
                return items
            request.page_token = reply.next_page_token

    def list_programs(self, all_versions: bool = False, *, timeout: float | None = None) -> list[ProgramInfo]:
        programs = self._all_pages(self._stub.ListPrograms, pb.ListProgramsRequest(all_versions=all_versions), "programs", timeout)
        return [ProgramInfo.from_proto(p) for p in programs]

    def delete_program(self, name: str, version: int = 0, *, timeout: float | None = None) -> list[int]:
        reply = self._invoke(self._stub.DeleteProgram, pb.DeleteProgramRequest(name=name, version=version), timeout)
        return list(reply.deleted_versions)

    # -- execute ------------------------------------------------------------
    def execute(self, program: str, inputs: Mapping[str, Any] | None = None, *, version: int = 0,
                session_id: str | None = None, timeout: float | None = None, request_id: str | None = None,
                mode: str = "", max_optimization_wait_ms: int = 0) -> Result:
        """Run a program once. `mode` ("traditional", "optimized", "hybrid", "evaluation") overrides the program's
        execution policy for this call (ignored when `version` is set); `max_optimization_wait_ms`: in optimized mode
        while the first optimization still runs, wait this long for its version before running the base version.
        The result's `execution_mode` says how the version was chosen; `evaluation` holds the other arm."""
        request = convert.execute_request(program, inputs, version, session_id, request_id, mode, max_optimization_wait_ms)
        return Result.from_proto(self._invoke(self._stub.Execute, request, timeout))

    # -- datasets -----------------------------------------------------------
    def add_examples(self, dataset: str, split: str, examples: Sequence[Mapping[str, Any]], *,
                     timeout: float | None = None) -> DatasetInfo:
        """Append labelled examples, each {"inputs": {...}, "outputs": {...}}, to a dataset's split ("train": what
        optimizers learn from, "dev": what versions are scored on). Creates the dataset on first use."""
        request = optimization.add_examples_request(dataset, split, examples)
        return DatasetInfo.from_proto(self._invoke(self._stub.AddExamples, request, timeout, idempotent=False))

    def get_dataset(self, name: str, *, timeout: float | None = None) -> DatasetInfo:
        return DatasetInfo.from_proto(self._invoke(self._stub.GetDataset, pb.GetDatasetRequest(name=name), timeout))

    def list_datasets(self, *, timeout: float | None = None) -> list[DatasetInfo]:
        datasets = self._all_pages(self._stub.ListDatasets, pb.ListDatasetsRequest(), "datasets", timeout)
        return [DatasetInfo.from_proto(d) for d in datasets]

    def delete_dataset(self, name: str, *, timeout: float | None = None) -> bool:
        """Delete a dataset and its examples; NotFound when there is none."""
        return self._invoke(self._stub.DeleteDataset, pb.DeleteDatasetRequest(name=name), timeout).deleted

    # -- optimization -------------------------------------------------------
    def start_optimization(self, program: str, dataset: str, optimizer: str, *,
                           metric: str | Metric | Mapping[str, Any] = "exact_match", options: Mapping[str, Any] | None = None,
                           budget: Budget | Mapping[str, Any] | None = None, priority: int = 0, base_version: int = 0,
                           seed: int = 0, timeout: float | None = None) -> OptimizationJob:
        """Queue a background optimization (or get the identical job that exists: `job.reused`)."""
        request = optimization.start_request(program, dataset, optimizer, metric=metric, options=options, budget=budget,
                                             priority=priority, base_version=base_version, seed=seed)
        return OptimizationJob.from_proto(self._invoke(self._stub.StartOptimization, request, timeout))

    def optimize(self, program: str, dataset: str, optimizer: str, *,
                 metric: str | Metric | Mapping[str, Any] = "exact_match", options: Mapping[str, Any] | None = None,
                 budget: Budget | Mapping[str, Any] | None = None, priority: int = 0, base_version: int = 0, seed: int = 0,
                 progress: bool = True, timeout: float | None = None) -> OptimizationJob:
        """Start an optimization and wait until it finishes; the succeeded job (`job.result.version` is the new version).

        A progress line is drawn on stderr when it is a terminal (`progress=False`: never). `timeout`: seconds to
        wait in all (None: until the job ends; its budget bounds it); when it passes, DeadlineExceeded, and the job
        keeps running on the server. A job that fails, is cancelled or interrupted raises OptimizationFailed with the
        server's error text."""
        job = self.start_optimization(program, dataset, optimizer, metric=metric, options=options, budget=budget,
                                      priority=priority, base_version=base_version, seed=seed)
        if job.finished:  # an identical job had already run
            return outcome(job)
        return self.wait_for_optimization(job.job_id, progress=progress, timeout=timeout)

    def get_optimization(self, job_id: str, *, timeout: float | None = None) -> OptimizationJob:
        return OptimizationJob.from_proto(self._invoke(self._stub.GetOptimization, pb.GetOptimizationRequest(job_id=job_id), timeout))

    def list_optimizations(self, program: str = "", *, timeout: float | None = None) -> list[OptimizationJob]:
        """Jobs of one program, or of every program when `program` is empty."""
        jobs = self._all_pages(self._stub.ListOptimizations, pb.ListOptimizationsRequest(program=program), "jobs", timeout)
        return [OptimizationJob.from_proto(j) for j in jobs]

    def cancel_optimization(self, job_id: str, *, timeout: float | None = None) -> OptimizationJob:
        """Cancel a job: a queued one at once; a running one stops at its next LM call (watch it for the end)."""
        request = pb.CancelOptimizationRequest(job_id=job_id)
        return OptimizationJob.from_proto(self._invoke(self._stub.CancelOptimization, request, timeout))

    def watch_optimization(self, job_id: str, *, timeout: float | None = None) -> Iterator[OptimizationJob]:
        """The job now, then on every change, until it finishes. A watch the server closes or loses early is opened
        again under the client's retry policy. `timeout`: seconds in all (None: no limit)."""
        plan = WatchAttempts(self.retries, job_id, timeout, time.monotonic())
        while True:
            remaining = plan.next_attempt(time.monotonic())
            stream = self._stub.WatchOptimization(pb.GetOptimizationRequest(job_id=job_id), timeout=remaining,
                                                  metadata=self._metadata)
            try:
                for message in stream:
                    job = OptimizationJob.from_proto(message)
                    plan.seen(job)
                    yield job
                    if job.finished:
                        return
                error, cause = watch_ended_early(job_id), None
            except grpc.RpcError as exc:
                error, cause = from_rpc_error(exc), exc
            finally:
                stream.cancel()
            time.sleep(plan.after(error, cause, time.monotonic()))

    def wait_for_optimization(self, job_id: str, *, progress: bool = True, timeout: float | None = None) -> OptimizationJob:
        """Watch a job until it finishes (a progress line on a terminal's stderr); the job if it succeeded, else
        OptimizationFailed. `timeout` as in `optimize`."""
        line, job = ProgressLine.for_stderr(progress), None
        try:
            for job in self.watch_optimization(job_id, timeout=timeout):
                if line is not None:
                    line.update(job)
        finally:
            if line is not None:
                line.close()
        return outcome(job)

    # -- execution policy and stats -----------------------------------------
    def get_execution_policy(self, program: str, *, timeout: float | None = None) -> ExecutionPolicy:
        request = pb.GetExecutionPolicyRequest(program=program)
        return ExecutionPolicy.from_proto(self._invoke(self._stub.GetExecutionPolicy, request, timeout))

    def set_execution_policy(self, program: str, *, mode: str | None = None, hybrid_percent: float | None = None,
                             sticky_sessions: bool | None = None, promotion: str | None = None,
                             min_improvement: float | None = None, min_dev_examples: int | None = None,
                             optimized_version: int | None = None, base_version: int | None = None,
                             timeout: float | None = None) -> ExecutionPolicy:
        """Change the named fields of a program's execution policy; the others keep their values.

        The server stores a whole policy, so this reads it, changes what you name and writes it back (two calls):
        a version the server auto-promotes between the two is overwritten unless you name `optimized_version`."""
        current = self._invoke(self._stub.GetExecutionPolicy, pb.GetExecutionPolicyRequest(program=program), timeout)
        changes = dict(mode=mode, hybrid_percent=hybrid_percent, sticky_sessions=sticky_sessions, promotion=promotion,
                       min_improvement=min_improvement, min_dev_examples=min_dev_examples,
                       optimized_version=optimized_version, base_version=base_version)
        policy = optimization.merged_policy(current, program, changes)
        reply = self._invoke(self._stub.SetExecutionPolicy, pb.SetExecutionPolicyRequest(policy=policy), timeout)
        return ExecutionPolicy.from_proto(reply)

    def program_stats(self, program: str, *, timeout: float | None = None) -> ProgramStats:
        """Per version and arm: calls, errors, latency p50/p95; and the policy in force."""
        request = pb.GetProgramStatsRequest(program=program)
        return ProgramStats.from_proto(self._invoke(self._stub.GetProgramStats, request, timeout))

    def record_feedback(self, request_id: str, *, score: float | None = None, expected_outputs: Mapping[str, Any] | None = None,
                        timeout: float | None = None) -> FeedbackResult:
        """Feedback on a call its program captured (`capture: {sample_rate: ...}` in its spec; `Result.request_id`
        names the call): `score` goes to the version's stats (`program_stats(...).arms[i].feedback_count`,
        `feedback_score_mean`); `expected_outputs`, or a score at or above the capture's `good_score` (default 1),
        turns the call into an example of the capture's dataset. A call takes feedback once: NotFound when it was not
        captured, was given feedback already, or aged out."""
        request = optimization.feedback_request(request_id, score, expected_outputs)
        # Not sent again after a transport error: the first may have used the capture up.
        return FeedbackResult.from_proto(self._invoke(self._stub.RecordFeedback, request, timeout, idempotent=False))

    # -- sessions -----------------------------------------------------------
    def session(self, session_id: str | None = None) -> "Session":
        """A conversation: `with client.session() as s: s.execute(...)`; closed on exit."""
        return Session(self, session_id or new_session_id())

    def get_session(self, session_id: str, *, timeout: float | None = None) -> SessionInfo:
        return SessionInfo.from_proto(self._invoke(self._stub.GetSession, pb.GetSessionRequest(session_id=session_id), timeout))

    def close_session(self, session_id: str, *, timeout: float | None = None) -> int:
        """Close a session; returns how many turns it held. NotFound when unknown."""
        return self._invoke(self._stub.CloseSession, pb.CloseSessionRequest(session_id=session_id), timeout).turns

    # -- status -------------------------------------------------------------
    def pool_status(self, *, timeout: float | None = None) -> PoolStatus:
        return PoolStatus.from_proto(self._invoke(self._stub.GetPoolStatus, pb.GetPoolStatusRequest(), timeout))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The health service's answer: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN"."""
        reply = self._invoke(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout, retry=False)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    @property
    def stub(self) -> pb_grpc.DSPyPoolStub:
        """The raw generated stub, for anything the helpers do not cover."""
        return self._stub


class Session:
    """Calls that share one session_id (and so its history); closes the session on exit."""

    def __init__(self, client: Client, session_id: str) -> None:
        self.client = client
        self.session_id = session_id
        self.closed = False

    def execute(self, program: str, inputs: Mapping[str, Any] | None = None, *, version: int = 0,
                timeout: float | None = None, request_id: str | None = None, mode: str = "",
                max_optimization_wait_ms: int = 0) -> Result:
        return self.client.execute(program, inputs, version=version, session_id=self.session_id, timeout=timeout,
                                   request_id=request_id, mode=mode, max_optimization_wait_ms=max_optimization_wait_ms)

    def history(self, *, timeout: float | None = None) -> SessionInfo:
        return self.client.get_session(self.session_id, timeout=timeout)

    def close(self, *, timeout: float | None = None) -> int:
        """Close on the server; 0 when the server never saw the session (no call was made)."""
        if self.closed:
            return 0
        self.closed = True
        try:
            return self.client.close_session(self.session_id, timeout=timeout)
        except NotFound:
            return 0

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except DSPyPoolError:
            if exc_type is None:
                raise  # do not hide the caller's own exception behind a failed close
