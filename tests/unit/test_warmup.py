"""warm_worker against a fake handle: builds first, calls in batches, failures and the timeout bounded."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import struct_pb2

from dspy_pool import errors
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.warmup import WarmupProgram, WarmupSettings, warm_worker

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(10)]


class FakeHandle:
    """Answers each request on the next loop turn; programs in `failing` error, in `hanging` never answer."""

    def __init__(self, failing: set[str] = frozenset(), hanging: set[str] = frozenset()) -> None:
        self.failing, self.hanging = failing, hanging
        self.loaded_programs: set[str] = set()
        self.in_flight: dict[int, object] = {}
        self.sent: list[wire.WorkRequest] = []
        self.cancelled: list[int] = []
        self.most_in_flight = 0

    def send_request(self, call, request: wire.WorkRequest) -> int:
        request_id = len(self.sent) + 1
        self.sent.append(request)
        self.in_flight[request_id] = call
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        if request.program_key not in self.hanging:
            asyncio.get_running_loop().call_soon(self._answer, request_id, request.program_key)
        return request_id

    def _answer(self, request_id: int, key: str) -> None:
        call = self.in_flight.pop(request_id)
        if key in self.failing:
            call.complete(self, None, errors.PoolError("boom", kind=errors.ErrorKind.PROGRAM_ERROR))
        else:
            call.complete(self, wire.WorkReply(), None)

    def cancel(self, request_id: int) -> None:
        self.cancelled.append(request_id)


def program(key: str, calls: int = 0) -> WarmupProgram:
    inputs = []
    for number in range(calls):
        struct = struct_pb2.Struct()
        struct.update({"question": f"warm {number}"})
        inputs.append(struct)
    return WarmupProgram(key, b"spec-of-" + key.encode(), tuple(inputs))


async def test_builds_every_program_then_runs_calls_a_batch_at_a_time():
    """Specs go out with validate_only first; calls follow, never more in flight than the worker's concurrency."""
    handle = FakeHandle()
    programs = [program("a@1", calls=3), program("b@1", calls=4), program("c@1")]
    report = await warm_worker(handle, programs, WarmupSettings(), max_concurrent=2)
    builds, calls = handle.sent[:3], handle.sent[3:]
    assert [(r.program_key, r.spec, r.validate_only) for r in builds] == [(p.key, p.spec, True) for p in programs]
    assert [r.program_key for r in calls] == ["a@1"] * 3 + ["b@1"] * 4
    assert all(not r.spec and not r.validate_only and r.inputs["question"].startswith("warm") for r in calls)
    assert handle.most_in_flight == 3  # the three builds; calls went two at a time
    assert handle.loaded_programs == {"a@1", "b@1", "c@1"}
    assert (report.programs, report.calls, report.failures, report.timed_out) == (3, 7, 0, False)


async def test_a_program_that_fails_to_build_is_not_called_nor_marked_loaded():
    """A failed build counts as a failure; the dispatcher will send that spec again on a real call."""
    handle = FakeHandle(failing={"bad@1"})
    report = await warm_worker(handle, [program("bad@1", calls=2), program("ok@1", calls=1)], WarmupSettings(), 8)
    assert handle.loaded_programs == {"ok@1"}
    assert [r.program_key for r in handle.sent if not r.validate_only] == ["ok@1"]
    assert (report.programs, report.calls, report.failures) == (1, 1, 1)
    assert report.errors == ["program_error: boom"]


async def test_build_mode_runs_no_call():
    """mode="build" loads the programs and stops there."""
    handle = FakeHandle()
    report = await warm_worker(handle, [program("a@1", calls=2)], WarmupSettings(mode="build"), 8)
    assert all(r.validate_only for r in handle.sent) and report.calls == 0 and handle.loaded_programs == {"a@1"}


async def test_the_timeout_cancels_what_hangs_and_starts_nothing_more():
    """A call that never answers is cancelled at the timeout; later batches are reported, not sent."""
    handle = FakeHandle(hanging={"slow@1"})
    programs = [program("slow@1"), program("fast@1", calls=3)]
    # The slow program's build hangs: nothing else is called once the timeout has passed.
    report = await warm_worker(handle, programs, WarmupSettings(timeout_s=0.05), max_concurrent=1)
    assert report.timed_out and handle.cancelled == [1]
    assert [r.validate_only for r in handle.sent] == [True, True]
    assert report.failures == 2 and report.errors == ["timed out", "3 warm-up calls not started: timed out"]
    assert handle.loaded_programs == {"fast@1"}
