"""The DSPyPool servicer: thin handlers over the registry, sessions and pool.

Every Execute passes through `Executor.execute`, the one place the resilience
layer (breaker, fallbacks, retries) wraps. Handlers validate, translate
PoolError into a rich status, and never block the event loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import structlog

from dspy_pool import errors, structs
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.dispatcher import Job
from dspy_pool.pool.handle import WorkerHandle, WorkerState
from dspy_pool.pool.supervisor import WorkerPool
from dspy_pool.pool.warmup import WarmupProgram
from dspy_pool.server import config as config_module
from dspy_pool.server.config import ServerConfig
from dspy_pool.server.breaker import BreakerConfig, BreakerState
from dspy_pool.server.registry import ProgramRegistry, ProgramVersion, check_inputs, check_spec
from dspy_pool.server.resilience import ResilienceSettings, ResilientExecutor, chain_for
from dspy_pool.server.sessions import SessionStore, Turn, check_session_id
from dspy_pool.server.status import to_grpc_status
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

log = structlog.get_logger("dspy_pool.server")

_REQUEST_ID_MAX = 128
_VALIDATE_TIMEOUT_S = 30.0


def _deadline(context: grpc.aio.ServicerContext, config: ServerConfig, loop: asyncio.AbstractEventLoop) -> float:
    remaining = context.time_remaining()
    budget = config.default_deadline_s if remaining is None else min(remaining, config.max_deadline_s)
    return loop.time() + budget


def resilience_settings(config: ServerConfig) -> ResilienceSettings:
    breaker = BreakerConfig(
        window_size=config.breaker_window, minimum_calls=config.breaker_minimum_calls,
        failure_rate_threshold=config.breaker_failure_rate, wait_duration_s=config.breaker_wait_s,
        max_wait_duration_s=max(config.breaker_wait_s, 60.0),
    )
    return ResilienceSettings(
        breaker=breaker, max_attempts=config.retry_max_attempts, cache_entries=config.result_cache_entries,
        cache_ttl_s=config.result_cache_ttl_s, fallback_concurrency=config.fallback_concurrency,
        default_chain=tuple(config.default_fallback),
        fallback_lms=parse_fallback_lms(config.fallback_lms),
    )


def parse_fallback_lms(entries: tuple[str, ...]) -> dict[str, str]:
    """"MODEL@API_BASE" entries -> {model: api_base}; the api_base is the operator's, never a client's."""
    allowed = {}
    for entry in entries:
        model, _, api_base = entry.partition("@")
        allowed[model] = api_base
    return allowed


class Executor:
    """Runs one call of a registered program on the pool (the seam for resilience)."""

    def __init__(self, pool: WorkerPool, sessions: SessionStore, session_max_in_flight: int = 0) -> None:
        self.pool = pool
        self.sessions = sessions
        self.session_max_in_flight = session_max_in_flight

    async def execute(self, program: ProgramVersion, inputs: pb.ExecuteRequest, session_id: str, request_id: str, deadline: float, lm: tuple[str, str] | None = None) -> tuple[wire.WorkReply, WorkerHandle]:
        request = wire.WorkRequest(program_key=program.key, request_id=request_id)
        if lm is not None:
            request.lm_model, request.lm_api_base = lm
        request.inputs.CopyFrom(inputs.inputs)
        affinity = -1
        session = None
        if session_id:
            session = self.sessions.get_or_create(session_id, time.monotonic())
            if self.session_max_in_flight and session.in_flight >= self.session_max_in_flight:
                raise errors.ResourceExhausted(
                    f"session {session_id!r} already has {session.in_flight} calls in flight (limit {self.session_max_in_flight})",
                    metadata={"retry_after_ms": "200"},
                )
            affinity = session.preferred_worker
            if program.takes_history:
                request.has_history = True
                request.history.extend(session.history_messages())
        job = Job(program.key, program.spec_bytes, request, deadline, affinity)
        if session is not None:
            session.in_flight += 1
        try:
            reply, handle = await self.pool.dispatcher.run(job)
        finally:
            if session is not None:
                session.in_flight -= 1
        if session is not None:
            session.preferred_worker = handle.worker_id
            session.turns.append(Turn(program.program.spec.name, structs.struct_to_dict(inputs.inputs), structs.struct_to_dict(reply.outputs)))
        return reply, handle


class DSPyPoolService(pb_grpc.DSPyPoolServicer):
    def __init__(self, config: ServerConfig, pool: WorkerPool, registry: ProgramRegistry, sessions: SessionStore) -> None:
        self.config = config
        self.pool = pool
        self.registry = registry
        self.sessions = sessions
        self.executor = Executor(pool, sessions, config.session_max_in_flight)
        self.resilient = ResilientExecutor(self.executor, registry, resilience_settings(config), config.lm_api_base or config.lm)
        self.started_at = time.monotonic()
        self._register_lock = asyncio.Lock()
        self.controller = None  # set by the app once the autoscaling controller runs

    async def _abort(self, context: grpc.aio.ServicerContext, error: errors.PoolError) -> None:
        await context.abort_with_status(to_grpc_status(error))

    # -- programs -----------------------------------------------------------
    async def RegisterProgram(self, request: pb.RegisterProgramRequest, context):
        try:
            spec = request.spec
            if not self.pool.module_kinds:
                raise errors.Unavailable("the server is starting: workers are not ready yet; retry shortly")
            check_spec(spec, self.pool.module_kinds)
            try:
                chain = chain_for(spec, self.resilient.settings.default_chain)
            except ValueError as exc:
                raise errors.InvalidArgument(f"fallback: {exc}") from None
            self.resilient.check_fallback_lm(chain)
            if "program" in spec.fallback.chain and spec.fallback.program == spec.name:
                raise errors.InvalidArgument("a program cannot be its own fallback")
            async with self._register_lock:  # one version number per distinct content
                existing = self.registry.existing(spec)
                if existing is not None:
                    program = pb.Program()
                    program.CopyFrom(existing.program)
                    program.created = False
                    return program
                reply = await self._validate_on_worker(spec, _deadline(context, self.config, asyncio.get_running_loop()))
                for number, inputs in enumerate(spec.warmup_inputs):
                    try:
                        self._check_depth(inputs)
                        check_inputs(spec.name, inputs.keys(), list(reply.input_names))
                    except errors.InvalidArgument as error:
                        raise errors.InvalidArgument(f"warmup_inputs[{number}]: {error.message}") from None
                entry = self.registry.add(spec, list(reply.input_names), list(reply.output_names), reply.takes_history)
            log.info("program_registered", program=spec.name, version=entry.program.version, module=spec.module or "predict")
            return entry.program
        except errors.PoolError as error:
            await self._abort(context, error)

    def _check_depth(self, inputs) -> None:
        if structs.struct_depth(inputs, self.config.max_input_depth) > self.config.max_input_depth:
            raise errors.InvalidArgument(f"inputs nested deeper than {self.config.max_input_depth} levels")

    def warmup_programs(self) -> list[WarmupProgram]:
        """The latest version of every program, for a worker to build (and warm up) before it takes traffic.

        Programs whose breaker is not closed are built but not called: their
        LM is failing, and a warm-up call would only hold the new worker back.
        """
        failing = {key.program for key, snapshot in self.resilient.breakers.snapshots().items()
                   if snapshot.state is not BreakerState.CLOSED}
        return [WarmupProgram(entry.key, entry.spec_bytes,
                              () if entry.program.spec.name in failing else tuple(entry.program.spec.warmup_inputs))
                for entry in self.registry.list(all_versions=False)]

    async def _validate_on_worker(self, spec: pb.ProgramSpec, deadline: float) -> wire.WorkReply:
        """Build the program in a worker: DSPy itself says whether the spec is valid."""
        key = f"{spec.name}@validate-{uuid.uuid4().hex[:12]}"
        job = Job(key, spec.SerializeToString(), wire.WorkRequest(program_key=key, validate_only=True), deadline)
        reply, _ = await self.pool.dispatcher.run(job)
        return reply

    async def GetProgram(self, request: pb.GetProgramRequest, context):
        try:
            return self.registry.get(request.name, request.version).program
        except errors.PoolError as error:
            await self._abort(context, error)

    async def ListPrograms(self, request: pb.ListProgramsRequest, context):
        return pb.ListProgramsResponse(programs=[v.program for v in self.registry.list(request.all_versions)])

    async def DeleteProgram(self, request: pb.DeleteProgramRequest, context):
        try:
            deleted = self.registry.delete(request.name, request.version)
            log.info("program_deleted", program=request.name, versions=deleted)
            return pb.DeleteProgramResponse(deleted_versions=deleted)
        except errors.PoolError as error:
            await self._abort(context, error)

    # -- execute ------------------------------------------------------------
    def _check_execute(self, request: pb.ExecuteRequest) -> ProgramVersion:
        if not request.program:
            raise errors.InvalidArgument("program is required")
        if request.ByteSize() > self.config.max_message_bytes:
            raise errors.InvalidArgument(f"request is {request.ByteSize()} bytes; the limit is {self.config.max_message_bytes}")
        if len(request.request_id) > _REQUEST_ID_MAX:
            raise errors.InvalidArgument(f"request_id longer than {_REQUEST_ID_MAX} characters")
        if request.session_id:
            check_session_id(request.session_id)
        self._check_depth(request.inputs)
        program = self.registry.get(request.program, request.version)
        check_inputs(request.program, request.inputs.keys(), program.input_names)
        return program

    async def Execute(self, request: pb.ExecuteRequest, context):
        loop = asyncio.get_running_loop()
        received = loop.time()
        deadline = _deadline(context, self.config, loop)
        request_id = request.request_id or uuid.uuid4().hex
        try:
            program = self._check_execute(request)
            served = await self.resilient.execute(program, request, request_id, deadline)
        except errors.PoolError as error:
            if error.kind not in (errors.ErrorKind.INVALID_ARGUMENT, errors.ErrorKind.NOT_FOUND):
                log.debug("execute_failed", program=request.program, request_id=request_id, kind=error.kind.value, message=error.message[:300])
            await self._abort(context, error)
            return
        reply, handle = served.reply, served.handle
        total_ms = (loop.time() - received) * 1000.0
        response = pb.ExecuteResponse(
            program=program.program.spec.name,
            program_version=program.program.version,
            request_id=request_id,
            worker=pb.WorkerRef(id=handle.worker_id, pid=handle.pid) if handle is not None else None,
            timings=pb.Timings(queue_wait_ms=max(0.0, total_ms - reply.execution_ms), execution_ms=reply.execution_ms, total_ms=total_ms),
            usage=pb.Usage(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens, total_tokens=reply.total_tokens),
            served_by=served.served_by,
            fallback_reason=served.fallback_reason,
            session_id=request.session_id,
        )
        response.outputs.CopyFrom(reply.outputs)
        return response

    # -- sessions -----------------------------------------------------------
    async def GetSession(self, request: pb.GetSessionRequest, context):
        try:
            session = self.sessions.get(request.session_id, time.monotonic())
        except errors.PoolError as error:
            await self._abort(context, error)
            return
        message = pb.Session(session_id=session.session_id, preferred_worker=session.preferred_worker)
        for turn in session.turns:
            entry = message.turns.add(program=turn.program)
            structs.dict_to_struct(turn.inputs, entry.inputs)
            structs.dict_to_struct(turn.outputs, entry.outputs)
        wall_offset = time.time() - time.monotonic()
        message.created_at.FromNanoseconds(int((session.created_at + wall_offset) * 1e9))
        message.last_used_at.FromNanoseconds(int((session.last_used_at + wall_offset) * 1e9))
        return message

    async def CloseSession(self, request: pb.CloseSessionRequest, context):
        try:
            session = self.sessions.close(request.session_id)
        except errors.PoolError as error:
            await self._abort(context, error)
            return
        return pb.CloseSessionResponse(turns=len(session.turns))

    # -- status -------------------------------------------------------------
    async def WatchPoolStatus(self, request: pb.WatchPoolStatusRequest, context):
        interval = min(60.0, max(0.1, request.interval_s or 1.0))
        while True:
            yield self.pool_status()
            await asyncio.sleep(interval)

    async def GetPoolStatus(self, request: pb.GetPoolStatusRequest, context):
        return self.pool_status()

    def pool_status(self) -> pb.PoolStatus:
        now = time.monotonic()
        _, minimum, maximum = config_module.worker_bounds(self.config)
        dispatcher = self.pool.dispatcher
        status = pb.PoolStatus(
            serving=self.pool.healthy,
            queue_depth=dispatcher.queue_depth,
            in_flight=dispatcher.in_flight,
            completed=dispatcher.completed,
            failed=dispatcher.failed,
            rejected=dispatcher.rejected,
            worker_restarts=self.pool.restarts,
            sessions=len(self.sessions),
            programs=len(self.registry),
            uptime_s=now - self.started_at,
            config=pb.PoolConfig(
                workers=self.pool.target_workers, min_workers=minimum, max_workers=maximum,
                worker_concurrency=self.config.worker_concurrency, max_queue=self.config.max_queue,
                default_deadline_s=self.config.default_deadline_s, lm=self.config.lm, module_kinds=self.pool.module_kinds,
            ),
        )
        controller = self.controller
        if controller is not None:
            status.recycled_workers = controller.recycled
            status.scale_events = controller.scale_ups + controller.scale_downs
            snapshot = controller.last_snapshot
            if snapshot is not None:
                status.queue_wait_p95_ms = snapshot.queue_wait_p95_s * 1000.0
                status.health_score = snapshot.health
                status.calls_per_s = snapshot.throughput_per_s
                status.worker_cpu_percent = snapshot.cpu_percent
        status.workers_warming = sum(1 for handle in self.pool.handles() if handle.state is WorkerState.WARMING)
        status.warmup_calls = self.pool.warmup_calls
        status.warmup_failures = self.pool.warmup_failures
        status.retries = self.resilient.retries
        status.fallbacks_served = self.resilient.fallbacks_served
        for key, snapshot in self.resilient.breakers.snapshots().items():
            status.breakers.add(
                program=key.program, lm_endpoint=key.lm_endpoint, state=str(snapshot.state),
                failure_rate=-1.0 if snapshot.failure_rate is None else snapshot.failure_rate,
                calls_in_window=snapshot.calls_in_window, opened_total=snapshot.opened_total,
                half_opened_total=snapshot.half_opened_total, closed_total=snapshot.closed_total,
            )
        for handle in self.pool.handles():
            status.workers.add(
                id=handle.worker_id, pid=handle.pid, state=handle.state.value, in_flight=len(handle.in_flight),
                served=handle.served, failed=handle.failed, rss_bytes=handle.rss_bytes, uptime_s=handle.uptime_s(now),
            )
        return status
