"""Warm-up before a worker takes traffic: build the registered programs, then run their warm-up calls.

    spawn: HELLO ──> state WARMING ──> build each program, one at a time (validate_only, spec sent once)
                                  ──> run each program's warmup_inputs, a program at a time (real calls: caches, connections)
                     state READY <── add to the dispatcher (takes traffic)

A worker that joins a running pool (scale-up, crash replacement, recycle)
would otherwise build each program on the first call that reaches it, and a
program with declared warm-up inputs would pay its cold caches on a user's
call. Warm-up is bounded by `timeout_s` and never keeps capacity out: a
failed or slow warm-up is logged and the worker takes traffic anyway (its
calls then pay what the warm-up did not). A warm-up call that kills the
worker is a crash like any other.

Warm-up is also where a program that breaks workers shows itself: a build
that kills or hangs the worker would otherwise do so to every replacement.
Builds go one at a time and warm-up calls a program at a time, so a worker
that dies or hangs names the one program it was working on: `on_fault(key,
why)` reports it (also late, for a warm-up call whose worker is killed after
warm-up gave up on it), and so does a build that fails. The supervisor counts
these per program and quarantines a program that keeps faulting. A build
that does not finish in time is stuck in the operator's factory, on the
worker's one build thread: every later build there would wait behind it, so
the report says `hung` and the worker is killed.

Modes: "off" (traffic right after HELLO), "build" (programs only, no LM
call), "calls" (build, then the warm-up calls the specs declare; the default,
which costs nothing for specs that declare none).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

from google.protobuf import struct_pb2

from dspy_pool import errors
from dspy_pool.internal import worker_pb2 as wire

__all__ = ["WARMUP_MODES", "OnFault", "WarmupProgram", "WarmupReport", "WarmupSettings", "warm_worker"]

WARMUP_MODES = ("off", "build", "calls")


@dataclass(frozen=True, slots=True)
class WarmupProgram:
    """One registered program as warm-up sees it."""

    key: str  # the worker's cache key (one per program content)
    spec: bytes  # serialized dspy_pool.v1.ProgramSpec
    calls: tuple[struct_pb2.Struct, ...] = ()  # the spec's warmup_inputs


@dataclass(frozen=True, slots=True)
class WarmupSettings:
    mode: str = "calls"
    timeout_s: float = 10.0  # for the whole warm-up of one worker
    max_programs: int = 64  # the first N programs the source lists

    def __post_init__(self) -> None:
        if self.mode not in WARMUP_MODES:
            raise ValueError(f"warm-up mode must be one of {', '.join(WARMUP_MODES)}, got {self.mode!r}")
        if not self.timeout_s > 0 or self.max_programs < 0:
            raise ValueError("warm-up timeout_s must be positive and max_programs not negative")


@dataclass(slots=True)
class WarmupReport:
    programs: int = 0  # programs built
    calls: int = 0  # warm-up calls that succeeded
    failures: int = 0  # builds or calls that failed, or were cut by the timeout
    timed_out: bool = False
    hung: bool = False  # a build never answered: the worker's loop is stuck in it
    died: bool = False  # the worker died during warm-up
    clean: list[str] = field(default_factory=list)  # keys built, and their warm-up calls answered, with no fault
    duration_ms: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first few, for the log


OnFault = Callable[[str, str], None]  # (program key, why): this program broke the worker, or failed to build

_DEATHS = {errors.ErrorKind.WORKER_CRASHED: "died", errors.ErrorKind.WORKER_HUNG: "hung"}
# A build that fails with one of these failed on its own account (the factory raised, the
# spec does not fit): anything else (draining, cancelled) says nothing about the program.
_BUILD_FAULTS = {errors.ErrorKind.INVALID_ARGUMENT, errors.ErrorKind.PROGRAM_ERROR, errors.ErrorKind.INTERNAL}
_BUILDING = "building it"
_CALLING = "running its warm-up calls"


class _Pending:
    """A warm-up request in flight on one worker; the handle completes it like a dispatched call."""

    __slots__ = ("future", "request_id", "key", "doing", "on_fault", "faulted")
    counted = True  # a warm-up call is served by its worker (the warm-up counters tell them apart)

    def __init__(self, key: str, doing: str, on_fault: OnFault | None) -> None:
        self.future: asyncio.Future[tuple[wire.WorkReply | None, errors.PoolError | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self.request_id = 0
        self.key = key
        self.doing = doing
        self.on_fault = on_fault
        self.faulted = False

    def complete(self, handle, reply: wire.WorkReply | None, error: errors.PoolError | None) -> None:
        # Also after warm-up gave up on it: a worker killed for a call it never
        # answered (cancel_timeout) was stuck in this program.
        if error is not None and error.kind in _DEATHS:
            self.fault(f"the worker {_DEATHS[error.kind]} while {self.doing}")
        if not self.future.done():
            self.future.set_result((reply, error))

    def fault(self, why: str) -> None:
        """Report once: the crash that follows a timeout already reported is the same fault."""
        if not self.faulted:
            self.faulted = True
            if self.on_fault is not None:
                self.on_fault(self.key, why)

    @property
    def error(self) -> errors.PoolError | None:
        return self.future.result()[1] if self.future.done() else None


_MAX_REPORTED_ERRORS = 3


async def warm_worker(handle, programs: list[WarmupProgram], settings: WarmupSettings, max_concurrent: int,
                      on_fault: OnFault | None = None) -> WarmupReport:
    """Build `programs` on the worker behind `handle`, then run their warm-up calls; never raises.

    At most `max_concurrent` warm-up calls run at once (the worker's
    concurrency), as the dispatcher would allow. Stops early when the worker
    dies or hangs: the caller decides what happens to it.
    """
    report = WarmupReport()
    started = time.monotonic()
    deadline = asyncio.get_running_loop().time() + settings.timeout_s
    on_fault = _once_per_program(on_fault) if on_fault is not None else None
    built = await _build_all(handle, programs[: settings.max_programs], deadline, report, on_fault)
    report.programs = len(built)
    if report.died or report.hung:
        pass
    elif settings.mode == "calls":
        await _call_all(handle, built, deadline, max_concurrent, report, on_fault)
    else:
        report.clean = [program.key for program in built]
    report.duration_ms = (time.monotonic() - started) * 1000.0
    return report


def _once_per_program(on_fault: OnFault) -> OnFault:
    """One worker's death fails every warm-up call it had in flight: it is one fault, not one per call."""
    reported: set[str] = set()

    def report(key: str, why: str) -> None:
        if key not in reported:
            reported.add(key)
            on_fault(key, why)

    return report


async def _build_all(handle, programs: list[WarmupProgram], deadline: float, report: WarmupReport,
                     on_fault: OnFault | None) -> list[WarmupProgram]:
    """One build at a time (each is quick and local), so a worker that dies or hangs in one names it."""
    built = []
    for number, program in enumerate(programs):
        if asyncio.get_running_loop().time() >= deadline:
            report.timed_out = True
            _fail(report, f"{len(programs) - number} programs not built: timed out")
            break
        pending = _send(handle, wire.WorkRequest(program_key=program.key, spec=program.spec, validate_only=True),
                        deadline, program.key, _BUILDING, on_fault)
        await _settle(handle, [pending], deadline)
        error = pending.error
        if not pending.future.done() or (error is not None and error.kind is errors.ErrorKind.DEADLINE_EXCEEDED):
            # No answer, or the worker's own timeout: either way the build is still stuck in
            # the operator's factory (on the worker's one build thread, or its loop).
            report.timed_out = report.hung = True
            _fail(report, f"building {program.key} timed out")
            pending.fault("the worker hung while building it (no answer within the warm-up timeout)")
            break
        if error is None:
            built.append(program)
            handle.loaded_programs.add(program.key)
            continue
        _fail(report, f"{error.kind.value}: {error.message}")
        if error.kind in _DEATHS:
            report.died = True
            break
        if error.kind in _BUILD_FAULTS:
            pending.fault(f"its build failed: {error.kind.value}: {error.message[:300]}")
    return built


async def _call_all(handle, built: list[WarmupProgram], deadline: float, max_concurrent: int, report: WarmupReport,
                    on_fault: OnFault | None) -> None:
    """A program's calls together (at most max_concurrent at once), programs one after another, so a death names one."""
    batch = max(1, max_concurrent)
    for index, program in enumerate(built):
        requests = [_call_request(program.key, inputs) for inputs in program.calls]
        answered = True
        for start in range(0, len(requests), batch):
            if report.timed_out:
                left = len(requests) - start + sum(len(p.calls) for p in built[index + 1:])
                _fail(report, f"{left} warm-up calls not started: timed out")
                return
            sent = [_send(handle, request, deadline, program.key, _CALLING, on_fault) for request in requests[start:start + batch]]
            await _settle(handle, sent, deadline)
            for pending in sent:
                answered = _count_call(pending, report) and answered
            if report.died:
                return
        if answered:
            report.clean.append(program.key)


def _count_call(pending: _Pending, report: WarmupReport) -> bool:
    """Account for one settled warm-up call; False when it did not finish within the warm-up timeout."""
    error = pending.error
    if not pending.future.done() or (error is not None and error.kind is errors.ErrorKind.DEADLINE_EXCEEDED):
        # Ours or the worker's own timeout (it runs the call with the time left): whichever fired first.
        report.timed_out = True
        _fail(report, "timed out")
        return False
    if error is None:
        report.calls += 1
        return True
    _fail(report, f"{error.kind.value}: {error.message}")
    report.died = report.died or error.kind in _DEATHS
    return True


def _call_request(key: str, inputs: struct_pb2.Struct) -> wire.WorkRequest:
    request = wire.WorkRequest(program_key=key, request_id="warm-up")
    request.inputs.CopyFrom(inputs)
    return request


def _send(handle, request: wire.WorkRequest, deadline: float, key: str, doing: str, on_fault: OnFault | None) -> _Pending:
    pending = _Pending(key, doing, on_fault)
    request.timeout_s = max(0.001, deadline - asyncio.get_running_loop().time())
    pending.request_id = handle.send_request(pending, request)
    return pending


async def _settle(handle, sent: list[_Pending], deadline: float) -> None:
    """Wait for `sent` until the deadline; ask the worker to cancel what is still running."""
    if not sent:
        return
    remaining = deadline - asyncio.get_running_loop().time()
    await asyncio.wait([p.future for p in sent], timeout=max(0.0, remaining))
    for pending in sent:
        if not pending.future.done():
            handle.cancel(pending.request_id)


def _fail(report: WarmupReport, message: str) -> None:
    report.failures += 1
    if len(report.errors) < _MAX_REPORTED_ERRORS:
        report.errors.append(message[:300])
