"""warm_worker against a fake handle: builds one at a time, calls a program at a time in batches, failures, faults and the timeout."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import struct_pb2

from dspy_pool import errors
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.warmup import WarmupProgram, WarmupSettings, warm_worker

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(10)]


class FakeHandle:
    """Answers each request on the next loop turn; programs in `failing` error, in `hanging` never answer,
    in `killing` die as the real handle reports it (every call in flight fails WORKER_CRASHED)."""

    def __init__(self, failing: set[str] = frozenset(), hanging: set[str] = frozenset(), killing: set[str] = frozenset(),
                 calls_only: bool = False, timing_out: set[str] = frozenset()) -> None:
        self.failing, self.hanging, self.killing, self.timing_out = failing, hanging, killing, timing_out
        self.calls_only = calls_only  # the programs above misbehave on calls only; their builds succeed
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
        misbehaves = not (self.calls_only and request.validate_only)
        if not (misbehaves and request.program_key in self.hanging):
            asyncio.get_running_loop().call_soon(self._answer, request_id, request.program_key, misbehaves)
        return request_id

    def _answer(self, request_id: int, key: str, misbehaves: bool) -> None:
        if request_id not in self.in_flight:
            return  # died meanwhile
        if misbehaves and key in self.killing:
            self.die(errors.ErrorKind.WORKER_CRASHED)
            return
        call = self.in_flight.pop(request_id)
        if misbehaves and key in self.failing:
            call.complete(self, None, errors.PoolError("boom", kind=errors.ErrorKind.PROGRAM_ERROR))
        elif misbehaves and key in self.timing_out:  # the worker's own timeout (builds run on a thread)
            call.complete(self, None, errors.PoolError("deadline passed", kind=errors.ErrorKind.DEADLINE_EXCEEDED))
        else:
            call.complete(self, wire.WorkReply(), None)

    def die(self, kind: errors.ErrorKind) -> None:
        calls, self.in_flight = list(self.in_flight.values()), {}
        for call in calls:
            call.complete(self, None, errors.PoolError("worker died", kind=kind))

    def cancel(self, request_id: int) -> None:
        self.cancelled.append(request_id)


def program(key: str, calls: int = 0) -> WarmupProgram:
    inputs = []
    for number in range(calls):
        struct = struct_pb2.Struct()
        struct.update({"question": f"warm {number}"})
        inputs.append(struct)
    return WarmupProgram(key, b"spec-of-" + key.encode(), tuple(inputs))


def faults_into(found: list[tuple[str, str]]):
    return lambda key, why: found.append((key, why))


async def test_builds_one_at_a_time_then_runs_calls_a_program_at_a_time():
    """Specs go out with validate_only, one at a time; calls follow program by program, never more in flight than the concurrency."""
    handle = FakeHandle()
    programs = [program("a@1", calls=3), program("b@1", calls=4), program("c@1")]
    report = await warm_worker(handle, programs, WarmupSettings(), max_concurrent=2)
    builds, calls = handle.sent[:3], handle.sent[3:]
    assert [(r.program_key, r.spec, r.validate_only) for r in builds] == [(p.key, p.spec, True) for p in programs]
    assert [r.program_key for r in calls] == ["a@1"] * 3 + ["b@1"] * 4
    assert all(not r.spec and not r.validate_only and r.inputs["question"].startswith("warm") for r in calls)
    assert handle.most_in_flight == 2  # builds one by one; calls two at a time
    assert handle.loaded_programs == {"a@1", "b@1", "c@1"}
    assert (report.programs, report.calls, report.failures, report.timed_out) == (3, 7, 0, False)
    assert sorted(report.clean) == ["a@1", "b@1", "c@1"]


async def test_a_program_that_fails_to_build_is_a_fault_and_is_neither_called_nor_marked_loaded():
    """A failed build counts as a failure and a fault of that program; the dispatcher will send that spec again on a real call."""
    handle, faults = FakeHandle(failing={"bad@1"}), []
    report = await warm_worker(handle, [program("bad@1", calls=2), program("ok@1", calls=1)], WarmupSettings(), 8, faults_into(faults))
    assert handle.loaded_programs == {"ok@1"}
    assert [r.program_key for r in handle.sent if not r.validate_only] == ["ok@1"]
    assert (report.programs, report.calls, report.failures) == (1, 1, 1)
    assert report.errors == ["program_error: boom"]
    assert faults == [("bad@1", "its build failed: program_error: boom")] and report.clean == ["ok@1"]


async def test_build_mode_runs_no_call():
    """mode="build" loads the programs and stops there."""
    handle = FakeHandle()
    report = await warm_worker(handle, [program("a@1", calls=2)], WarmupSettings(mode="build"), 8)
    assert all(r.validate_only for r in handle.sent) and report.calls == 0 and handle.loaded_programs == {"a@1"}
    assert report.clean == ["a@1"]


async def test_a_build_that_never_answers_is_a_hang_of_that_program_and_ends_warm_up():
    """At the timeout the hung build is cancelled, reported as the program's fault and `hung`; nothing more is sent."""
    handle, faults = FakeHandle(hanging={"slow@1"}), []
    programs = [program("slow@1"), program("fast@1", calls=3)]
    report = await warm_worker(handle, programs, WarmupSettings(timeout_s=0.05), max_concurrent=1, on_fault=faults_into(faults))
    assert report.timed_out and report.hung and handle.cancelled == [1]
    assert [(r.program_key, r.validate_only) for r in handle.sent] == [("slow@1", True)]
    assert report.errors == ["building slow@1 timed out"] and report.clean == []
    assert faults == [("slow@1", "the worker hung while building it (no answer within the warm-up timeout)")]
    assert handle.loaded_programs == set()


async def test_a_build_the_worker_itself_timed_out_is_a_hang_too():
    """A build answered with DEADLINE_EXCEEDED is still stuck on the worker's build thread: a hang of that program."""
    handle, faults = FakeHandle(timing_out={"stuck@1"}), []
    report = await warm_worker(handle, [program("stuck@1"), program("ok@1")], WarmupSettings(), 8, faults_into(faults))
    assert report.hung and [r.program_key for r in handle.sent] == ["stuck@1"]
    assert [key for key, _ in faults] == ["stuck@1"]


async def test_a_worker_that_dies_building_a_program_names_that_program_and_ends_warm_up():
    """The build in flight when the worker dies is the fault; the programs after it are not sent."""
    handle, faults = FakeHandle(killing={"killer@1"}), []
    programs = [program("ok@1"), program("killer@1"), program("later@1")]
    report = await warm_worker(handle, programs, WarmupSettings(), 8, faults_into(faults))
    assert report.died and not report.hung
    assert [r.program_key for r in handle.sent] == ["ok@1", "killer@1"]
    assert faults == [("killer@1", "the worker died while building it")]
    assert report.clean == []  # ok@1 built, but its warm-up (calls mode) never finished


async def test_a_worker_that_dies_in_warm_up_calls_names_only_the_program_whose_calls_ran():
    """Calls go a program at a time: a death during b's calls is b's fault alone; a, done before, is clean."""
    handle, faults = FakeHandle(killing={"b@1"}, calls_only=True), []
    programs = [program("a@1", calls=2), program("b@1", calls=2), program("c@1", calls=2)]
    report = await warm_worker(handle, programs, WarmupSettings(), 8, faults_into(faults))
    assert report.died and report.programs == 3
    assert [r.program_key for r in handle.sent if not r.validate_only] == ["a@1", "a@1", "b@1", "b@1"]
    assert faults == [("b@1", "the worker died while running its warm-up calls")]
    assert report.clean == ["a@1"]


async def test_a_warm_up_call_cut_by_the_timeout_is_no_fault_unless_its_worker_is_then_killed():
    """A slow call is cancelled and reported, not a fault; a kill that follows (the cancel never answered) is, once."""
    handle, faults = FakeHandle(hanging={"slow@1"}, calls_only=True), []
    report = await warm_worker(handle, [program("slow@1", calls=2)], WarmupSettings(timeout_s=0.05), 8, faults_into(faults))
    assert report.timed_out and not report.hung and not report.died
    assert faults == [] and report.clean == [] and report.programs == 1
    handle.die(errors.ErrorKind.WORKER_HUNG)  # what the real handle does when the cancel times out
    handle.die(errors.ErrorKind.WORKER_HUNG)
    assert faults == [("slow@1", "the worker hung while running its warm-up calls")]


async def test_calls_the_timeout_left_unsent_are_counted():
    """Once the timeout has passed, the calls not yet sent (this program's and later ones') are reported, not sent."""
    handle = FakeHandle(hanging={"slow@1"}, calls_only=True)
    programs = [program("slow@1", calls=2), program("next@1", calls=3)]
    report = await warm_worker(handle, programs, WarmupSettings(timeout_s=0.05), max_concurrent=1)
    assert [r.program_key for r in handle.sent if not r.validate_only] == ["slow@1"]
    assert report.errors == ["timed out", "4 warm-up calls not started: timed out"]
