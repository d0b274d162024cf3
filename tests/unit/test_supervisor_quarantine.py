"""The quarantine policy (dspy_pool/pool/quarantine.py): faults in a row per program, reset by a clean warm-up."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from dspy_pool import errors
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.dispatcher import Dispatcher, Job
from dspy_pool.pool.quarantine import QuarantineState, record_fault, record_success, refusal


def test_a_program_is_quarantined_at_the_threshold_with_the_last_reason():
    """Two faults are strikes; the third in a row quarantines the program and says why."""
    state = QuarantineState()
    for why in ("the worker died while building it", "the worker died while building it"):
        state = record_fault(state, "bad#1", why, threshold=3)
        assert "bad#1" not in state.quarantined
    state = record_fault(state, "bad#1", "the worker hung while building it", threshold=3)
    assert state.quarantined == {"bad#1": "3 warm-ups in a row failed; last: the worker hung while building it"}
    assert "bad#1" not in state.strikes


def test_a_clean_warm_up_forgives_earlier_faults():
    """A success in between resets the count: faults must come in a row."""
    state = QuarantineState()
    state = record_fault(state, "p#1", "died", 3)
    state = record_fault(state, "p#1", "died", 3)
    state = record_success(state, "p#1")
    state = record_fault(state, "p#1", "died", 3)
    state = record_fault(state, "p#1", "died", 3)
    assert state.quarantined == {} and state.strikes == {"p#1": 2}


def test_faults_count_per_program():
    """One program's faults never count against another."""
    state = QuarantineState()
    for _ in range(2):
        state = record_fault(state, "a#1", "died", 3)
        state = record_fault(state, "b#1", "died", 3)
    state = record_fault(state, "a#1", "died", 3)
    assert list(state.quarantined) == ["a#1"] and state.strikes == {"b#1": 2}


def test_quarantine_is_sticky_and_states_are_values():
    """Success does not lift a quarantine (a fixed version has a new key); old states are never changed."""
    first = QuarantineState()
    quarantined = record_fault(first, "x#1", "died", 1)
    assert record_success(quarantined, "x#1") is quarantined
    assert record_fault(quarantined, "x#1", "again", 1) is quarantined
    assert first.quarantined == {} and first.strikes == {}


def test_the_refusal_is_failed_precondition_and_says_how_to_clear_it():
    """Calls to a quarantined program fail FAILED_PRECONDITION, naming why and the fix."""
    error = refusal("bad#1", "3 warm-ups in a row failed; last: the worker died while building it")
    assert error.kind is errors.ErrorKind.PROGRAM_QUARANTINED
    assert error.status_code == grpc.StatusCode.FAILED_PRECONDITION
    assert "quarantined" in error.message and "died while building" in error.message and "register" in error.message


@pytest.mark.asyncio
async def test_quarantining_fails_that_programs_queued_calls_and_refuses_new_ones():
    """fail_queued(program_key=...) ends only that program's queued calls; refuse() turns its new calls away at once."""
    dispatcher = Dispatcher(max_queue=10, worker_concurrency=1)  # no worker: every call queues
    deadline = asyncio.get_running_loop().time() + 30

    def job(key: str) -> Job:
        return Job(key, b"", wire.WorkRequest(program_key=key), deadline)

    calls = {key: [asyncio.ensure_future(dispatcher.run(job(key))) for _ in range(2)] for key in ("bad#1", "good#1")}
    await asyncio.sleep(0)
    assert dispatcher.queue_depth == 4
    error = refusal("bad#1", "3 warm-ups in a row failed")
    assert dispatcher.fail_queued(error, program_key="bad#1") == 2
    dispatcher.refuse = lambda key: error if key == "bad#1" else None
    for call in calls["bad#1"]:
        with pytest.raises(errors.PoolError) as caught:
            await call
        assert caught.value.kind is errors.ErrorKind.PROGRAM_QUARANTINED
    with pytest.raises(errors.PoolError):
        await dispatcher.run(job("bad#1"))
    assert dispatcher.queue_depth == 2 and not any(call.done() for call in calls["good#1"])
    dispatcher.fail_queued(errors.Unavailable("test over"))
    await asyncio.gather(*calls["good#1"], return_exceptions=True)
