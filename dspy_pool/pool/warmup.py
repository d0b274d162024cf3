"""Warm-up before a worker takes traffic: build the registered programs, then run their warm-up calls.

    spawn: HELLO ──> state WARMING ──> build every program (validate_only, spec sent once)
                                  ──> run each program's warmup_inputs (real calls: caches, connections)
                     state READY <── add to the dispatcher (takes traffic)

A worker that joins a running pool (scale-up, crash replacement, recycle)
would otherwise build each program on the first call that reaches it, and a
program with declared warm-up inputs would pay its cold caches on a user's
call. Warm-up is bounded by `timeout_s` and never keeps capacity out: a
failed or slow warm-up is logged and the worker takes traffic anyway (its
calls then pay what the warm-up did not). A warm-up call that kills the
worker is a crash like any other.

Modes: "off" (traffic right after HELLO), "build" (programs only, no LM
call), "calls" (build, then the warm-up calls the specs declare; the default,
which costs nothing for specs that declare none).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from google.protobuf import struct_pb2

from dspy_pool import errors
from dspy_pool.internal import worker_pb2 as wire

__all__ = ["WARMUP_MODES", "WarmupProgram", "WarmupReport", "WarmupSettings", "warm_worker"]

WARMUP_MODES = ("off", "build", "calls")


@dataclass(frozen=True, slots=True)
class WarmupProgram:
    """One registered program as warm-up sees it."""

    key: str  # "name@version", the worker's cache key
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
    duration_ms: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first few, for the log


class _Pending:
    """A warm-up request in flight on one worker; the handle completes it like a dispatched call."""

    __slots__ = ("future", "request_id")

    def __init__(self) -> None:
        self.future: asyncio.Future[tuple[wire.WorkReply | None, errors.PoolError | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self.request_id = 0

    def complete(self, handle, reply: wire.WorkReply | None, error: errors.PoolError | None) -> None:
        if not self.future.done():
            self.future.set_result((reply, error))


_MAX_REPORTED_ERRORS = 3


async def warm_worker(handle, programs: list[WarmupProgram], settings: WarmupSettings, max_concurrent: int) -> WarmupReport:
    """Build `programs` on the worker behind `handle`, then run their warm-up calls; never raises.

    At most `max_concurrent` warm-up calls run at once (the worker's
    concurrency), as the dispatcher would allow; builds are local and quick.
    """
    report = WarmupReport()
    started = time.monotonic()
    deadline = asyncio.get_running_loop().time() + settings.timeout_s
    programs = programs[: settings.max_programs]
    builds = [_send(handle, wire.WorkRequest(program_key=p.key, spec=p.spec, validate_only=True), deadline) for p in programs]
    built = await _settle(handle, builds, deadline, report)
    for program, ok in zip(programs, built):
        if ok:
            handle.loaded_programs.add(program.key)
    report.programs = sum(built)
    if settings.mode == "calls":
        calls = [_call_request(program.key, inputs) for program, ok in zip(programs, built) if ok for inputs in program.calls]
        batch = max(1, max_concurrent)
        for start in range(0, len(calls), batch):
            if report.timed_out:
                _fail(report, f"{len(calls) - start} warm-up calls not started: timed out")
                break
            sent = [_send(handle, request, deadline) for request in calls[start:start + batch]]
            report.calls += sum(await _settle(handle, sent, deadline, report))
    report.duration_ms = (time.monotonic() - started) * 1000.0
    return report


def _call_request(key: str, inputs: struct_pb2.Struct) -> wire.WorkRequest:
    request = wire.WorkRequest(program_key=key, request_id="warm-up")
    request.inputs.CopyFrom(inputs)
    return request


def _send(handle, request: wire.WorkRequest, deadline: float) -> _Pending:
    pending = _Pending()
    request.timeout_s = max(0.001, deadline - asyncio.get_running_loop().time())
    pending.request_id = handle.send_request(pending, request)
    return pending


async def _settle(handle, sent: list[_Pending], deadline: float, report: WarmupReport) -> list[bool]:
    """Wait for `sent` until the deadline; cancel what is left. One bool per request: did it succeed."""
    if not sent:
        return []
    remaining = deadline - asyncio.get_running_loop().time()
    await asyncio.wait([p.future for p in sent], timeout=max(0.0, remaining))
    results = []
    for pending in sent:
        if not pending.future.done():
            report.timed_out = True
            handle.cancel(pending.request_id)
            _fail(report, "timed out")
            results.append(False)
            continue
        _, error = pending.future.result()
        if error is not None:
            _fail(report, f"{error.kind.value}: {error.message}")
        results.append(error is None)
    return results


def _fail(report: WarmupReport, message: str) -> None:
    report.failures += 1
    if len(report.errors) < _MAX_REPORTED_ERRORS:
        report.errors.append(message[:300])
