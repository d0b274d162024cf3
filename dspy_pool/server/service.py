"""The DSPyPool servicer: thin handlers over the registry, sessions and pool.

Every Execute passes through `ResilientExecutor.execute` (breaker, retries,
fallbacks) and `Executor.execute` (session, then the pool's one call API).
Handlers validate, translate PoolError into a rich status, and never block the
event loop. Nothing here builds a worker message or touches a worker: the pool
is reached only through `dspy_pool.pool.api`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import grpc
import structlog
from google.protobuf import struct_pb2

from dspy_pool import errors, logs, structs
from dspy_pool import fields as spec_fields
from dspy_pool.optimize import catalog, routing
from dspy_pool.optimize.feedback import Captured, Captures, check_capture, dataset_for, sampled
from dspy_pool.optimize.triggers import Observation
from dspy_pool.pool.api import Pool, WarmupProgram
from dspy_pool.redact import mask_url
from dspy_pool.server import config as config_module, paging
from dspy_pool.server.breaker import AsyncBreakerGuard, BreakerConfig, BreakerState
from dspy_pool.server.client_limits import ClientLimits, client_of
from dspy_pool.server.cache import TieredCache, policy_for
from dspy_pool.server.config import ServerConfig
from dspy_pool.server.executor import Executor
from dspy_pool.server.registry import HISTORY_INPUT, ProgramRegistry, ProgramVersion, check_inputs, check_spec, program_ref
from dspy_pool.server.fallback import Step
from dspy_pool.server.handlers import Undecodable, checks_decoding, undecodable
from dspy_pool.server.peers import SCOPE_FRONT, SCOPE_KEY, Peers, merge as merge_status, merge_program_stats
from dspy_pool.server.resilience import ResilienceSettings, ResilientExecutor, chain_for
from dspy_pool.server.sessions import SessionStore, check_session_id, newest_turns
from dspy_pool.server.stats_sync import StatsSync
from dspy_pool.state.unreachable import unavailable_while_down
from dspy_pool.server.status import to_grpc_status
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

log = structlog.get_logger("dspy_pool.server")

_REQUEST_ID_MAX = 128
_SHAPES_KEPT = 4096  # program versions whose _CallShape is kept; past it they are worked out again as calls come
_VALIDATE_TIMEOUT_S = 60.0


# Finish a little before the client's own deadline, so the call ends with our status (and the
# breaker counts it) rather than being cancelled by grpc at the same instant.
_DEADLINE_MARGIN_S = 0.05
_DEADLINE_MARGIN_SHARE = 0.05
_OPTIMIZATION_WAIT_SHARE = 0.5  # of the time left: the most a call waits for a running optimization
_SESSION_COUNT_TIMEOUT_S = 0.5  # GetPoolStatus waits this long for the store's session count, then says -1
# A feedback score's bound: wide enough for any metric's scale, and sums of a lifetime of them stay finite.
MAX_FEEDBACK_SCORE = 1e9


def _deadline(context: grpc.aio.ServicerContext, config: ServerConfig, loop: asyncio.AbstractEventLoop) -> float:
    remaining = context.time_remaining()
    if remaining is None:
        return loop.time() + config.server.effective_default_deadline_s
    budget = min(remaining, config.server.max_deadline_s)
    return loop.time() + budget - min(_DEADLINE_MARGIN_S, budget * _DEADLINE_MARGIN_SHARE)


def breaker_config(config: ServerConfig) -> BreakerConfig:
    return BreakerConfig(
        window_size=config.resilience.breaker_window, minimum_calls=config.resilience.breaker_minimum_calls,
        failure_rate_threshold=config.resilience.breaker_failure_rate, wait_duration_s=config.resilience.breaker_wait_s,
        max_wait_duration_s=max(config.resilience.breaker_wait_s, 60.0),
    )


def resilience_settings(config: ServerConfig) -> ResilienceSettings:
    return ResilienceSettings(
        breaker=breaker_config(config), max_attempts=config.resilience.retry_max_attempts, cache_entries=config.resilience.result_cache_entries,
        cache_max_bytes=config.resilience.result_cache_max_bytes,
        cache_ttl_s=config.resilience.result_cache_ttl_s, fallback_concurrency=config.resilience.fallback_concurrency,
        default_chain=tuple(config.resilience.default_fallback),
        fallback_lms=parse_fallback_lms(config.lm.fallback_lms),
    )


def parse_fallback_lms(entries: tuple[str, ...]) -> dict[str, str]:
    """"MODEL@API_BASE" entries -> {model: api_base}; the api_base is the operator's, never a client's."""
    allowed = {}
    for entry in entries:
        model, _, api_base = entry.partition("@")
        allowed[model] = api_base
    return allowed


def warmup_programs(registry: ProgramRegistry, breakers: AsyncBreakerGuard) -> list[WarmupProgram]:
    """What a joining worker builds (and warms up) before it takes traffic: every version a call may be routed to
    (the latest, the base a traditional call runs, the promoted one), so a promotion never lands on a cold worker.

    Programs whose breaker is not closed are built but not called: their
    LM is failing, and a warm-up call would only hold the new worker back.
    """
    failing = {key.program for key, snapshot in breakers.snapshots().items() if snapshot.state is not BreakerState.CLOSED}
    out, seen = [], set()
    for latest in registry.list(all_versions=False):
        policy = registry.policy(latest.name)
        candidates = [latest, registry.base_version(latest.name)]
        for number in (policy.base_version, policy.optimized_version):
            if number:
                try:
                    candidates.append(registry.get(latest.name, number))
                except errors.NotFound:
                    pass
        for entry in candidates:
            if entry.key not in seen:
                seen.add(entry.key)
                calls = () if entry.name in failing else tuple(entry.program.spec.warmup_inputs)
                out.append(WarmupProgram(entry.ref.key, entry.ref.spec, calls))
    return out


class _RequestIds:
    """Request ids for calls that bring none: 128 random bits as 32 hex digits, like uuid4().hex.

    Drawn from os.urandom (ids name captured calls to RecordFeedback, so they must not be guessable),
    a buffer at a time: one getrandom syscall per 128 ids rather than one per call. Per servicer,
    and the front never forks (hard rule 1), so no two processes share a buffer.
    """

    __slots__ = ("_hex", "_at")
    _BATCH_BYTES = 2048

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._hex):
            self._hex, at = os.urandom(self._BATCH_BYTES).hex(), 0
        self._at = at + 32
        return self._hex[at:at + 32]


@dataclass(frozen=True, slots=True)
class _CallShape:
    """What Execute reads of a program version on every call, read from its spec once per content (program key)."""

    # The program's inputs, when a call naming exactly these (and nothing else) is valid as it stands;
    # None when every call takes the full check (a program with a `history` input).
    exact_inputs: tuple[str, ...] | None
    capture_rate: float  # ProgramSpec.capture.sample_rate
    traditional: routing.Route  # the route of a call that runs this content as the base (no policy, no mode)


_LATEST_VERSIONS = paging.Listing("programs", lambda entry: (entry.name, entry.version), (str, int),
                                  lambda entry: entry.program.ByteSize())
_ALL_VERSIONS = dataclasses.replace(_LATEST_VERSIONS, name="programs:all_versions")
_DATASETS = paging.Listing("datasets", lambda dataset: (dataset.name,), (str,), lambda dataset: dataset.ByteSize())
# Jobs, newest first: the key sorts them so (the newest has the smallest key).
_JOBS = paging.Listing("jobs", lambda job: (-job.created_at.ToNanoseconds(), job.job_id), (int, str), lambda job: job.ByteSize())
_JOBS_LISTED = 1000  # ListOptimizations pages through the newest this many
_WATCH_SHARE_S = 0.1  # watchers asking within this share one status
_CAPTURES_KEPT = 1000  # per program, when CapturePolicy.max_examples is 0


def _check_struct(message, max_depth: int, where: str) -> None:
    try:
        structs.check_struct(message, max_depth, where)
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc)) from None


def check_spec_values(spec: pb.ProgramSpec, max_depth: int) -> None:
    """Every Struct a spec carries holds only set values, nested at most `max_depth` deep."""
    for number, demo in enumerate(spec.demos):
        _check_struct(demo, max_depth, f"demos[{number}]")
    for number, inputs in enumerate(spec.warmup_inputs):
        _check_struct(inputs, max_depth, f"warmup_inputs[{number}]")
    for field, message in spec.ListFields():  # module_options and any other Struct the spec grows
        if isinstance(message, struct_pb2.Struct):
            _check_struct(message, max_depth, field.name)
    if spec.HasField("fallback") and spec.fallback.HasField("static_outputs"):
        _check_struct(spec.fallback.static_outputs, max_depth, "fallback.static_outputs")


def _job_store():
    """The jobs' store calls as callers should see them: UNAVAILABLE while it is unreachable, never UNKNOWN."""
    return unavailable_while_down("optimization jobs cannot be started, read or cancelled until it is back")


def _fallback_misfit(fallback_inputs: list[str], fallback_outputs: list[str], inputs: list[str], takes_history: bool,
                     declared_outputs: list[str] | tuple[str, ...]) -> str:
    """Why a fallback program could not answer a program's calls ("" when it can): it must take no input the calls
    lack (a session's history aside, where the program has one) and give the outputs the program declares."""
    lacking = set(fallback_inputs) - set(inputs) - ({HISTORY_INPUT} if takes_history else set())
    missing = [name for name in declared_outputs if name not in fallback_outputs]
    return "; ".join(part for part in (f"it needs inputs {', '.join(sorted(lacking))} these calls do not have" if lacking else "",
                                       f"it does not give {', '.join(missing)}" if missing else "") if part)


class DSPyPoolService(pb_grpc.DSPyPoolServicer):
    def __init__(self, config: ServerConfig, pool: Pool, registry: ProgramRegistry, sessions: SessionStore,
                 breakers: AsyncBreakerGuard, cache: TieredCache, stats_sync: StatsSync, up: Callable[[], bool] = lambda: True,
                 datasets=None, jobs=None, peers: Peers | None = None) -> None:
        self.config = config
        self.peers = peers  # the other front processes (--front-processes N), or None
        self.datasets = datasets
        self.jobs = jobs  # None when optimization is off
        self.stats_sync = stats_sync  # adds this front's counts to the store's, reads back every front's and replica's
        self.stats = stats_sync.stats
        self.captures = Captures(max_bytes=config.optimize.capture_max_bytes)
        self._example_max_bytes = config.optimize.example_max_bytes
        self.up = up  # False while draining, or while a supervised local LM (the sim) is down and being restarted
        self.pool = pool
        self.registry = registry
        self.sessions = sessions
        self.executor = Executor(pool, sessions, config.sessions.max_in_flight, config.sessions.history_max_bytes)
        lm_endpoint = mask_url(config.lm.api_base) if config.lm.api_base else config.lm.model  # named in status: no credentials
        self.resilient = ResilientExecutor(self.executor, registry, resilience_settings(config), lm_endpoint, breakers, cache)
        self.started_at = time.monotonic()
        self._register_lock = asyncio.Lock()
        self._failure_log = logs.RateLimiter()
        self._shapes: dict[str, _CallShape] = {}  # program key (its content) -> what every call checks of it
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop Execute last ran on
        self._request_ids = _RequestIds()
        # Read on every call: copied out of the config once.
        self._default_deadline_s = config.server.effective_default_deadline_s
        self._max_deadline_s = config.server.max_deadline_s
        self._max_input_depth = config.server.max_input_depth
        self._shared_status: tuple[float, asyncio.Future] | None = None  # (built at, the status) for watchers
        self._watches_closed = asyncio.Event()  # the server is stopping: status watches end
        limit = config.server.client_max_in_flight
        self._client_limits = ClientLimits(limit) if limit else None
        # GetSession: the history a program receives, in a reply well within any client's receive limit (4 MiB by
        # default; the server sends at most twice --max-message-bytes) even where numbers take more room than in JSON.
        self._session_reply_bytes = min(config.sessions.history_max_bytes, config.server.max_message_bytes // 2)

    async def _abort(self, context: grpc.aio.ServicerContext, error: errors.PoolError) -> None:
        await context.abort_with_status(to_grpc_status(error))

    # -- programs -----------------------------------------------------------
    async def RegisterProgram(self, request: pb.RegisterProgramRequest, context):
        try:
            return await self.register(request.spec, _deadline(context, self.config, asyncio.get_running_loop()))
        except errors.PoolError as error:
            await self._abort(context, error)

    async def register(self, spec: pb.ProgramSpec, deadline: float) -> pb.Program:
        """Check, build on a worker, store: a new version, or the latest when its content is unchanged."""
        if spec.fallback.program:  # one another front or replica registered just now: look again before refusing
            with contextlib.suppress(errors.NotFound, errors.Unavailable):
                await self.registry.find(spec.fallback.program)
        self._check_register(spec)
        async with self._register_lock:  # one version number per distinct content
            existing = self.registry.existing(spec)
            if existing is not None:
                program = pb.Program()
                program.CopyFrom(existing.program)
                program.created = False
                return program
            ref = program_ref(spec)
            shape = await self.pool.validate(ref, deadline)
            try:
                self._check_built(spec, list(shape.input_names), list(shape.output_names), shape.takes_history)
            except errors.InvalidArgument:
                self.pool.forget_programs([ref.key])  # built to be checked, never registered: no worker holds it for calls
                raise
            entry = await self.registry.add(spec, list(shape.input_names), list(shape.output_names), shape.takes_history)
        log.info("program_registered", program=spec.name, version=entry.program.version, key=entry.key,
                 module=spec.module or "predict", created=entry.program.created)
        return entry.program

    async def register_optimized(self, spec: pb.ProgramSpec, meta: pb.ProgramMeta) -> pb.Program:
        """An optimization's result as a new version: built on a worker first (its saved state must load), then stored."""
        async with self._register_lock:
            shape = await self.pool.validate(program_ref(spec), asyncio.get_running_loop().time() + _VALIDATE_TIMEOUT_S)
            if self.registry.known_base(spec.name) is None:  # deleted while the job ran or this build did (DeleteProgram
                # takes the lock too): storing the result would bring the name back as an optimized version alone
                raise errors.PoolError(f"program {spec.name!r} was deleted while it was being optimized; the result is not kept",
                                       kind=errors.ErrorKind.FAILED_PRECONDITION)
            entry = await self.registry.add(spec, list(shape.input_names), list(shape.output_names), shape.takes_history, meta=meta)
        log.info("program_optimized", program=spec.name, version=entry.program.version, job_id=meta.job_id,
                 baseline=round(meta.baseline_score, 4), optimized=round(meta.optimized_score, 4))
        return entry.program

    def _check_register(self, spec: pb.ProgramSpec) -> None:
        """Everything the front can check before a worker builds the spec."""
        if not self.pool.ready:
            raise errors.Unavailable("the server is starting: workers are not ready yet; retry shortly")
        size = spec.ByteSize()
        if size > self.config.server.max_program_bytes:
            raise errors.InvalidArgument(f"the program spec takes {size:,} bytes serialized; the limit is "
                                         f"{self.config.server.max_program_bytes:,} (--max-program-bytes)")
        check_spec_values(spec, self.config.server.max_input_depth)
        check_spec(spec, self.pool.module_kinds)
        try:
            chain = chain_for(spec, self.resilient.settings.default_chain)
        except ValueError as exc:
            raise errors.InvalidArgument(f"fallback: {exc}") from None
        self.resilient.check_fallback_lm(chain)
        try:
            policy_for(spec, self.config.resilience.result_cache_ttl_s, Step.CACHE in chain.steps)
        except ValueError as exc:
            raise errors.InvalidArgument(str(exc)) from None
        if chain.program:
            if chain.program == spec.name:
                raise errors.InvalidArgument("a program cannot be its own fallback")
            try:
                self.registry.get(chain.program)
            except errors.NotFound:
                raise errors.InvalidArgument(f"fallback program {chain.program!r} is not registered; register it first") from None
            cycle = self._fallback_path(chain.program, spec.name)
            if cycle:  # harmless to run, but neither could then be deleted: each would be the other's fallback
                raise errors.InvalidArgument(f"fallback programs would form a cycle: {' -> '.join([spec.name, *cycle])}")
        if spec.HasField("capture"):
            capture = spec.capture
            try:
                check_capture(spec.name, capture.sample_rate, capture.max_examples, capture.dataset, capture.split, capture.good_score)
            except ValueError as exc:
                raise errors.InvalidArgument(str(exc)) from None

    def _check_built(self, spec: pb.ProgramSpec, inputs: list[str], outputs: list[str], takes_history: bool) -> None:
        """What needs the built program's inputs and outputs. Warm-up inputs must be valid calls. A fallback must be able
        to answer the program's calls: static outputs name the program's outputs and give every declared one; a
        fallback program takes no input the program's calls lack and gives its declared outputs."""
        for number, warmup in enumerate(spec.warmup_inputs):
            try:
                check_inputs(spec.name, warmup.keys(), inputs, takes_history)
            except errors.InvalidArgument as error:
                raise errors.InvalidArgument(f"warmup_inputs[{number}]: {error.message}") from None
        declared = spec_fields.declared_fields(spec).outputs
        chain = chain_for(spec, self.resilient.settings.default_chain)
        if Step.STATIC in chain.steps:
            given = set(spec.fallback.static_outputs.keys())
            unknown, missing = given - set(outputs), [name for name in declared if name not in given]
            if unknown or missing:
                raise errors.InvalidArgument(
                    "fallback.static_outputs must give the program's outputs: "
                    + "; ".join(part for part in (f"{', '.join(sorted(unknown))} not among {', '.join(outputs)}" if unknown else "",
                                                  f"missing {', '.join(missing)}" if missing else "") if part))
        if chain.program:
            simpler = self.registry.get(chain.program).program
            problem = _fallback_misfit(list(simpler.input_names), list(simpler.output_names), inputs, takes_history, declared)
            if problem:
                raise errors.InvalidArgument(f"fallback program {chain.program!r} cannot answer this program's calls: {problem}")
        # And as a fallback itself: a new version must still answer the calls of the programs that name it.
        for entry in self._naming_as_fallback(spec.name):
            caller = entry.program
            problem = _fallback_misfit(inputs, outputs, list(caller.input_names), entry.takes_history,
                                       spec_fields.declared_fields(caller.spec).outputs)
            if problem:
                raise errors.InvalidArgument(f"{entry.name!r} (version {entry.version}) names {spec.name!r} as its fallback "
                                             f"program, and this version could not answer its calls: {problem}")

    def _naming_as_fallback(self, name: str) -> list[ProgramVersion]:
        """The versions of other programs whose fallback program is `name`."""
        return [entry for entry in self.registry.list(all_versions=True)
                if entry.name != name and entry.program.spec.fallback.program == name]

    def _fallback_path(self, start: str, name: str) -> list[str]:
        """The fallback programs from `start` that lead back to `name` (any version's), or [] when none do."""
        stack, seen = [[start]], set()
        while stack:
            path = stack.pop()
            if path[-1] == name:
                return path
            if path[-1] in seen:
                continue
            seen.add(path[-1])
            for entry in self.registry.versions(path[-1]).values():
                if entry.program.spec.fallback.program:
                    stack.append([*path, entry.program.spec.fallback.program])
        return []

    def _check_no_fallback_to(self, name: str) -> None:
        """A program another names as its fallback stays until that one is gone: deleting it would leave the fallback
        failing on every call it should have rescued."""
        dependents: dict[str, list[int]] = {}
        for entry in self._naming_as_fallback(name):
            dependents.setdefault(entry.name, []).append(entry.version)
        if dependents:
            named = "; ".join(f"{other} (version {', '.join(map(str, sorted(versions)))})"
                              for other, versions in sorted(dependents.items())[:10])
            raise errors.PoolError(f"program {name!r} is the fallback program of {named}"
                                   f"{' and others' if len(dependents) > 10 else ''}: delete those versions first",
                                   kind=errors.ErrorKind.FAILED_PRECONDITION)

    async def GetProgram(self, request: pb.GetProgramRequest, context):
        try:
            return (await self.registry.find(request.name, request.version)).program
        except errors.PoolError as error:
            await self._abort(context, error)

    async def ListPrograms(self, request: pb.ListProgramsRequest, context):
        try:
            listing = _ALL_VERSIONS if request.all_versions else _LATEST_VERSIONS
            page = paging.take_page(self.registry.list(request.all_versions), listing, request.page_size, request.page_token)
        except errors.PoolError as error:
            await self._abort(context, error)
            return
        return pb.ListProgramsResponse(programs=[entry.program for entry in page.items], next_page_token=page.next_token)

    async def DeleteProgram(self, request: pb.DeleteProgramRequest, context):
        try:
            async with self._register_lock:  # not between an optimization's build and its store (register_optimized)
                before = self.registry.versions(request.name)
                if request.version == 0 or set(before) == {request.version}:
                    with contextlib.suppress(errors.Unavailable):  # a program another replica registered may name it
                        await self.registry.refresh()
                    self._check_no_fallback_to(request.name)
                deleted = await self.registry.delete(request.name, request.version)
        except errors.PoolError as error:
            await self._abort(context, error)
            return
        log.info("program_deleted", program=request.name, versions=deleted)
        # What this front holds per program goes with it: statistics, breakers, worked-out facts (a client that
        # registers, calls and deletes programs in a loop grew /metrics and GetPoolStatus without bound).
        every_version = self.registry.known_base(request.name) is None
        await self.stats_sync.forget(request.name, None if every_version else list(deleted))
        keys = [before[number].key for number in deleted if number in before]
        self.resilient.forget(request.name, keys, every_version)
        self.pool.forget_programs(keys)
        for key in keys:
            self._shapes.pop(key, None)
        return pb.DeleteProgramResponse(deleted_versions=deleted)

    # -- execute ------------------------------------------------------------
    def _check_request(self, request: pb.ExecuteRequest, name: str, inputs: struct_pb2.Struct) -> None:
        if not name:
            raise errors.InvalidArgument("program is required")
        if len(request.request_id) > _REQUEST_ID_MAX:
            raise errors.InvalidArgument(f"request_id longer than {_REQUEST_ID_MAX} characters")
        session_id = request.session_id
        if session_id:
            check_session_id(session_id)
        if request.max_optimization_wait_ms < 0:
            raise errors.InvalidArgument("max_optimization_wait_ms must be >= 0")
        _check_struct(inputs, self._max_input_depth, "inputs")

    def _shape(self, program: ProgramVersion) -> _CallShape:
        shape = self._shapes.get(program.key)
        if shape is None:
            if len(self._shapes) >= _SHAPES_KEPT:
                self._shapes.clear()
            names = frozenset(program.program.input_names)
            shape = self._shapes[program.key] = _CallShape(None if HISTORY_INPUT in names else tuple(names),
                                                          program.program.spec.capture.sample_rate,
                                                          routing.traditional(program.version))
        return shape

    def _check_inputs(self, name: str, inputs: struct_pb2.Struct, program: ProgramVersion, shape: _CallShape) -> None:
        """check_inputs, answered at once when the call names exactly the program's inputs (the usual case)."""
        fields = inputs.fields
        expected = shape.exact_inputs
        if expected is not None and len(fields) == len(expected):
            for input_name in expected:
                if input_name not in fields:
                    break
            else:
                return  # the same names, and no `history` among them
        check_inputs(name, set(fields), program.input_names, program.takes_history)

    async def _route(self, request: pb.ExecuteRequest, request_id: str, deadline: float) -> tuple[ProgramVersion, routing.Route, str]:
        """The version this call runs (the policy, the call's mode, its session), and a fallback reason if any."""
        if request.version:
            program = await self.registry.find(request.program, request.version)
            return program, routing.Route(program.version, "version"), ""
        try:
            self.registry.get(request.program)
        except errors.NotFound:
            await self.registry.find(request.program)  # refreshes once if another replica registered it
        base = self.registry.base_version(request.program)
        if not request.mode and request.program not in self.registry.policies:
            # No policy and no mode asked for: traditional, the base version (what routing.route answers then).
            return base, routing.traditional(base.version), ""
        policy = self.registry.policy(request.program)
        try:
            view = routing.PolicyView(routing.parse_mode(policy.mode or "traditional"), policy.base_version or base.version,
                                      policy.optimized_version, policy.hybrid_percent, policy.sticky_sessions)
            route = routing.route(view, 0, request.mode, request.session_id, request_id)
            if route.pending and request.max_optimization_wait_ms and self.jobs is not None:
                # The optimized version was asked for while the first optimization still runs: wait a bounded time,
                # at most half of what is left of the deadline, so that the base version still has time to answer.
                left_s = deadline - asyncio.get_running_loop().time()
                wait_s = min(request.max_optimization_wait_ms / 1000.0, left_s * _OPTIMIZATION_WAIT_SHARE)
                if await self.jobs.wait_for_job(request.program, wait_s):
                    with contextlib.suppress(errors.Unavailable):  # the job may have run on another front or replica
                        await self.registry.refresh()
                    policy = self.registry.policy(request.program)
                    view = routing.PolicyView(view.mode, view.base_version, policy.optimized_version, view.hybrid_percent,
                                              view.sticky_sessions)
                    route = routing.route(view, 0, request.mode, request.session_id, request_id)
        except ValueError as exc:
            raise errors.InvalidArgument(str(exc)) from None
        program = self.registry.get(request.program, route.version)
        return program, route, routing.PENDING if route.pending else ""

    def _capture(self, request_id: str, program: ProgramVersion, inputs: struct_pb2.Struct, outputs: struct_pb2.Struct) -> None:
        """Keep a sampled call for its feedback; one too large to become an example is kept for its score only."""
        size = inputs.ByteSize() + outputs.ByteSize()
        name, version = program.name, program.version
        captured = (Captured(name, version, structs.struct_to_dict(inputs), structs.struct_to_dict(outputs), size)
                    if size <= self._example_max_bytes else Captured(name, version, None, None))
        self.captures.keep(request_id, captured, program.program.spec.capture.max_examples or _CAPTURES_KEPT)

    async def _compare(self, request: pb.ExecuteRequest, version: int, request_id: str, deadline: float) -> pb.EvaluationArm:
        """Evaluation mode's other arm: the same inputs on the other version, outside the session (one turn per call)."""
        started = time.perf_counter()  # not loop.time(): uvloop's counts whole milliseconds
        program = self.registry.get(request.program, version)
        other = pb.ExecuteRequest(program=request.program, version=version, request_id=request_id + ":evaluation")
        other.inputs.CopyFrom(request.inputs)
        arm = pb.EvaluationArm(version=version, score=program.program.meta.optimized_score)
        try:
            served = await self.resilient.execute(program, other, other.request_id, deadline)
            arm.outputs.CopyFrom(served.result.outputs)
        except errors.PoolError as error:
            arm.error = f"{error.kind.value}: {error.message}"[:500]
        arm.latency_ms = (time.perf_counter() - started) * 1000.0
        self.stats.record(request.program, version, "evaluation", arm.latency_ms, bool(arm.error))
        return arm

    @checks_decoding
    async def Execute(self, request: pb.ExecuteRequest, context):
        if type(request) is Undecodable:
            await undecodable(request, context)
        loop = self._loop
        if loop is None or not loop.is_running():  # asking for the running loop costs a getpid syscall on 3.11
            loop = self._loop = asyncio.get_running_loop()
        received = loop.time()  # the deadline's clock (the dispatcher's timers run on it)
        # The timings' clock: uvloop's loop.time() counts whole milliseconds, too coarse for a call's
        # total (it could come out under the worker's own execution time).
        started = time.perf_counter()
        # _deadline, with the config's numbers read once at start-up (this runs on every call).
        remaining = context.time_remaining()
        if remaining is None:
            deadline = received + self._default_deadline_s
        else:
            budget = min(remaining, self._max_deadline_s)
            deadline = received + budget - min(_DEADLINE_MARGIN_S, budget * _DEADLINE_MARGIN_SHARE)
        request_id = request.request_id or self._request_ids.next()
        name = request.program
        bound = logs.bind_call(request_id, name)
        program = route = client = None
        try:
            if self._client_limits is not None:
                client = self._client_limits.enter(client_of(context.invocation_metadata(), context.peer()))
            inputs = request.inputs
            self._check_request(request, name, inputs)
            registry = self.registry
            # The usual call, routed here: no version, no mode, a program with no policy runs its base version.
            program = None if request.version or request.mode or name in registry.policies else registry.bases.get(name)
            if program is not None:
                shape = self._shapes.get(program.key) or self._shape(program)
                route, pending = shape.traditional, ""
                if route.version != program.version:  # the same content registered again under a new number
                    route = routing.traditional(program.version)
            else:
                program, route, pending = await self._route(request, request_id, deadline)
                shape = self._shapes.get(program.key) or self._shape(program)
            self._check_inputs(name, inputs, program, shape)
            if route.compare_with:
                compare = asyncio.ensure_future(self._compare(request, route.compare_with, request_id, deadline))
                served = await self.resilient.execute(program, request, request_id, deadline)
                evaluation = await compare
            else:
                served = await self.resilient.execute(program, request, request_id, deadline)
                evaluation = None
        except errors.PoolError as error:
            if route is not None and not error.meaning.caller_fault and self.registry.holds(program.name, program.version):
                self.stats.record(program.name, program.version, route.label, (time.perf_counter() - started) * 1000.0, True)
            self._log_failure(error)
            if error.kind is errors.ErrorKind.DEADLINE_EXCEEDED and remaining is not None and remaining > self._max_deadline_s:
                error.message += f" (the server caps a call's deadline at --max-deadline-s {self._max_deadline_s:g} s)"
            await self._abort(context, error)
            return
        finally:
            logs.reset_call(bound)
            if client is not None:
                self._client_limits.leave(client)
        result = served.result
        total_ms = (time.perf_counter() - started) * 1000.0
        name, version = program.name, program.version
        # An answer from the fallback chain is not the program's: it counts as the version's error (the triggers and
        # the A/B figures see the outage) and is never captured as an example of the program.
        fell_back = bool(served.fallback_reason)
        if self.registry.holds(name, version):  # a call that ran on a version deleted meanwhile counts for nothing
            self.stats.record(name, version, route.label, total_ms, fell_back)
        if shape.capture_rate > 0 and not fell_back and sampled(request_id, shape.capture_rate):
            self._capture(request_id, program, request.inputs, result.outputs)
        # Scalars through the constructor, sub-messages filled in place (no temporary messages to copy);
        # fields left at their defaults are not set at all.
        response = pb.ExecuteResponse(program=name, program_version=version, request_id=request_id, served_by=served.served_by,
                                      execution_mode=route.label)
        worker = result.worker
        if worker is not None:
            worker_info = response.worker
            worker_info.id, worker_info.pid = worker.id, worker.pid
        timings = response.timings
        timings.queue_wait_ms, timings.execution_ms, timings.total_ms = max(0.0, total_ms - result.execution_ms), result.execution_ms, total_ms
        usage, tokens = response.usage, result.usage
        usage.prompt_tokens, usage.completion_tokens, usage.total_tokens = tokens.prompt_tokens, tokens.completion_tokens, tokens.total_tokens
        fallback_reason = served.fallback_reason or pending
        if fallback_reason:
            response.fallback_reason = fallback_reason
        session = served.session
        if request.session_id:
            response.session_id = request.session_id
        if session.started:
            response.session_started = True
        if session.lost:
            response.session_lost = session.lost
        if served.cache_level:
            response.cache_level = served.cache_level
        response.outputs.CopyFrom(result.outputs)
        if evaluation is not None:
            response.evaluation.CopyFrom(evaluation)
        return response

    # -- optimization ---------------------------------------------------------
    async def AddExamples(self, request: pb.AddExamplesRequest, context):
        try:
            return await self.datasets.add(request)
        except errors.PoolError as error:
            await self._abort(context, error)

    async def GetDataset(self, request: pb.GetDatasetRequest, context):
        try:
            return await self.datasets.get(request.name)
        except errors.PoolError as error:
            await self._abort(context, error)

    async def ListDatasets(self, request: pb.ListDatasetsRequest, context):
        try:
            datasets = sorted(await self.datasets.list(), key=lambda dataset: dataset.name)
            page = paging.take_page(datasets, _DATASETS, request.page_size, request.page_token)
        except errors.PoolError as error:
            await self._abort(context, error)
            return
        return pb.ListDatasetsResponse(datasets=page.items, next_page_token=page.next_token)

    async def DeleteDataset(self, request: pb.DeleteDatasetRequest, context):
        try:
            return pb.DeleteDatasetResponse(deleted=await self.datasets.delete(request.name))
        except errors.PoolError as error:
            await self._abort(context, error)

    async def StartOptimization(self, request: pb.StartOptimizationRequest, context):
        try:
            async with _job_store():
                return await self._jobs().start_job(request)
        except errors.PoolError as error:
            await self._abort(context, error)

    async def GetOptimization(self, request: pb.GetOptimizationRequest, context):
        try:
            async with _job_store():
                return await self._jobs().get(request.job_id)
        except errors.PoolError as error:
            await self._abort(context, error)

    async def ListOptimizations(self, request: pb.ListOptimizationsRequest, context):
        try:
            async with _job_store():
                jobs = sorted(await self._jobs().list(request.program, limit=_JOBS_LISTED), key=_JOBS.key)
            listing = dataclasses.replace(_JOBS, name=f"jobs:{request.program}")  # a token names its program's listing
            page = paging.take_page(jobs, listing, request.page_size, request.page_token)
        except errors.PoolError as error:
            await self._abort(context, error)
            return
        return pb.ListOptimizationsResponse(jobs=page.items, next_page_token=page.next_token)

    async def WatchOptimization(self, request: pb.GetOptimizationRequest, context):
        try:
            async with _job_store():
                async for job in self._jobs().watch(request.job_id):
                    yield job
        except errors.PoolError as error:
            await self._abort(context, error)

    async def CancelOptimization(self, request: pb.CancelOptimizationRequest, context):
        try:
            async with _job_store():
                cancelled = await self._jobs().cancel(request.job_id)
        except errors.PoolError as error:
            await self._abort(context, error)
            return
        if cancelled.elsewhere and self.peers is not None and not _front_scoped(context):
            await self.peers.cancel_optimization(request.job_id)  # the front running it stops it
        return cancelled.job

    def _jobs(self):
        if self.jobs is None:
            raise errors.PoolError("optimization is off on this server (--optimizer-workers 0)", kind=errors.ErrorKind.FAILED_PRECONDITION)
        return self.jobs

    async def SetExecutionPolicy(self, request: pb.SetExecutionPolicyRequest, context):
        try:
            await self.registry.find(request.policy.program)  # refreshes once if another front or replica registered it
            return await self.registry.set_policy(self._checked_policy(request.policy))
        except errors.PoolError as error:
            await self._abort(context, error)

    async def GetExecutionPolicy(self, request: pb.GetExecutionPolicyRequest, context):
        try:
            await self.registry.find(request.program)  # refreshes once if another front or replica registered it
            return self.registry.policy(request.program)
        except errors.PoolError as error:
            await self._abort(context, error)

    def _check_auto_job(self, program: str, template: pb.StartOptimizationRequest) -> None:
        """The checks StartOptimization makes of the job (its dataset aside: it may fill up before a trigger fires)."""
        job = pb.StartOptimizationRequest()
        job.CopyFrom(template)
        job.program = program
        try:
            if self.jobs is not None:
                self.jobs.check_request(job)
            else:  # optimization is off here, maybe not on a replica: what needs no optimizer workers
                catalog.check_budget(job.budget.max_lm_calls, job.budget.max_seconds)
                catalog.check_optimizer(job.optimizer, structs.struct_to_dict(job.options))
        except (ValueError, errors.InvalidArgument) as exc:  # ValueError: an unset Value in the options
            raise errors.InvalidArgument(f"auto_optimize.job: {getattr(exc, 'message', exc)}") from None
        if not job.dataset:
            raise errors.InvalidArgument("auto_optimize.job.dataset is required")

    def _checked_policy(self, policy: pb.ExecutionPolicy) -> pb.ExecutionPolicy:
        self.registry.get(policy.program)  # NOT_FOUND for an unknown program
        checked = pb.ExecutionPolicy()
        checked.CopyFrom(policy)
        checked.mode = policy.mode or "traditional"
        checked.promotion = policy.promotion or "manual"
        try:
            routing.parse_mode(checked.mode)
        except ValueError as exc:
            raise errors.InvalidArgument(str(exc)) from None
        if checked.promotion not in ("manual", "auto"):
            raise errors.InvalidArgument(f"promotion {checked.promotion!r} must be manual or auto")
        if not 0 <= checked.hybrid_percent <= 100:
            raise errors.InvalidArgument("hybrid_percent must be within 0..100")
        auto = checked.auto_optimize
        if not math.isfinite(checked.min_improvement):
            raise errors.InvalidArgument(f"min_improvement must be a finite number, not {checked.min_improvement}")
        for field, value in (("min_dev_examples", checked.min_dev_examples),
                             ("auto_optimize.after_feedback_examples", auto.after_feedback_examples),
                             ("auto_optimize.on_score_drop", auto.on_score_drop), ("auto_optimize.min_interval_s", auto.min_interval_s)):
            if not (math.isfinite(value) and value >= 0):
                raise errors.InvalidArgument(f"{field} must be a finite number >= 0, not {value}")
        if not 0 <= auto.on_error_rate <= 1:
            raise errors.InvalidArgument(f"auto_optimize.on_error_rate must be within 0..1 (0: off), not {auto.on_error_rate}")
        triggered = auto.after_feedback_examples or auto.on_score_drop or auto.on_error_rate
        if triggered and not auto.job.optimizer:
            raise errors.InvalidArgument("auto_optimize.job.optimizer is required when a trigger is set (without one no job "
                                         "would ever start)")
        if triggered and self.jobs is None and not self.registry.store.shared:  # replicas may run them; this one alone not
            raise errors.PoolError("optimization is off on this server (--optimizer-workers 0): no automatic job would "
                                   "ever start", kind=errors.ErrorKind.FAILED_PRECONDITION)
        if checked.HasField("auto_optimize") and auto.job.optimizer:
            self._check_auto_job(policy.program, auto.job)
        for field, version in (("base_version", checked.base_version), ("optimized_version", checked.optimized_version)):
            if version:
                try:
                    self.registry.get(policy.program, version)
                except errors.NotFound:
                    raise errors.InvalidArgument(f"{field} {version}: program {policy.program!r} has no such version") from None
        return checked

    async def RecordFeedback(self, request: pb.RecordFeedbackRequest, context):
        try:
            return await self.record_feedback(request)
        except errors.NotFound as missing:
            if self.peers is not None and not _front_scoped(context):
                answer = await self.peers.record_feedback(request)  # the call may have run on another front
                if answer is not None:
                    return answer
            await self._abort(context, missing)
        except errors.PoolError as error:
            await self._abort(context, error)

    async def record_feedback(self, request: pb.RecordFeedbackRequest) -> pb.RecordFeedbackResponse:
        """Feedback on a captured call: its score to the version's statistics; expected outputs (or a good score) to a dataset."""
        # Checked before the capture is taken, so a request refused here can be sent again, corrected.
        if request.has_score and not abs(request.score) <= MAX_FEEDBACK_SCORE:  # NaN fails this too
            raise errors.InvalidArgument(f"score must be a finite number within ±{MAX_FEEDBACK_SCORE:g} (got {request.score!r})")
        if request.HasField("expected_outputs"):
            _check_struct(request.expected_outputs, self._max_input_depth, "expected_outputs")
        captured = self.captures.peek(request.request_id)
        if captured is None:
            raise errors.NotFound(f"no captured call {request.request_id!r} here: the program does not capture it (ProgramSpec.capture), "
                                  "it was not sampled, its feedback was given already, or it aged out")
        if captured.inputs is None and request.HasField("expected_outputs"):
            raise errors.InvalidArgument(f"call {request.request_id!r} was too large to become an example (over --example-max-bytes "
                                         f"{self._example_max_bytes}): send a score only")
        self.captures.take(request.request_id)
        capture = self.registry.get(captured.program, captured.version).program.spec.capture
        expected = structs.struct_to_dict(request.expected_outputs) if request.HasField("expected_outputs") else None
        if expected is None and request.has_score and request.score >= (capture.good_score or 1.0):
            expected = captured.outputs  # a good answer is an example as it stands (None: kept for its score only)
        response = pb.RecordFeedbackResponse(program=captured.program, version=captured.version)
        if expected:
            example = pb.Example()
            example.inputs.update(captured.inputs)
            example.outputs.update(expected)
            dataset = dataset_for(captured.program, capture.dataset)
            try:
                await self.datasets.add(pb.AddExamplesRequest(dataset=dataset, split=capture.split or "train", examples=[example]))
            except errors.PoolError:
                self.captures.keep(request.request_id, captured, capture.max_examples or _CAPTURES_KEPT)  # not used up: it may be sent again
                raise
            response.example_added, response.dataset = True, dataset
        self.stats.record_feedback(captured.program, captured.version, request.score if request.has_score else None,
                                   response.example_added)
        return response

    def observe(self, program: str) -> Observation:
        """What the optimization triggers see of a program: its served version's feedback, errors and dev score."""
        policy = self.registry.policy(program)
        version = policy.optimized_version or self.registry.base_version(program).program.version
        entry = self.registry.get(program, version)
        count, mean = self.stats.feedback(program, version)
        calls, error_rate = self.stats.recent(program, version)  # the error-rate trigger asks about now, not all time
        dev_score = entry.program.meta.optimized_score if entry.program.meta.job_id else 0.0
        return Observation(self.stats.examples(program), count, mean, dev_score, calls, error_rate,
                           job_active=self.jobs is not None and self.jobs.active(program))

    async def GetProgramStats(self, request: pb.GetProgramStatsRequest, context):
        try:
            await self.registry.find(request.program)  # refreshes once if another front or replica registered it
        except errors.PoolError as error:
            await self._abort(context, error)
            return
        stats = pb.ProgramStats(program=request.program, policy=self.registry.policy(request.program))
        # A peer front asking gets only the counts this front has not added to the store yet: it has the store's sums.
        with_stored = not _front_scoped(context)
        # Only versions that exist: another replica's calls to a version deleted meanwhile may have added counts to it.
        feedbacks = self.stats.feedbacks(request.program, with_stored)
        for arm in self.stats.view(request.program, with_stored):
            if not self.registry.holds(request.program, arm.version):
                continue
            count, mean = feedbacks.get(arm.version, (0, 0.0))
            stats.arms.add(version=arm.version, arm=arm.arm, calls=arm.calls, errors=arm.errors, latency_p50_ms=arm.p50_ms,
                           latency_p95_ms=arm.p95_ms, error_rate=arm.error_rate, feedback_count=count, feedback_score_mean=mean)
        if self.peers is not None and not _front_scoped(context):  # each front counts the calls it served
            stats = merge_program_stats(stats, await self.peers.program_stats(request))
        return stats

    async def _session_count(self) -> int:
        try:
            # Bounded: a paused Redis holds a read for its socket timeout (5 s), past a probe's deadline.
            return await asyncio.wait_for(self.sessions.count(), _SESSION_COUNT_TIMEOUT_S)
        except (errors.PoolError, asyncio.TimeoutError):
            return -1  # the store is unreachable or slow: status still answers

    def _log_failure(self, error: errors.PoolError) -> None:
        """LM and worker failures at warning, rate limited per kind (an outage fails every call); the caller's own at debug."""
        if errors.meaning(error.kind).caller_fault:
            log.debug("execute_failed", kind=error.kind.value, message=error.message[:300])
            return
        allowed, left_out = self._failure_log.allow(error.kind.value, time.monotonic())
        if allowed:
            log.warning("execute_failed", kind=error.kind.value, error_type=error.error_type, message=error.message[:300],
                        worker_id=error.metadata.get("worker_id"), left_out_since_last=left_out or None)

    # -- sessions -----------------------------------------------------------
    async def GetSession(self, request: pb.GetSessionRequest, context):
        try:
            session = await self.sessions.get(request.session_id, time.time())
        except errors.PoolError as error:
            await self._abort(context, error)
            return
        shown = newest_turns(session.turns, self._session_reply_bytes)
        message = pb.Session(session_id=session.session_id, preferred_worker=self.sessions.local(session.session_id).preferred_worker,
                             turns_left_out=len(session.turns) - len(shown))
        for turn in shown:
            entry = message.turns.add(program=turn.program)
            structs.dict_to_struct(json.loads(turn.inputs_json), entry.inputs)
            structs.dict_to_struct(json.loads(turn.outputs_json), entry.outputs)
        message.created_at.FromNanoseconds(int(session.created_at * 1e9))
        message.last_used_at.FromNanoseconds(int(session.last_used_at * 1e9))
        return message

    async def CloseSession(self, request: pb.CloseSessionRequest, context):
        try:
            session = await self.sessions.close(request.session_id)
        except errors.PoolError as error:
            await self._abort(context, error)
            return
        return pb.CloseSessionResponse(turns=len(session.turns))

    # -- status -------------------------------------------------------------
    async def WatchPoolStatus(self, request: pb.WatchPoolStatusRequest, context):
        interval = min(60.0, max(0.1, request.interval_s or 1.0))
        while not self._watches_closed.is_set():
            yield await self._watched_status()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._watches_closed.wait(), interval)
        await self._abort(context, errors.Unavailable("the server is stopping; watch again once it is back"))

    def close_watches(self) -> None:
        """End every status watch UNAVAILABLE, saying the server is stopping: left open, gRPC cancels them once the
        stop's grace runs out, and a client reads CANCELLED or a reset connection instead."""
        self._watches_closed.set()

    async def _watched_status(self) -> pb.PoolStatus:
        """group_status, built once for every watcher that asks within _WATCH_SHARE_S (2,000 watchers at 0.1 s each
        built their own, ten times a second, and took most of a core from the calls)."""
        now = time.monotonic()
        shared = self._shared_status
        if shared is not None and now - shared[0] < _WATCH_SHARE_S:
            return await shared[1]
        building = asyncio.ensure_future(self.group_status())
        self._shared_status = (now, building)
        return await building

    async def GetPoolStatus(self, request: pb.GetPoolStatusRequest, context):
        if self.peers is not None and _front_scoped(context):
            return await self.pool_status(answered=False)  # a peer asking for this front alone
        return await self.group_status()

    async def group_status(self) -> pb.PoolStatus:
        """This front's status, merged with the other fronts' when there are several."""
        if self.peers is None:
            return await self.pool_status()
        local, peers = await asyncio.gather(self.pool_status(), self.peers.statuses())
        return merge_status(local, peers)

    async def pool_status(self, answered: bool = True) -> pb.PoolStatus:
        view = self.pool.view()
        _, minimum, maximum = config_module.worker_bounds(self.config)
        status = pb.PoolStatus(
            serving=view.serving and self.up(), queue_depth=view.queue_depth, in_flight=view.in_flight, completed=view.completed,
            failed=view.failed, rejected=view.rejected, worker_restarts=view.restarts, sessions=await self._session_count(),
            programs=len(self.registry), uptime_s=time.monotonic() - self.started_at,
            config=pb.PoolConfig(
                workers=view.target_workers, min_workers=minimum, max_workers=maximum,
                worker_concurrency=self.config.pool.worker_concurrency, max_queue=self.config.pool.max_queue,
                default_deadline_s=self.config.server.effective_default_deadline_s, lm=self.config.lm.model, module_kinds=view.module_kinds,
            ),
            state_store_problem=self.registry.store_problem or self.registry.store.write_problem,
            recycled_workers=view.recycled, scale_events=view.scale_events, workers_warming=view.workers_warming,
            warmup_calls=view.warmup_calls, warmup_failures=view.warmup_failures,
            retries=self.resilient.retries, fallbacks_served=self.resilient.fallbacks_served,
            quarantined_programs=view.quarantined, sessions_evicted=self.sessions.evicted, sessions_refused=self.sessions.refused,
        )
        for level, stats in self.resilient.cache.levels():
            status.cache_levels.add(level=level, hits=stats.hits, misses=stats.misses, entries=stats.entries,
                                    bytes=stats.bytes, evictions=stats.evictions)
        snapshot = view.snapshot
        if snapshot is not None:
            status.queue_wait_p95_ms = snapshot.queue_wait_p95_s * 1000.0
            status.health_score = snapshot.health
            status.calls_per_s = snapshot.throughput_per_s
            status.worker_cpu_percent = snapshot.cpu_percent
        for key, breaker in self.resilient.breakers.snapshots().items():
            status.breakers.add(
                program=key.program, lm_endpoint=key.lm_endpoint, state=str(breaker.state),
                failure_rate=-1.0 if breaker.failure_rate is None else breaker.failure_rate,
                calls_in_window=breaker.calls_in_window, opened_total=breaker.opened_total,
                half_opened_total=breaker.half_opened_total, closed_total=breaker.closed_total,
            )
        front = self.peers.group.index if self.peers is not None else 0
        for worker in view.workers:
            status.workers.add(id=worker.id, pid=worker.pid, state=worker.state, in_flight=worker.in_flight, served=worker.served,
                               failed=worker.failed, rss_bytes=worker.rss_bytes, uptime_s=worker.uptime_s, front=front)
        if self.peers is not None:
            status.fronts.add(index=front, pid=os.getpid(), serving=status.serving, workers=len(view.workers),
                              in_flight=view.in_flight, completed=view.completed, answered=answered)
        return status


def _front_scoped(context) -> bool:
    """A call from another front of the group, about this front alone."""
    return (SCOPE_KEY, SCOPE_FRONT) in (context.invocation_metadata() or ())
